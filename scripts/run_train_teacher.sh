#!/usr/bin/env bash
# Usage: bash scripts/run_train_teacher.sh [TASK] [extra flags for `python -m distil train`]
# Fine-tunes the BERT teacher on a GLUE task (original: run_train_teacher.sh -> task_teacher.py).
# Saves models/finetuned_teacher/<TASK>_epoch-E_lr-LR_wd-WD (or MODEL_SAVE_DIR) and prints the eval command.
# Variables (empty = the original's per-task table; see README):
#   PRETRAINED_MODEL [models/uncased_L-12_H-768_A-12_oneflow]  a model dir or a Hugging Face BERT folder
#   DATA_ROOT [data/glue_ofrecord]   MODELS_ROOT [models]   MODEL_SAVE_DIR []   RESULT_DIR [] (= the model dir)
#   SERVE_FOR_ONLINE [False]  EPOCH  LEARNING_RATE  WEIGHT_DECAY  BATCH_SIZE [32]  EVAL_BATCH_SIZE [32]  GPU [0]
#   MAX_RESTARTS [3] (restarts after a crash)  CHECKPOINT_EVERY [0] (save train_state/ every N steps)  CHECKPOINT_MINUTES [10]
#   LENGTH_BUCKETS [auto: batches of similar length, cut to their bucket; off: every batch at max_seq_length]
#   TENSORBOARD_DIR [] (TensorBoard event files of every loss term, the LR and the dev metrics)
# Example: EPOCH=1 BATCH_SIZE=16 bash scripts/run_train_teacher.sh MRPC --max_steps 50
set -euo pipefail
ALGORITHM=teacher
PRETRAINED_MODEL=${PRETRAINED_MODEL:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/models/uncased_L-12_H-768_A-12_oneflow}
source "$(dirname "${BASH_SOURCE[0]}")/lib/train.sh"
