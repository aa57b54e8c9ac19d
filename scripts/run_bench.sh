#!/usr/bin/env bash
# Usage: bash scripts/run_bench.sh [processes|kd|inference|stress|buckets|tinybert|serve] [flags]
# The benchmark suite: GLUE -> OFRecord conversion, OFRecord reader vs training consumption, train
# steps eager vs nn.Graph (teacher and student), inference of the teacher and every student, peak RSS.
# Medians of --repeats runs after --warmup; writes bench/results.json (--output PATH) and prints a table.
# Defaults are the real configurations (about 5 minutes on a 2-core CPU); --quick shrinks every
# size for CI (seconds); --help lists the flags (--batch, --seq, --teacher-layers, --teacher-hidden, ...).
# `processes`: training with 1 and 2 processes against PyTorch (bench/bench_processes.py; about 5 minutes).
# `kd`: one KD job (12L-768 teacher, 4L-312 student) by this project with 1 and 2 processes, teacher cache on
# and off, length buckets on and off, by TextBrewer, a plain PyTorch loop and TextBrewer's cached KD on
# length-grouped batches (bench/bench_kd.py; about 25 minutes; --runs picks; --real_corpus DIR: real sentences).
# `inference`: the 4L-312 student and the 12L-768 teacher by OneFlow nn.Graph, onnxruntime and PyTorch
# (bench/bench_inference.py; throughput at batch 32, latency p50/p95 at batch 1; about 5 minutes).
# `stress`: crashes per hundred runs of the paths where OneFlow crashed, beside busy loops (bench/bench_stress.py;
# --fix off for OneFlow's own lazy-job queue; hours at --runs 100).
# `buckets`: --length_buckets auto against off on the real corpus at seq 128, side by side: KD training steps,
# evaluation, the teacher cache's pass, predict (bench/bench_buckets.py; about 30 minutes).
# `tinybert`: TinyBERT's training step phase by phase (teacher, student, losses, backward and update) by this
# project and by PyTorch + TextBrewer, same shapes (bench/bench_tinybert.py; about 8 minutes at --seq 64).
# `kd --algorithm tinybert`: the whole one-stage TinyBERT job against TextBrewer's.
# `serve`: the 4L-312 student behind `python -m distil serve` (FP32, INT8) under load at concurrency 1/8/32,
# against offline onnxruntime and PyTorch behind the same server stack (bench/bench_serve.py; about 10 minutes).
# Example: bash scripts/run_bench.sh --teacher-repeats 1 --output /tmp/results.json
set -euo pipefail
[ "${1:-}" = "-h" ] && { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ "${1:-}" = processes ]; then
  shift
  exec python "$DISTIL_ROOT/bench/bench_processes.py" "$@"
fi
if [ "${1:-}" = kd ] || [ "${1:-}" = inference ] || [ "${1:-}" = stress ] || [ "${1:-}" = buckets ] || [ "${1:-}" = tinybert ] || [ "${1:-}" = serve ]; then
  which=$1
  shift
  exec python "$DISTIL_ROOT/bench/bench_$which.py" "$@"
fi
exec python "$DISTIL_ROOT/bench/run_all.py" "$@"
