#!/usr/bin/env bash
# Usage: bash scripts/run_train_theseus.sh [TASK] [extra flags for `python -m distil train`]
# BERT-of-Theseus: replace teacher blocks by 3 successor layers, then fine-tune them (run_train_theseus.sh).
# Saves models/student_model/<TASK>/<MODEL_ID> (or STUDENT_DIR) and prints the id and the eval command.
# Variables (empty = the original's per-task table / the algorithm's default; see README):
#   FT_BERT_BASE_DIR [models/finetuned_teacher/<the teacher id of the teacher table>]   DATA_ROOT [data/glue_ofrecord]
#   MODELS_ROOT [models]  STUDENT_DIR []  RESULT_DIR [] (= the model dir)  SERVE_FOR_ONLINE [False]  GPU [0]
#   EPOCH  LEARNING_RATE  WEIGHT_DECAY  BATCH_SIZE [32]  EVAL_BATCH_SIZE [32]  REPLACING_RATE [0.5]  REPLACE_SCHEDULER [constant|linear]
#   MAX_RESTARTS [3] (restarts after a crash)  CHECKPOINT_EVERY [0] (save train_state/ every N steps)  CHECKPOINT_MINUTES [10]
#   LENGTH_BUCKETS [auto: batches of similar length, cut to their bucket; off: every batch at max_seq_length]
#   TENSORBOARD_DIR [] (TensorBoard event files of every loss term, the LR and the dev metrics)
# Example: REPLACE_SCHEDULER=linear bash scripts/run_train_theseus.sh MRPC
set -euo pipefail
ALGORITHM=theseus
source "$(dirname "${BASH_SOURCE[0]}")/lib/train.sh"
