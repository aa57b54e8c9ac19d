#!/usr/bin/env bash
# Usage: bash scripts/run_train_student_distilled_lstm.sh [TASK] [extra flags for `python -m distil train`]
# Distilled-BiLSTM: a BiLSTM on <TASK>_lstm_32 data learns from the BERT teacher (task_student_kd_lstm.py).
# Saves models/student_model/<TASK>/<MODEL_ID> (or STUDENT_DIR) and prints the id and the eval command.
# Variables (empty = the original's per-task table / the algorithm's default; see README):
#   FT_BERT_BASE_DIR [models/finetuned_teacher/<the teacher id of the teacher table>]   DATA_ROOT [data/glue_ofrecord]
#   MODELS_ROOT [models]  STUDENT_DIR []  RESULT_DIR [] (= the model dir)  SERVE_FOR_ONLINE [False]  GPU [0]
#   EPOCH  LEARNING_RATE  WEIGHT_DECAY  BATCH_SIZE [32]  EVAL_BATCH_SIZE [32]  KD_ALPHA [0.7]  TEMPERATURE [1]
#   MAX_RESTARTS [3] (restarts after a crash)  CHECKPOINT_EVERY [0] (save train_state/ every N steps)  CHECKPOINT_MINUTES [10]
#   LENGTH_BUCKETS [auto: batches of similar length, cut to their bucket; off: every batch at max_seq_length]
#   TENSORBOARD_DIR [] (TensorBoard event files of every loss term, the LR and the dev metrics)
# Example: bash scripts/run_train_student_distilled_lstm.sh SST-2 --pred_distill_mode mse
set -euo pipefail
ALGORITHM=distilled_lstm
source "$(dirname "${BASH_SOURCE[0]}")/lib/train.sh"
