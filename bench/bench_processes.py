"""Data parallelism on this machine: the project's training with 1 and with 2 processes, against PyTorch.

The same 4L-312 BERT (FFN 1200) training job, batch 32 per process, seq 128, AdamW with clipping:
- this project: `python -m distil train --algorithm teacher` (reader, nn.Graph step, logging: what a
  user runs) with `--nproc_per_node 1` and `2` (OneFlow's launcher; CPU processes here), examples/s
  read from its log over the steps after the first interval (which holds the graph compilation);
- PyTorch 2.13 eager (bench/torch_baseline.py --only step, in the reference venv, all cores).
The runs go one after the other, so each has the machine to itself. Prints one table with the
ratios and writes --output (JSON).

Usage: bash scripts/run_bench.sh processes [--steps 40] [--torch-python PATH] [--quick]
   or: PYTHONPATH=src .venv/bin/python bench/bench_processes.py ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_convert import write_sst2  # noqa: E402
from distil.data.convert import DEFAULT_VOCAB, ConvertConfig, convert_task  # noqa: E402
from distil.fileio import write_json_atomic  # noqa: E402
from distil.models import io  # noqa: E402

THROUGHPUT = re.compile(r"step (\d+)/\d+ .* ([0-9.]+) examples/s")
QUICK = {"layers": 1, "hidden": 32, "heads": 4, "ffn": 48, "seq": 32, "batch": 8, "steps": 12, "log_every": 4}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare(work: Path, args: argparse.Namespace) -> None:
    """Synthetic SST-2 large enough that no epoch ends inside the timed steps, and a random-init BERT."""
    examples = args.steps * args.batch * 2 + args.batch
    write_sst2(work / "glue", examples, 64, 0)
    convert_task(
        "SST-2",
        ConvertConfig(
            work / "glue", work / "data", DEFAULT_VOCAB, max_seq_length=args.seq, lstm_seq_length=0, workers=1
        ),
    )
    io.init_bert(
        work / "init",
        DEFAULT_VOCAB,
        {
            "hidden_size": args.hidden,
            "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads,
            "intermediate_size": args.ffn,
            "max_position_embeddings": max(512, args.seq),
        },
        seed=0,
    )


def ours(work: Path, processes: int, args: argparse.Namespace) -> dict[str, object]:
    """examples/s of all processes together, per log interval after the first."""
    command = [
        sys.executable,
        "-m",
        "distil",
        "train",
        "--algorithm",
        "teacher",
        "--pretrained_model",
        str(work / "init"),
        "--data_root",
        str(work / "data"),
        "--model_save_dir",
        str(work / f"p{processes}"),
        "--max_steps",
        str(args.steps),
        "--log_every",
        str(args.log_every),
        "--batch_size",
        str(args.batch),
        "--eval_batch_size",
        "8",
        "--learning_rate",
        "1e-4",
        "--device",
        "cpu",
        "--overwrite",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(free_port()),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{processes}-process training failed:\n{done.stderr[-3000:]}")
    rates = [float(m.group(2)) for m in THROUGHPUT.finditer(done.stderr)][1:]
    if not rates:
        raise SystemExit(f"no throughput in the {processes}-process log (--steps must be > 2 x --log_every)")
    return {
        "examples_per_s": statistics.median(rates),
        "intervals": rates,
        "processes": processes,
        "batch_per_process": args.batch,
        "global_batch": args.batch * processes,
    }


def pytorch(args: argparse.Namespace) -> dict[str, object] | None:
    """PyTorch's eager step of the same model (only the default 4L-312 shape), or None without its venv."""
    if not Path(args.torch_python).is_file() or args.quick:
        return None
    done = subprocess.run(
        [
            args.torch_python,
            str(ROOT / "bench" / "torch_baseline.py"),
            "--only",
            "step",
            "--batch",
            str(args.batch),
            "--step-small-batch",
            "0",
            "--seq",
            str(args.seq),
            "--warmup",
            "2",
            "--repeats",
            str(max(3, args.steps // 4)),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"PyTorch baseline failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    step = next(iter(report["step"].values()))
    return {
        "examples_per_s": step["examples_per_s"],
        "batch": args.batch,
        "torch": report["metadata"]["torch_version"],
        "threads": report["metadata"]["torch_num_threads"],
    }


def table(figures: dict[str, dict[str, object] | None]) -> str:
    one, two, torch = figures["1 process"], figures["2 processes"], figures["PyTorch"]
    lines = [
        f"{'training, examples/s':32s} {'value':>8s}",
        f"{'this project, 1 process':32s} {one['examples_per_s']:>8.1f}",
        f"{'this project, 2 processes':32s} {two['examples_per_s']:>8.1f}",
        f"{'PyTorch eager, all cores':32s} " + (f"{torch['examples_per_s']:>8.1f}" if torch else "not run"),
        f"{'2 processes / 1 process':32s} {two['examples_per_s'] / one['examples_per_s']:>7.2f}x",
    ]
    if torch:
        lines += [
            f"{'1 process / PyTorch':32s} {one['examples_per_s'] / torch['examples_per_s']:>7.2f}x",
            f"{'2 processes / PyTorch':32s} {two['examples_per_s'] / torch['examples_per_s']:>7.2f}x",
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=312)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=1200)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32, help="examples per process and step")
    p.add_argument("--steps", type=int, default=30, help="training steps of each run")
    p.add_argument("--log_every", type=int, default=5, help="steps per throughput interval")
    p.add_argument(
        "--torch-python",
        dest="torch_python",
        default=os.environ.get("TORCH_PYTHON", "/work/torchref/bin/python"),
        help="the reference venv's python (torch 2.13); skipped if absent",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI: " + str(QUICK) + " (no PyTorch run)")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results_processes.json")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    if args.steps <= 2 * args.log_every:
        p.error("--steps must be more than twice --log_every (the first interval holds the compilation)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now()
    with tempfile.TemporaryDirectory(prefix="bench_processes_") as tmp:
        work = Path(tmp)
        prepare(work, args)
        figures = {"1 process": ours(work, 1, args), "2 processes": ours(work, 2, args), "PyTorch": pytorch(args)}
    output = {
        "benchmark": "bench/bench_processes.py",
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "flags": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "figures": figures,
    }
    write_json_atomic(args.output, output)
    print(
        f"{'QUICK run: tiny sizes. ' if args.quick else ''}{args.layers}L-{args.hidden} BERT, seq {args.seq}, "
        f"batch {args.batch} per process, {args.steps} steps, {os.cpu_count()} CPUs"
    )
    print(table(figures))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
