"""Inference of the 4L-312 student and the 12L-768 teacher at seq 128: OneFlow nn.Graph, onnxruntime (the
model exported by `python -m distil export-onnx`) and PyTorch eager (transformers' BertForSequenceClassification
with the same weights, in the reference venv), one after the other on this machine.

Throughput: examples/s at batch 32 (median of --repeats batches after a warm-up); latency: p50 and p95 of
--latency_runs single-example calls. Prints one table with the ratios to PyTorch; writes --output (JSON).

Usage: bash scripts/run_bench.sh inference [--models student,teacher] [--quick]
   or: PYTHONPATH=src .venv/bin/python bench/bench_inference.py ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from distil.data.convert import DEFAULT_VOCAB  # noqa: E402
from distil.fileio import write_json_atomic  # noqa: E402
from real_data import export_hf  # noqa: E402

SIZES = {"student": (4, 312, 12, 1200), "teacher": (12, 768, 12, 3072)}
QUICK = {
    "sizes": {"student": (1, 32, 4, 48), "teacher": (2, 64, 4, 96)},
    "seq": 32,
    "batch": 8,
    "repeats": 2,
    "latency_runs": 5,
}
# the PyTorch side, run by the reference venv's python: same measurements on the HF export
TORCH_SIDE = r"""
import json, statistics, sys, time
import numpy as np, torch
from transformers import BertForSequenceClassification
folder, seq, batch, repeats, runs = sys.argv[1], *map(int, sys.argv[2:6])
model = BertForSequenceClassification.from_pretrained(folder).eval()
def inputs(b):
    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(1, model.config.vocab_size, (b, seq)))
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids)}
def timed(b, n):
    x, out = inputs(b), []
    with torch.no_grad():
        model(**x)
        for _ in range(n):
            t = time.perf_counter(); model(**x); out.append(time.perf_counter() - t)
    return out
big, one = timed(batch, repeats), timed(1, runs)
print(json.dumps({"examples_per_s": batch / statistics.median(big), "p50_ms": 1000 * float(np.percentile(one, 50)),
                  "p95_ms": 1000 * float(np.percentile(one, 95)), "threads": torch.get_num_threads(),
                  "torch": torch.__version__}))
