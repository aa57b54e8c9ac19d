#!/usr/bin/env bash
# Usage: bash scripts/run_data_augmentation.sh [TASK] [extra flags for `python -m distil augment`]
# TinyBERT data augmentation (original: examples/tinybert/data_augmentation.py): writes $GLUE_DIR/<TASK>/train_aug.tsv,
# every train.tsv row followed by up to N variants whose words are replaced by masked-LM predictions (single
# WordPiece) or GloVe neighbours (several). Same header and columns as train.tsv; re-running replaces it.
# Variables (defaults in brackets):
#   PRETRAINED_MODEL [models/bert-base-uncased]   Hugging Face BERT folder WITH its masked-LM head (cls.predictions.*)
#   GLOVE_EMB        [glove/glove.840B.300d.txt]  GloVe text file (the first 100,000 lines are read)
#   GLUE_DIR         [data/glue_data]             GLUE TSV root (from run_download_glue_data.sh)
#   N [per task: CoLA, MRPC, STS-B, RTE 30; SST-2, QNLI 20; MNLI, QQP 10]   M [15]   P [0.4]   SEED [42]
# Example: N=5 bash scripts/run_data_augmentation.sh RTE
set -euo pipefail
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
TASK=${1:-SST-2}
[ $# -gt 0 ] && shift
PRETRAINED_MODEL=${PRETRAINED_MODEL:-$DISTIL_ROOT/models/bert-base-uncased}
GLOVE_EMB=${GLOVE_EMB:-$DISTIL_ROOT/glove/glove.840B.300d.txt}
GLUE_DIR=${GLUE_DIR:-$DISTIL_ROOT/data/glue_data}
ARGS=(--task_name "$TASK" --pretrained_model "$PRETRAINED_MODEL" --glove_embs "$GLOVE_EMB" --glue_dir "$GLUE_DIR"
      --M "${M:-15}" --p "${P:-0.4}" --seed "${SEED:-42}")
[ -n "${N:-}" ] && ARGS+=(--N "$N")
exec python -m distil augment "${ARGS[@]}" "$@"
