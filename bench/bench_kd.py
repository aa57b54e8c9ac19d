"""One KD job side by side: this project (1 and 2 processes, teacher cache on and off; with 1 process also the
cache's pass on onnxruntime, and length buckets off), TextBrewer's GeneralDistiller, a plain PyTorch loop and
TextBrewer's cached KD on length-grouped, dynamically padded batches, on this machine, one run after the other.

The job: a 12L-768 teacher (random weights: speed does not depend on them) and a 4L-312 student (FFN
1200) that both sides start from the same HF folder, SST-2-shaped data of --train_size examples, seq 128,
global batch 32, 3 epochs, alpha 0.5 · CE(gold) + 0.5 · soft-label CE at T 1, AdamW with a linear
schedule and clipping, dev accuracy after every epoch. Two processes take 16 examples each (the same
global batch, so the same number of steps). --real_corpus DIR takes the first --train_size / --dev_size rows of
the real corpus (bench/fetch_real_corpus.py, fetched into DIR/glue_full once) instead of generated sentences.
Our runs use `--length_buckets auto` (the default) unless their name ends with -off; pytorch-dynamic is
bench/torch_finetune.py kd_dynamic (TextBrewer's logits cache, HF's group_by_length, padding per batch).
Reported per run: the seconds of epoch 1 and of each later epoch (this project: from train_history.json, the
first epoch including the teacher cache's pass; PyTorch sides: from their own per-epoch timing), the wall time
of the whole command (start-up, compilation and saving included), examples/s over the whole run and the peak
RSS of its largest process.
Then `python -m distil eval` of the teacher on the dev split (batch 32): its examples/s and peak RSS.
--algorithm tinybert runs one-stage TinyBERT instead (attention + hidden states + soft labels, no teacher cache:
the teacher runs in every step) against bench/torch_finetune.py tinybert (TextBrewer's GeneralDistiller, padded to
--seq); run names without a cache suffix (ours-1p, ours-1p-off, ours-2p) take the algorithm's defaults.

Usage: bash scripts/run_bench.sh kd [--train_size 192] [--runs ours-1p-cache,...] [--real_corpus DIR] [--quick]
   or: PYTHONPATH=src .venv/bin/python bench/bench_kd.py ...
The PyTorch sides run in the reference venv (--torch-python; torch 2.13, transformers, textbrewer) and are
skipped when it is absent or with --quick.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_convert import write_sst2  # noqa: E402
from bench_processes import free_port  # noqa: E402
from distil.data.convert import DEFAULT_VOCAB, ConvertConfig, convert_task  # noqa: E402
from distil.fileio import write_json_atomic  # noqa: E402
from real_data import export_hf, prepare_corpus  # noqa: E402

OURS = (
    "ours-1p-cache",
    "ours-1p-cache-off",
    "ours-1p-cache-ort",
    "ours-1p-nocache",
    "ours-2p-cache",
    "ours-2p-nocache",
    "ours-1p",
    "ours-1p-off",
    "ours-2p",
    "ours-2p-off",
)  # no cache suffix: the default
CACHE_MODE = {"-cache": "auto", "-cache-ort": "onnxruntime", "-nocache": "off"}  # by the run name's ending
BUCKETS_OFF = "-off"  # a run name's ending: --length_buckets off
THEIRS = {"textbrewer": "kd", "pytorch-loop": "kd_plain", "pytorch-dynamic": "kd_dynamic"}  # bench/torch_finetune.py
ALGORITHM_FLAGS = {
    "kd": ["--kd_alpha", "0.5"],
    "tinybert": ["--tinybert_mode", "one_stage", "--pred_distill_mode", "kl"],
}
QUICK = {
    "teacher": (2, 32, 4, 48),
    "student": (1, 16, 4, 24),
    "seq": 32,
    "train_size": 48,
    "dev_size": 16,
    "runs": "ours-1p-cache,ours-1p-nocache",
}
# the peak RSS of the largest process the wrapped command started (ru_maxrss of waited-for descendants)
MEASURE = (
    "import json, resource, subprocess, sys, time; t = time.time(); code = subprocess.call(sys.argv[1:]); "
    "print(json.dumps({'code': code, 'seconds': time.time() - t, "
    "'peak_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}), file=sys.stderr)"
)


def prepare(work: Path, args: argparse.Namespace) -> None:
    """The data (converted for this project, TSV for PyTorch), the teacher as a model dir and an HF folder,
    the student's initial weights as an HF folder both sides load."""
    from distil.models import io
    from distil.models.bert import BertConfig
    from distil.runtime import import_oneflow

    flow = import_oneflow()
    if args.real_corpus:
        shutil.copytree(prepare_corpus(args.real_corpus, args.train_size, args.dev_size), work / "glue" / "SST-2")
    else:
        write_sst2(work / "glue", args.train_size, args.dev_size, 0)
    convert_task(
        "SST-2",
        ConvertConfig(
            work / "glue", work / "data", DEFAULT_VOCAB, max_seq_length=args.seq, lstm_seq_length=0, workers=1
        ),
    )
    vocab = len(DEFAULT_VOCAB.read_text(encoding="utf-8").splitlines())
    for name, (layers, hidden, heads, ffn) in (("teacher", args.teacher), ("student", args.student)):
        flow.manual_seed(0)
        config = BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=512,
        ).to_dict()
        io.write_new_model_dir(
            work / name,
            io.build_model(config),
            config,
            DEFAULT_VOCAB,
            {"name": "random-init"},
            task={"name": "SST-2", "labels": ["0", "1"], "num_labels": 2, "metrics": ["accuracy"]},
            data={"format": "bert", "folder": "SST-2", "seq_length": args.seq, "do_lower_case": True},
        )
        export_hf(work / name, work / f"{name}_hf")


