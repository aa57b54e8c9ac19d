#!/usr/bin/env bash
# Usage: bash scripts/run_train_teacher.sh [TASK] [extra flags for `python -m distil train`]
# Fine-tunes the BERT teacher on a GLUE task (original: run_train_teacher.sh -> task_teacher.py).
# Saves models/finetuned_teacher/<TASK>_epoch-E_lr-LR_wd-WD (or MODEL_SAVE_DIR) and prints the eval command.
# Variables (empty = the original's per-task table; see README):
#   PRETRAINED_MODEL [models/uncased_L-12_H-768_A-12_oneflow]  a model dir or a Hugging Face BERT folder
#   DATA_ROOT [data/glue_ofrecord]   MODELS_ROOT [models]   MODEL_SAVE_DIR []   RESULT_DIR [] (= the model dir)   SERVE_FOR_ONLINE [False]
#   EPOCH  LEARNING_RATE  WEIGHT_DECAY  BATCH_SIZE [32]  EVAL_BATCH_SIZE [32]  GPU [0; CPU when none is visible]
# Example: EPOCH=1 BATCH_SIZE=16 bash scripts/run_train_teacher.sh MRPC --max_steps 50
set -euo pipefail
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
TASK=${1:-SST-2}
[ $# -gt 0 ] && shift
export CUDA_VISIBLE_DEVICES=${GPU:-${CUDA_VISIBLE_DEVICES:-0}}
PRETRAINED_MODEL=${PRETRAINED_MODEL:-$DISTIL_ROOT/models/uncased_L-12_H-768_A-12_oneflow}
ARGS=(--algorithm teacher --task "$TASK" --pretrained_model "$PRETRAINED_MODEL"
      --data_root "${DATA_ROOT:-$DISTIL_ROOT/data/glue_ofrecord}" --models_root "${MODELS_ROOT:-$DISTIL_ROOT/models}"
      --result_dir "${RESULT_DIR:-}" --serve_for_online "${SERVE_FOR_ONLINE:-False}"
      --batch_size "${BATCH_SIZE:-32}" --eval_batch_size "${EVAL_BATCH_SIZE:-32}")
[ -n "${MODEL_SAVE_DIR:-}" ] && ARGS+=(--model_save_dir "$MODEL_SAVE_DIR")
[ -n "${EPOCH:-}" ] && ARGS+=(--epochs "$EPOCH")
[ -n "${LEARNING_RATE:-}" ] && ARGS+=(--learning_rate "$LEARNING_RATE")
[ -n "${WEIGHT_DECAY:-}" ] && ARGS+=(--weight_decay "$WEIGHT_DECAY")
exec python -m distil train "${ARGS[@]}" "$@"
