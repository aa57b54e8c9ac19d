# Sourced (not run) by the run_train_*.sh scripts after they set ALGORITHM: maps the original's
# variables to `python -m distil train` flags (empty ones are left to the algorithm's defaults).
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0; }
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"
TASK=${1:-SST-2}
[ $# -gt 0 ] && shift
export CUDA_VISIBLE_DEVICES=${GPU:-${CUDA_VISIBLE_DEVICES:-0}}
ARGS=(--algorithm "$ALGORITHM" --task "$TASK" --data_root "${DATA_ROOT:-$DISTIL_ROOT/data/glue_ofrecord}"
      --models_root "${MODELS_ROOT:-$DISTIL_ROOT/models}" --result_dir "${RESULT_DIR:-}"
      --serve_for_online "${SERVE_FOR_ONLINE:-False}" --batch_size "${BATCH_SIZE:-32}"
      --eval_batch_size "${EVAL_BATCH_SIZE:-32}")
add_env_flags EPOCH:epochs LEARNING_RATE:learning_rate WEIGHT_DECAY:weight_decay MODEL_SAVE_DIR:model_save_dir \
              STUDENT_DIR:model_save_dir PRETRAINED_MODEL:pretrained_model FT_BERT_BASE_DIR:teacher_model \
              TMP_STUDENT_DIR:student_model KD_ALPHA:kd_alpha KD_BETA:kd_beta TEMPERATURE:temperature \
              LAYER_LIST:layer_list FROM_SCRATCH:from_scratch TINYBERT_MODE:tinybert_mode AUG_TRAIN:aug_train \
              REPLACING_RATE:replacing_rate REPLACE_SCHEDULER:replace_scheduler GPU_NUM_PER_NODE:nproc_per_node \
              NUM_NODES:nnodes NODE_RANK:node_rank NODE_IPS:node_ips MASTER_PORT:master_port USE_FP16:use_fp16 \
              TEACHER_CACHE:teacher_cache EXPORT_ONNX:export_onnx MAX_RESTARTS:max_restarts \
              CHECKPOINT_EVERY:checkpoint_every CHECKPOINT_MINUTES:checkpoint_minutes LENGTH_BUCKETS:length_buckets \
              RECIPE:recipe TENSORBOARD_DIR:tensorboard LAYER_MAP:layer_map
exec python -m distil train "${ARGS[@]}" "$@"
