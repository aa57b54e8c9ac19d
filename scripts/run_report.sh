#!/usr/bin/env bash
# Usage: bash scripts/run_report.sh [DIR...] [flags for `python -m distil report`]
# Compares every trained model under DIR (default: models/) with its teacher: size, compression, inference
# throughput and speed-up measured now on the dev split, task metric and share of the teacher's metric kept.
# Writes DIR/report.md, .json and .png. Variables: DATA_ROOT [data/glue_ofrecord].
set -euo pipefail
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
[ $# -eq 0 ] && set -- "$DISTIL_ROOT/models"
exec python -m distil report "$@" --data_root "${DATA_ROOT:-$DISTIL_ROOT/data/glue_ofrecord}"
