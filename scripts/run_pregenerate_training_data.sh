#!/usr/bin/env bash
# Usage: bash scripts/run_pregenerate_training_data.sh [flags of `python -m distil pregenerate`, e.g. --overwrite]
# General distillation data (original: examples/tinybert/pregenerate_training_data.py): packs a raw text corpus
# into $OUTPUT_DIR/{train,dev}/ OFRecords (input_ids, input_mask, segment_ids; no labels) that the trainer reads.
# Sentences of one document fill [CLS] ... [SEP] sequences greedily, never across a document; dev holds the
# last ~1 % of the documents. An existing, non-empty OUTPUT_DIR is kept unless --overwrite is given.
# Variables (defaults in brackets):
#   CORPUS          (required) UTF-8 text, one sentence per line, a blank line between documents
#   VOCAB_FILE      [the bert-base-uncased vocab shipped in src/distil/data/vocab/] the teacher's vocab
#   OUTPUT_DIR      [data/pretrain_ofrecord]   MAX_SEQ_LENGTH [128]   DO_LOWER_CASE [True]   DEV_FRACTION [0.01]
# Example: CORPUS=data/corpus.txt MAX_SEQ_LENGTH=64 bash scripts/run_pregenerate_training_data.sh --overwrite
set -euo pipefail
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
if [ -z "${CORPUS:-}" ]; then
  echo "CORPUS is not set: the text file to pregenerate from (bash $0 -h for help)" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ARGS=(--corpus "$CORPUS" --output_dir "${OUTPUT_DIR:-$DISTIL_ROOT/data/pretrain_ofrecord}"
      --vocab_file "${VOCAB_FILE:-$DISTIL_ROOT/src/distil/data/vocab/bert-base-uncased.txt}"
      --max_seq_length "${MAX_SEQ_LENGTH:-128}")
add_env_flags DO_LOWER_CASE:do_lower_case DEV_FRACTION:dev_fraction
exec python -m distil pregenerate "${ARGS[@]}" "$@"