def measured(command: list[str], log: Path) -> dict[str, float]:
    """Run `command` (output into `log`); its wall seconds and the peak RSS of its largest process in GB."""
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, *command],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
            cwd=ROOT,
        )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    if report["code"]:
        raise SystemExit(f"failed ({report['code']}): {' '.join(command)}; see {log}")
    return {"wall_seconds": round(report["seconds"], 1), "peak_rss_gb": round(report["peak_rss_kb"] / 2**20, 2)}


def ours(work: Path, name: str, args: argparse.Namespace) -> dict[str, object]:
    processes = 2 if name.split("-")[1] == "2p" else 1
    model_dir = work / "runs" / name
    cache_name = name.removesuffix(BUCKETS_OFF)
    command = [
        sys.executable,
        "-m",
        "distil",
        "train",
        "--algorithm",
        args.algorithm,
        "--task",
        "SST-2",
        "--teacher_model",
        str(work / "teacher"),
        "--student_model",
        str(work / "student"),
        "--data_root",
        str(work / "data"),
        "--model_save_dir",
        str(model_dir),
        "--epochs",
        str(args.epochs),
        "--batch_size",
        str(32 // processes),
        "--eval_batch_size",
        "32",
        "--learning_rate",
        "1e-4",
        "--temperature",
        "1",
        "--log_every",
        "5",
        "--device",
        "cpu",
        "--overwrite",
        "--length_buckets",
        "auto" if cache_name == name else "off",
        *ALGORITHM_FLAGS[args.algorithm],
    ]
    cache = [mode for end, mode in CACHE_MODE.items() if cache_name.endswith(end)]
    command += ["--teacher_cache", cache[0]] if cache else []
    if processes > 1:
        command += ["--nproc_per_node", str(processes), "--master_port", str(free_port())]
    figures = measured(command, work / f"{name}.log")
    history = json.loads((model_dir / "train_history.json").read_text())["epochs"]
    return {
        **figures,
        "processes": processes,
        "epoch_seconds": [e["seconds"] for e in history],
        "dev_accuracy": [e["metrics"]["accuracy"] for e in history],
    }


def theirs(work: Path, name: str, args: argparse.Namespace) -> dict[str, object]:
    out = work / "runs" / name
    command = [
        args.torch_python,
        str(ROOT / "bench" / "torch_finetune.py"),
        "tinybert" if args.algorithm == "tinybert" else THEIRS[name],
        "--model",
        str(work / "student_hf"),
        "--teacher",
        str(work / "teacher_hf"),
        "--data",
        str(work / "glue" / "SST-2"),
        "--out",
        str(out),
        "--seq",
        str(args.seq),
        "--batch",
        "32",
        "--epochs",
        str(args.epochs),
        "--lr",
        "1e-4",
        "--alpha",
        "0.5",
        "--temperature",
        "1",
    ]
    figures = measured(command, work / f"{name}.log")
    history = json.loads((out / "result.json").read_text())["history"]
    return {
        **figures,
        "processes": 1,
        "epoch_seconds": [e["seconds"] for e in history],
        "dev_accuracy": [e["accuracy"] for e in history],
    }


def teacher_evaluation(work: Path) -> dict[str, object]:
    """`python -m distil eval` of the teacher on the dev split (batch 32): its peak RSS and examples/s."""
    out = work / "eval"
    figures = measured(
        [
            sys.executable,
            "-m",
            "distil",
            "eval",
            str(work / "teacher"),
            "--data_root",
            str(work / "data"),
            "--eval_batch_size",
            "32",
            "--result_dir",
            str(out),
            "--device",
            "cpu",
        ],
        work / "eval.log",
    )
    results = json.loads((out / "results_eval.json").read_text())
    return {**figures, "examples_per_s": results["examples_per_second"], "num_examples": results["num_examples"]}


def table(figures: dict[str, dict[str, object]], examples: int, epochs: int) -> str:
    lines = [
        f"{'run':18s} {'epoch 1 s':>9s} {'later s':>8s} {'1st/later':>9s} {'whole run s':>11s} "
        f"{'examples/s':>10s} {'peak RSS GB':>11s}"
    ]
    for name, f in figures.items():
        later = f["epoch_seconds"][1:]
        mean_later = sum(later) / len(later) if later else float("nan")
        lines.append(
            f"{name:18s} {f['epoch_seconds'][0]:>9.1f} {mean_later:>8.1f} "
            f"{f['epoch_seconds'][0] / mean_later:>8.1f}x {f['wall_seconds']:>11.1f} "
            f"{examples * epochs / f['wall_seconds']:>10.1f} {f['peak_rss_gb']:>11.2f}"
        )
    for reference in ("textbrewer", "pytorch-dynamic"):
        if reference in figures:
            wall, rss = figures[reference]["wall_seconds"], figures[reference]["peak_rss_gb"]
            lines.append(f"whole run, this one's time / {reference}'s (< 1: faster than {reference}):")
            lines += [
                f"  {name:18s} {f['wall_seconds'] / wall:>6.2f}x   peak RSS {f['peak_rss_gb'] / rss:.2f}x"
                for name, f in figures.items()
                if name != reference
            ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    sizes = lambda text: tuple(int(v) for v in text.split(","))  # noqa: E731
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--teacher", type=sizes, default=(12, 768, 12, 3072), help="layers,hidden,heads,ffn")
    p.add_argument("--student", type=sizes, default=(4, 312, 12, 1200), help="layers,hidden,heads,ffn")
    p.add_argument(
        "--algorithm",
        choices=sorted(ALGORITHM_FLAGS),
        default="kd",
        help="tinybert: one-stage TinyBERT (attention + hidden states + soft labels), textbrewer only",
    )
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--train_size", type=int, default=192)
    p.add_argument("--dev_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--runs", default=",".join((*OURS, *THEIRS)), help=f"any of {', '.join((*OURS, *THEIRS))}")
    p.add_argument("--real_corpus", type=Path, help="the real corpus's folder (as bench/real_data.py's --work)")
    p.add_argument(
        "--torch-python",
        dest="torch_python",
        default=os.environ.get("TORCH_PYTHON", "/work/torchref/bin/python"),
        help="the reference venv's python; the PyTorch runs are skipped if it is absent",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI: " + str(QUICK))
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results_kd.json")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    unknown = set(args.runs.split(",")) - {*OURS, *THEIRS}
    if unknown:
        p.error(f"--runs: unknown {sorted(unknown)}")
    if args.algorithm == "tinybert" and set(args.runs.split(",")) & {"pytorch-loop", "pytorch-dynamic"}:
        p.error("--algorithm tinybert: the PyTorch side is textbrewer only (its GeneralDistiller)")
    return args


def versions(torch_python: str) -> dict[str, str]:
    import oneflow

    found = {"python": platform.python_version(), "oneflow": oneflow.__version__}
    if Path(torch_python).is_file():
        probe = subprocess.run(
            [
                torch_python,
                "-c",
                "import json, torch, transformers, textbrewer; print(json.dumps("
                "{'torch': torch.__version__, 'transformers': transformers.__version__, "
                "'textbrewer': textbrewer.__version__, 'torch_threads': torch.get_num_threads()}))",
            ],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0:
            found.update(json.loads(probe.stdout))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now()
    runs = args.runs.split(",")
    torch_available = Path(args.torch_python).is_file() and not args.quick
    figures: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_kd_") as tmp:
        work = Path(tmp)
        prepare(work, args)
        for name in runs:
            if name in THEIRS and not torch_available:
                continue
            begun = time.time()
            figures[name] = (ours if name in OURS else theirs)(work, name, args)
            print(f"{name}: {time.time() - begun:.0f} s", file=sys.stderr, flush=True)
        evaluation = teacher_evaluation(work)
    output = {
        "benchmark": "bench/bench_kd.py",
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "versions": versions(args.torch_python),
        "flags": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "figures": figures,
        "teacher_evaluation": evaluation,
    }
    write_json_atomic(args.output, output)
    print(
        f"{'QUICK run: tiny sizes. ' if args.quick else ''}{args.algorithm}, teacher {args.teacher}, student {args.student} "
        f"(layers, hidden, heads, FFN), {args.train_size} examples, seq {args.seq}, global batch 32, "
        f"{args.epochs} epochs, {os.cpu_count()} CPUs; {json.dumps(output['versions'])}"
    )
    print(table(figures, args.train_size, args.epochs))
    print(
        f"teacher evaluation (python -m distil eval, batch 32, seq {args.seq}): {evaluation['examples_per_s']} "
        f"examples/s, peak RSS {evaluation['peak_rss_gb']:.2f} GB"
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
