#!/usr/bin/env bash
# Usage: bash scripts/run_general_distill.sh [extra flags for `python -m distil train`]
# General distillation: a small general BERT from a pretrained (not fine-tuned) teacher and the text that
# run_pregenerate_training_data.sh prepared; the result starts KD or TinyBERT as TMP_STUDENT_DIR.
# Variables:
#   CORPUS_DIR (required: pregenerate's OUTPUT_DIR)  TEACHER_MODEL (required: a pretrained model dir or Hugging Face
#   BERT folder with the corpus's vocab)  GENERAL_METHOD [tinybert | minilm]  STUDENT_DIR [models/general_student/<id>]
#   EPOCH [3]  LEARNING_RATE [5e-5]  WEIGHT_DECAY [0.01]  BATCH_SIZE [32]  EVAL_BATCH_SIZE [32]  GPU [0]
#   TMP_STUDENT_DIR [] (a starting student)  LAYER_MAP [uniform] (tinybert: e.g. 0,2,3,5,6 for 4 of 6 layers)
#   MAX_RESTARTS [3]  CHECKPOINT_EVERY [0]  CHECKPOINT_MINUTES [10]  LENGTH_BUCKETS [auto]  TENSORBOARD_DIR []
# Student sizes: --student_num_hidden_layers 4 --student_hidden_size 312 --student_num_attention_heads 12
#   --student_intermediate_size 1200 (TinyBERT's shape, the default); --max_steps N stops early.
# Example: CORPUS_DIR=data/pretrain_ofrecord TEACHER_MODEL=models/bert-base GENERAL_METHOD=minilm \
#   bash scripts/run_general_distill.sh --max_steps 2000
set -euo pipefail
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0; }
: "${CORPUS_DIR:?set CORPUS_DIR to the folder run_pregenerate_training_data.sh wrote}"
: "${TEACHER_MODEL:?set TEACHER_MODEL to a pretrained BERT (a model dir or a Hugging Face folder)}"
ALGORITHM=general_${GENERAL_METHOD:-tinybert}
DATA_ROOT=$CORPUS_DIR FT_BERT_BASE_DIR=$TEACHER_MODEL
set -- pretraining "$@"  # (the task: general distillation has its own)
source "$(dirname "${BASH_SOURCE[0]}")/lib/train.sh"
