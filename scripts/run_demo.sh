#!/usr/bin/env bash
# Usage: bash scripts/run_demo.sh
# The whole platform on a fresh machine, offline, in about 10 minutes on 2 CPU cores: builds a synthetic
# sentiment task in SST-2's format (3,000 + 600 sentences where negation and "but" decide the label) and its
# WordPiece vocab, converts it to OFRecords, fine-tunes a small teacher (4 layers, hidden 128), distils it
# with KD, Distilled-BiLSTM, BERT-PKD, TinyBERT and BERT-of-Theseus, evaluates every model with its eval
# script and prints one comparison table. Everything goes to data/demo/ and models/demo/; a second run
# reuses what is already there (delete those folders to start over).
set -euo pipefail
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
S=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$S/env.sh"
DATA=$DISTIL_ROOT/data/demo
export DATA_ROOT=$DATA/glue_ofrecord MODELS_ROOT=$DISTIL_ROOT/models/demo BATCH_SIZE=32 EVAL_BATCH_SIZE=64
echo "== 1/4 data: $DATA"
python -m distil make-demo-data "$DATA" >/dev/null
[ -f "$DATA_ROOT/SST-2/train/meta.json" ] || GLUE_DIR=$DATA/glue_data VOCAB_FILE=$DATA/vocab.txt MAX_SEQ_LENGTH=32 \
  bash "$S/glue_process.sh" SST-2 >/dev/null
[ -d "$MODELS_ROOT/pretrained" ] || python -m distil init-bert "$MODELS_ROOT/pretrained" --vocab_file "$DATA/vocab.txt" \
  --hidden_size 128 --num_hidden_layers 4 --num_attention_heads 4 --intermediate_size 256 \
  --max_position_embeddings 64 >/dev/null
echo "== 2/4 teacher"
MODEL_SAVE_DIR=$MODELS_ROOT/teacher PRETRAINED_MODEL=$MODELS_ROOT/pretrained EPOCH=4 LEARNING_RATE=1e-3 \
  bash "$S/run_train_teacher.sh" SST-2 >/dev/null
export FT_BERT_BASE_DIR=$MODELS_ROOT/teacher EPOCH=6 LEARNING_RATE=1e-3
SMALL=(--student_num_hidden_layers 2 --student_hidden_size 64 --student_num_attention_heads 4 --student_intermediate_size 128)
echo "== 3/4 students"
STUDENT_DIR=$MODELS_ROOT/kd bash "$S/run_train_student_kd.sh" SST-2 "${SMALL[@]}" >/dev/null
STUDENT_DIR=$MODELS_ROOT/distilled_lstm bash "$S/run_train_student_distilled_lstm.sh" SST-2 \
  --lstm_embedding_size 64 --lstm_hidden_size 64 --lstm_fc_size 128 >/dev/null
STUDENT_DIR=$MODELS_ROOT/bert_pkd LAYER_LIST=1,3 bash "$S/run_train_student_bert_pkd.sh" SST-2 >/dev/null
STUDENT_DIR=$MODELS_ROOT/tinybert bash "$S/run_train_student_tinybert.sh" SST-2 "${SMALL[@]}" >/dev/null
STUDENT_DIR=$MODELS_ROOT/theseus bash "$S/run_train_theseus.sh" SST-2 --successor_layers 2 >/dev/null
echo "== 4/4 evaluation and report"
MODEL_DIR=$MODELS_ROOT/teacher bash "$S/run_eval_teacher.sh" 0 SST-2 teacher >/dev/null
for pair in kd:student_kd distilled_lstm:student_distilled_lstm bert_pkd:student_bert_pkd tinybert:student_tinybert \
            theseus:theseus; do
  MODEL_DIR=$MODELS_ROOT/${pair%%:*} bash "$S/run_eval_${pair#*:}.sh" 0 SST-2 "${pair%%:*}" >/dev/null
done
python -m distil report "$MODELS_ROOT" --data_root "$DATA_ROOT" --output "$MODELS_ROOT/report"
