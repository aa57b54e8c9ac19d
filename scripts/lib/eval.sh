# Sourced (not run) by the run_eval_*.sh scripts after they set MODEL_FOLDER (finetuned_teacher or
# student_model): evaluates <MODELS_ROOT>/<MODEL_FOLDER>[/<TASK>]/<MODEL_ID> with `python -m distil eval`.
[ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ] && { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0; }
[ $# -ge 3 ] || { sed -n '2p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"
export CUDA_VISIBLE_DEVICES=$1
TASK=$2
MODELS=${MODELS_ROOT:-$DISTIL_ROOT/models}
if [ "$MODEL_FOLDER" = finetuned_teacher ]; then DEFAULT_DIR=$MODELS/finetuned_teacher/$3; else DEFAULT_DIR=$MODELS/student_model/$TASK/$3; fi
MODEL_DIR=${MODEL_DIR:-${TEACHER_MODEL_DIR:-${STUDENT_DIR:-$DEFAULT_DIR}}}  # the original named them so
shift 3
ARGS=()
add_env_flags GPU_NUM_PER_NODE:nproc_per_node NUM_NODES:nnodes NODE_RANK:node_rank NODE_IPS:node_ips \
              MASTER_PORT:master_port USE_FP16:use_fp16 LENGTH_BUCKETS:length_buckets
exec python -m distil eval "$MODEL_DIR" --task "$TASK" --data_root "${DATA_ROOT:-$DISTIL_ROOT/data/glue_ofrecord}" \
  --result_dir "${RESULT_DIR:-}" --eval_batch_size "${EVAL_BATCH_SIZE:-32}" "${ARGS[@]}" "$@"
