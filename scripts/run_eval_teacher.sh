#!/usr/bin/env bash
# Usage: bash scripts/run_eval_teacher.sh {GPU} {TASK} {MODEL_ID} [extra flags for `python -m distil eval`]
# Evaluates models/finetuned_teacher/{MODEL_ID} (or TEACHER_MODEL_DIR) on the task's dev split and writes
# results_eval.json into the model dir (or RESULT_DIR). Variables: DATA_ROOT [data/glue_ofrecord], MODELS_ROOT [models],
# TEACHER_MODEL_DIR [], RESULT_DIR [], EVAL_BATCH_SIZE [32]. GPU is used when visible, else the CPU.
# Example: bash scripts/run_eval_teacher.sh 0 SST-2 SST-2_epoch-3_lr-2e-5_wd-0.0001
set -euo pipefail
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
[ $# -ge 3 ] || { sed -n '2p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export CUDA_VISIBLE_DEVICES=$1
TASK=$2
MODEL_DIR=${TEACHER_MODEL_DIR:-${MODELS_ROOT:-$DISTIL_ROOT/models}/finetuned_teacher/$3}
shift 3
exec python -m distil eval "$MODEL_DIR" --task "$TASK" --data_root "${DATA_ROOT:-$DISTIL_ROOT/data/glue_ofrecord}" \
  --result_dir "${RESULT_DIR:-}" --eval_batch_size "${EVAL_BATCH_SIZE:-32}" "$@"
