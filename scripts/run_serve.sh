#!/usr/bin/env bash
# Usage: bash scripts/run_serve.sh MODEL_DIR [MODEL_DIR ...] [flags of `python -m distil serve`]
# Serve fine-tuned model directories over HTTP, each under its directory name, with the Open Inference Protocol
# (KServe v2 / Triton's REST API, binary tensor data too): POST /v2/models/<name>/infer, GET /v2/health/ready,
# /v2/models/<name> (metadata), /metrics (Prometheus). Requests are batched dynamically. SIGTERM or Ctrl-C refuses
# new requests (503), finishes the accepted ones and exits 0.
# Variables: HOST [127.0.0.1]  PORT [8000]  MAX_BATCH_SIZE [32]  MAX_QUEUE_DELAY_US [0]
# ENGINE [auto: onnxruntime if MODEL_DIR/model.onnx is newer than the weights, else oneflow]
# PRECISION [fp32; int8: MODEL_DIR/model.int8.onnx]  GPU [0]
# Example: PORT=8080 bash scripts/run_serve.sh models/student_model/SST-2/<MODEL_ID>
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  [ $# -lt 1 ] && exit 2
  exit 0
fi
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export CUDA_VISIBLE_DEVICES=${GPU:-${CUDA_VISIBLE_DEVICES:-0}}
ARGS=()
add_env_flags HOST:host PORT:port MAX_BATCH_SIZE:max_batch_size MAX_QUEUE_DELAY_US:max_queue_delay_us ENGINE:engine \
              PRECISION:precision
exec python -m distil serve "$@" "${ARGS[@]}"
