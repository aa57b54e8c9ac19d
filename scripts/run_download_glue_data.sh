#!/usr/bin/env bash
# Usage: bash scripts/run_download_glue_data.sh [extra flags for `python -m distil download-glue`]
# Downloads GLUE into $DATA_DIR/<TASK>/ (original: download_glue_data.py --data_dir data/glue_data --tasks all).
# Variables (defaults in brackets):
#   DATA_DIR      [data/glue_data]  where task folders go
#   TASKS         [all]             comma list of CoLA,SST,MRPC,QQP,STS,MNLI,SNLI,QNLI,RTE,WNLI,diagnostic
#   PATH_TO_MRPC  []                folder with msr_paraphrase_{train,test}.txt (else downloaded)
#   GLUE_MIRROR   []                base URL serving the same file names (replaces every URL)
# Example: TASKS=SST,MRPC bash scripts/run_download_glue_data.sh --force
set -euo pipefail
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
DATA_DIR=${DATA_DIR:-$DISTIL_ROOT/data/glue_data}
TASKS=${TASKS:-all}
ARGS=(--data_dir "$DATA_DIR" --tasks "$TASKS")
[ -n "${PATH_TO_MRPC:-}" ] && ARGS+=(--path_to_mrpc "$PATH_TO_MRPC")
[ -n "${GLUE_MIRROR:-}" ] && ARGS+=(--mirror "$GLUE_MIRROR")
exec python -m distil download-glue "${ARGS[@]}" "$@"
