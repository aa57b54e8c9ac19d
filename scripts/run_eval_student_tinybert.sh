#!/usr/bin/env bash
# Usage: bash scripts/run_eval_student_tinybert.sh {GPU} {TASK} {MODEL_ID} [extra flags for `python -m distil eval`]
# Evaluates the TinyBERT student models/student_model/{TASK}/{MODEL_ID}.
# Writes results_eval.json into the model dir (or RESULT_DIR). Variables: DATA_ROOT [data/glue_ofrecord],
# MODELS_ROOT [models], MODEL_DIR or TEACHER_MODEL_DIR / STUDENT_DIR [] (evaluate that dir instead),
# RESULT_DIR [], EVAL_BATCH_SIZE [32], LENGTH_BUCKETS [auto: batches cut to their lengths; off].
# The GPU is used when one is visible, the CPU otherwise.
set -euo pipefail
MODEL_FOLDER=student_model
source "$(dirname "${BASH_SOURCE[0]}")/lib/eval.sh"
