#!/usr/bin/env bash
# Usage: bash scripts/run_eval_teacher.sh {GPU} {TASK} {MODEL_ID} [extra flags for `python -m distil eval`]
# Evaluates the teacher models/finetuned_teacher/{MODEL_ID} on the task's dev split(s).
# Writes results_eval.json into the model dir (or RESULT_DIR). Variables: DATA_ROOT [data/glue_ofrecord],
# MODELS_ROOT [models], MODEL_DIR or TEACHER_MODEL_DIR / STUDENT_DIR [] (evaluate that dir instead),
# RESULT_DIR [], EVAL_BATCH_SIZE [32], LENGTH_BUCKETS [auto: batches cut to their lengths; off].
# The GPU is used when one is visible, the CPU otherwise.
set -euo pipefail
MODEL_FOLDER=finetuned_teacher
source "$(dirname "${BASH_SOURCE[0]}")/lib/eval.sh"
