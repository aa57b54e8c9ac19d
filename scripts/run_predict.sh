#!/usr/bin/env bash
# Usage: bash scripts/run_predict.sh MODEL_DIR [INPUT ...] [flags of `python -m distil predict`]
# Classify new text with a trained model directory (teacher or any student). INPUT: a GLUE TSV of the
# model's task, plain text with one example per line (a sentence pair as two tab-separated fields), or -
# for stdin (the default). Prints one JSON line per example (source, line, label, probabilities; score
# for STS-B), or writes them to OUTPUT atomically.
# Variables: OUTPUT [] (stdout)  BATCH_SIZE [32]  ENGINE [auto: onnxruntime if MODEL_DIR/model.onnx is newer than
# the weights, else oneflow]  PRECISION [fp32; int8: MODEL_DIR/model.int8.onnx]
# LENGTH_BUCKETS [auto: batches of similar length, cut; off]  GPU [0]
# GPU_NUM_PER_NODE NUM_NODES NODE_RANK NODE_IPS MASTER_PORT [one process]
# Example: echo "a gripping , funny film" | bash scripts/run_predict.sh models/student_model/SST-2/<MODEL_ID>
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  [ $# -lt 1 ] && exit 2
  exit 0
fi
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export CUDA_VISIBLE_DEVICES=${GPU:-${CUDA_VISIBLE_DEVICES:-0}}
ARGS=(--batch_size "${BATCH_SIZE:-32}")
add_env_flags OUTPUT:output ENGINE:engine PRECISION:precision LENGTH_BUCKETS:length_buckets \
              GPU_NUM_PER_NODE:nproc_per_node NUM_NODES:nnodes NODE_RANK:node_rank NODE_IPS:node_ips \
              MASTER_PORT:master_port
exec python -m distil predict "$@" "${ARGS[@]}"
