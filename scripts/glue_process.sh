#!/usr/bin/env bash
# Usage: bash scripts/glue_process.sh [TASK|all] [extra flags for `python -m distil glue-process`]
# Converts GLUE TSV files to OFRecords: $DATA_ROOT/<TASK>/{train,eval,test}/ for BERT (WordPiece,
# MAX_SEQ_LENGTH tokens) and $DATA_ROOT/<TASK>_lstm_32/ for Distilled-BiLSTM (words, 32 tokens,
# with the teacher's view in the same record). Re-running replaces the output; it never appends.
# Variables (defaults in brackets):
#   GLUE_DIR        [data/glue_data]     GLUE TSV root (from run_download_glue_data.sh)
#   DATA_ROOT       [data/glue_ofrecord] OFRecord root read by every training script
#   VOCAB_FILE      [the bert-base-uncased vocab shipped in src/distil/data/vocab/]
#   MAX_SEQ_LENGTH  [128]    DO_LOWER_CASE [True]    LSTM_SEQ_LENGTH [32] (0: skip the LSTM data)
# Example: MAX_SEQ_LENGTH=64 bash scripts/glue_process.sh MRPC
set -euo pipefail
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
TASK=${1:-SST-2}
[ $# -gt 0 ] && shift
GLUE_DIR=${GLUE_DIR:-$DISTIL_ROOT/data/glue_data}
DATA_ROOT=${DATA_ROOT:-$DISTIL_ROOT/data/glue_ofrecord}
VOCAB_FILE=${VOCAB_FILE:-$DISTIL_ROOT/src/distil/data/vocab/bert-base-uncased.txt}
MAX_SEQ_LENGTH=${MAX_SEQ_LENGTH:-128}
DO_LOWER_CASE=${DO_LOWER_CASE:-True}
LSTM_SEQ_LENGTH=${LSTM_SEQ_LENGTH:-32}
exec python -m distil glue-process "$TASK" --glue_dir "$GLUE_DIR" --output_dir "$DATA_ROOT" \
  --vocab_file "$VOCAB_FILE" --max_seq_length "$MAX_SEQ_LENGTH" --do_lower_case "$DO_LOWER_CASE" \
  --lstm_seq_length "$LSTM_SEQ_LENGTH" "$@"