"""


def make_model(work: Path, name: str, sizes, seq: int) -> Path:
    from distil.models import io
    from distil.models.bert import BertConfig
    from distil.runtime import import_oneflow

    flow = import_oneflow()
    layers, hidden, heads, ffn = sizes
    flow.manual_seed(0)
    config = BertConfig(
        vocab_size=len(DEFAULT_VOCAB.read_text(encoding="utf-8").splitlines()),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=512,
    ).to_dict()
    model = io.build_model(config)
    with flow.no_grad():  # trained-like: no zero biases or unit LayerNorms, which exporters could fold away
        for parameter_name, parameter in model.named_parameters():
            if parameter_name.endswith("bias") or "LayerNorm" in parameter_name:
                parameter.add_(flow.randn(*parameter.shape) * 0.05)
    io.write_new_model_dir(
        work / name,
        model,
        config,
        DEFAULT_VOCAB,
        {"name": "random-init"},
        task={"name": "SST-2", "labels": ["0", "1"], "num_labels": 2, "metrics": ["accuracy"]},
        data={"format": "bert", "folder": "SST-2", "seq_length": seq, "do_lower_case": True},
    )
    return work / name


def batch_of(size: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, (size, seq)).astype(np.int32)
    return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": np.ones_like(ids)}


def measure(call: Callable[[dict[str, np.ndarray]], object], seq: int, vocab: int, args) -> dict[str, float]:
    big, one = batch_of(args.batch, seq, vocab), batch_of(1, seq, vocab)
    call(big), call(one)  # warm-up (an nn.Graph compiles here)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        call(big)
        times.append(time.perf_counter() - start)
    latencies = []
    for _ in range(args.latency_runs):
        start = time.perf_counter()
        call(one)
        latencies.append(time.perf_counter() - start)
    return {
        "examples_per_s": args.batch / statistics.median(times),
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
    }


def oneflow_graph(model_dir: Path):
    """An nn.Graph per input shape (a graph is compiled for one shape)."""
    from distil.models import io
    from distil.onnx_export import InferenceGraph
    from distil.runtime import import_oneflow

    flow = import_oneflow()
    model = io.load_model(model_dir).eval()
    graphs: dict[tuple, InferenceGraph] = {}

    def call(features: dict[str, np.ndarray]):
        shape = features["input_ids"].shape
        graph = graphs.setdefault(shape, InferenceGraph(model))
        return graph(*(flow.tensor(features[k]) for k in ("input_ids", "segment_ids", "input_mask"))).numpy()

    return call


def onnxruntime_session(model_dir: Path):
    from distil.predict import OnnxEngine

    return OnnxEngine(model_dir / "model.onnx")


def pytorch(folder: Path, seq: int, args) -> dict[str, float] | None:
    if args.quick or not Path(args.torch_python).is_file():
        return None
    done = subprocess.run(
        [
            args.torch_python,
            "-c",
            TORCH_SIDE,
            str(folder),
            str(seq),
            str(args.batch),
            str(args.repeats),
            str(args.latency_runs),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"PyTorch side failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(figures: dict[str, dict[str, dict[str, float] | None]], batch: int) -> str:
    lines = [
        f"{'model, engine':30s} {f'examples/s @{batch}':>14s} {'p50 ms @1':>10s} {'p95 ms @1':>10s} "
        f"{'x PyTorch (thr, p50)':>22s}"
    ]
    for model, engines in figures.items():
        reference = engines.get("pytorch")
        for engine, f in engines.items():
            if f is None:
                continue
            ratio = (
                (
                    f"{f['examples_per_s'] / reference['examples_per_s']:>9.2f}x "
                    f"{reference['p50_ms'] / f['p50_ms']:>9.2f}x"
                )
                if reference
                else ""
            )
            lines.append(
                f"{model + ', ' + engine:30s} {f['examples_per_s']:>14.1f} {f['p50_ms']:>10.1f} "
                f"{f['p95_ms']:>10.1f} {ratio:>22s}"
            )
    lines.append("(x PyTorch > 1: faster than PyTorch, in throughput and in p50 latency)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", default="student,teacher")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--latency_runs", type=int, default=30)
    p.add_argument(
        "--torch-python", dest="torch_python", default=os.environ.get("TORCH_PYTHON", "/work/torchref/bin/python")
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI (no PyTorch side)")
    p.add_argument("--one", nargs=2, metavar=("ENGINE", "MODEL_DIR"), help=argparse.SUPPRESS)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results_inference.json")
    p.set_defaults(sizes=SIZES)
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)
    return p.parse_args(argv)


def measure_in_subprocess(engine: str, model_dir: Path, args) -> dict[str, float]:
    """One engine on one model in a process of its own: OneFlow 0.9's CPU nn.Graph keeps every buffer of a
    pass (about 12 GB for the teacher at batch 32), so no process holds two of them."""
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--one",
            engine,
            str(model_dir),
            "--seq",
            str(args.seq),
            "--batch",
            str(args.batch),
            "--repeats",
            str(args.repeats),
            "--latency_runs",
            str(args.latency_runs),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    if done.returncode:
        raise SystemExit(f"{engine} on {model_dir.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    vocab = len(DEFAULT_VOCAB.read_text(encoding="utf-8").splitlines())
    if args.one:
        engine, model_dir = args.one[0], Path(args.one[1])
        call = oneflow_graph(model_dir) if engine == "oneflow" else onnxruntime_session(model_dir)
        print(json.dumps(measure(call, args.seq, vocab, args)))
        return 0
    started = datetime.datetime.now()
    figures: dict[str, dict[str, dict[str, float] | None]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            model_dir = make_model(work, name, args.sizes[name], args.seq)
            exported = subprocess.run(
                [sys.executable, "-m", "distil", "export-onnx", str(model_dir)],
                capture_output=True,
                text=True,
                env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
            )
            if exported.returncode:
                raise SystemExit(f"export of {name} failed:\n{exported.stderr[-3000:]}")
            figures[name] = {
                "oneflow nn.Graph": measure_in_subprocess("oneflow", model_dir, args),
                "onnxruntime": measure_in_subprocess("onnxruntime", model_dir, args),
                "pytorch": pytorch(export_hf(model_dir, work / f"{name}_hf"), args.seq, args),
            }
            print(f"{name}: done", file=sys.stderr, flush=True)
    import onnxruntime

    output = {
        "benchmark": "bench/bench_inference.py",
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "flags": {k: str(v) for k, v in vars(args).items()},
        "figures": figures,
    }
    write_json_atomic(args.output, output)
    print(
        f"{'QUICK run: tiny sizes. ' if args.quick else ''}inference, seq {args.seq}, throughput at batch "
        f"{args.batch}, latency at batch 1, {os.cpu_count()} CPUs"
    )
    print(table(figures, args.batch))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
