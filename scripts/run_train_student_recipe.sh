#!/usr/bin/env bash
# Usage: bash scripts/run_train_student_recipe.sh [TASK] [extra flags for `python -m distil train`], with RECIPE=FILE.toml
# A distillation declared in a TOML recipe file (student, teachers, stages, loss terms with weights and temperatures
# that are numbers or schedules): see recipes/ and README "Recipes". The shipped recipes kd.toml, bert_pkd.toml,
# tinybert.toml and tinybert_two_stage.toml train what the built-in algorithms train.
# Saves models/student_model/<TASK>/<MODEL_ID> (or STUDENT_DIR) and prints the id and the eval command.
# Variables (empty = the defaults; see README):
#   RECIPE (required)  FT_BERT_BASE_DIR [models/finetuned_teacher/<the teacher id>] (a comma list: several teachers,
#   their logits averaged)  DATA_ROOT [data/glue_ofrecord]  MODELS_ROOT [models]  STUDENT_DIR []  RESULT_DIR []
#   SERVE_FOR_ONLINE [False]  GPU [0]  EPOCH  LEARNING_RATE  WEIGHT_DECAY  BATCH_SIZE [32]  EVAL_BATCH_SIZE [32]
#   TMP_STUDENT_DIR [] (initial student)  TENSORBOARD_DIR [] (event files for `tensorboard --logdir`)
#   MAX_RESTARTS [3]  CHECKPOINT_EVERY [0]  CHECKPOINT_MINUTES [10]  LENGTH_BUCKETS [auto]
# Example: RECIPE=recipes/kd_schedules_zoo.toml TENSORBOARD_DIR=runs bash scripts/run_train_student_recipe.sh SST-2
set -euo pipefail
ALGORITHM=recipe
source "$(dirname "${BASH_SOURCE[0]}")/lib/train.sh"
