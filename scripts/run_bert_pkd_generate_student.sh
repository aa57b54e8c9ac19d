#!/usr/bin/env bash
# Usage: bash scripts/run_bert_pkd_generate_student.sh [TASK] [extra flags for `python -m distil pkd-student`]
# Builds a BERT-PKD student from teacher layers LAYER_LIST (0-based; the original's 2,6,10 -> student
# layers 0,1,2) plus the teacher's embeddings, pooler and classifier; train it with
# TMP_STUDENT_DIR=<that dir> bash scripts/run_train_student_bert_pkd.sh TASK.
# Variables: FT_BERT_BASE_DIR [models/finetuned_teacher/<the teacher id of the teacher table>],
#   TMP_STUDENT_DIR [models/student_model/bert_pkd_3/<TASK>], LAYER_LIST [2,6,10], MODELS_ROOT [models].
set -euo pipefail
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
TASK=${1:-SST-2}
[ $# -gt 0 ] && shift
MODELS=${MODELS_ROOT:-$DISTIL_ROOT/models}
ARGS=(--task "$TASK" --models_root "$MODELS" --layer_list "${LAYER_LIST:-2,6,10}"
      --student_model "${TMP_STUDENT_DIR:-$MODELS/student_model/bert_pkd_3/$TASK}")
[ -n "${FT_BERT_BASE_DIR:-}" ] && ARGS+=(--teacher_model "$FT_BERT_BASE_DIR")
exec python -m distil pkd-student "${ARGS[@]}" "$@"
