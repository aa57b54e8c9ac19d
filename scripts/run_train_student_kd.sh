#!/usr/bin/env bash
# Usage: bash scripts/run_train_student_kd.sh [TASK] [extra flags for `python -m distil train`]
# KD: a 4-layer/312 BERT learns soft labels (original: run_train_student_kd.sh -> task_student_kd.py).
# Saves models/student_model/<TASK>/<MODEL_ID> (or STUDENT_DIR) and prints the id and the eval command.
# Variables (empty = the original's per-task table / the algorithm's default; see README):
#   FT_BERT_BASE_DIR [models/finetuned_teacher/<the teacher id of the teacher table>; a comma list: several teachers,
#   their logits averaged]   DATA_ROOT [data/glue_ofrecord]
#   MODELS_ROOT [models]  STUDENT_DIR []  RESULT_DIR [] (= the model dir)  SERVE_FOR_ONLINE [False]  GPU [0]
#   EPOCH  LEARNING_RATE  WEIGHT_DECAY  BATCH_SIZE [32]  EVAL_BATCH_SIZE [32]  KD_ALPHA [0.8]  TEMPERATURE [1]  TMP_STUDENT_DIR []
#   MAX_RESTARTS [3] (restarts after a crash)  CHECKPOINT_EVERY [0] (save train_state/ every N steps)  CHECKPOINT_MINUTES [10]
#   LENGTH_BUCKETS [auto: batches of similar length, cut to their bucket; off: every batch at max_seq_length]
#   TENSORBOARD_DIR [] (TensorBoard event files of every loss term, the LR and the dev metrics)
# Example: EPOCH=1 KD_ALPHA=0.9 bash scripts/run_train_student_kd.sh RTE
set -euo pipefail
ALGORITHM=kd
source "$(dirname "${BASH_SOURCE[0]}")/lib/train.sh"
