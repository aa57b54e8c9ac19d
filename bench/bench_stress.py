"""How often OneFlow 0.9 kills a process, with a CPU hog beside it: crashes per hundred runs (issue 22).

Each workload is a fresh process, run again and again, while `--hogs` busy loops (`yes`) take CPU away from
it, as other jobs on a shared machine do:
- `dataset`: `pytest tests/test_dataset.py` (reader graphs, eager readers, evaluation passes: where the suite
  died with rc 139);
- `tinybert`: `python -m distil train --algorithm tinybert --tinybert_mode two_stage` on a tiny task, with
  `--max_restarts 0` (training, evaluation, then a second stage in one process: where test_students died);
- `graph_loop`: one process running a reader-only nn.Graph `--graph-runs` times; it also reports how many of
  those runs ended before OneFlow recorded them as running (the race distil/lazy_job_queue.cpp absorbs).
A crash is a run that ended from a signal (pytest: status 139/134; distil: "died from SIG..."). `--fix off`
runs OneFlow's own queue (DISTIL_LAZY_JOB_FIX=off), the "before".

Usage: bash scripts/run_bench.sh stress --runs 100 [--workloads dataset,tinybert]
       [--fix on|off] [--hogs N] [--output bench/results_stress.json]
   or: PYTHONPATH=src .venv/bin/python bench/bench_stress.py ...
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from distil.data.convert import DEFAULT_VOCAB, ConvertConfig, convert_task  # noqa: E402
from distil.fileio import write_json_atomic  # noqa: E402
from distil.models import io  # noqa: E402
from glue_fixtures import write_learnable_sst2  # noqa: E402

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
}
STUDENT = [
    "--student_num_hidden_layers",
    "1",
    "--student_hidden_size",
    "16",
    "--student_num_attention_heads",
    "4",
    "--student_intermediate_size",
    "24",
]
DIED = re.compile(r"died from (SIG[A-Z]+)")
GRAPH_LOOP = """
import json, sys
from distil import native
from distil.data.dataset import OFRecordDataset
from distil.runtime import import_oneflow
flow = import_oneflow()
data = OFRecordDataset(sys.argv[1], 8)
class Read(flow.nn.Graph):
    def __init__(self):
        super().__init__()
        self.data = data
    def build(self):
        return self.data()
graph, fix = Read(), native.fix_lazy_job_queue()
for _ in range(int(sys.argv[2])):
    graph()["input_ids"].numpy()
print(json.dumps({"early_pops": fix.distil_lazy_job_early_pops() if fix else None}))
"""


def prepare(work: Path) -> None:
    """A learnable SST-2 (640 train, 160 dev, seq 32) and a tiny teacher fine-tuned on it."""
    write_learnable_sst2(work / "glue", 640, 160)
    convert_task(
        "SST-2",
        ConvertConfig(work / "glue", work / "data", DEFAULT_VOCAB, max_seq_length=32, lstm_seq_length=0, workers=1),
    )
    io.init_bert(work / "pretrained", DEFAULT_VOCAB, TINY, seed=0)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distil",
            "train",
            "--algorithm",
            "teacher",
            "--pretrained_model",
            str(work / "pretrained"),
            "--data_root",
            str(work / "data"),
            "--model_save_dir",
            str(work / "teacher"),
            "--epochs",
            "3",
            "--learning_rate",
            "2e-3",
            "--batch_size",
            "16",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=environment({}),
    )
    if done.returncode:
        raise SystemExit(f"preparing the teacher failed:\n{done.stderr[-3000:]}")


def environment(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), **extra}


def workloads(work: Path, graph_runs: int) -> dict[str, Callable[[int], list[str]]]:
    """The command of each workload's k-th run."""
    return {
        "dataset": lambda k: [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
            str(ROOT / "tests" / "test_dataset.py"),
        ],
        "tinybert": lambda k: [
            sys.executable,
            "-m",
            "distil",
            "train",
            "--algorithm",
            "tinybert",
            "--task",
            "SST-2",
            "--tinybert_mode",
            "two_stage",
            "--teacher_model",
            str(work / "teacher"),
            "--data_root",
            str(work / "data"),
            "--model_save_dir",
            str(work / f"tinybert-{k}"),
            "--epochs",
            "2",
            "--intermediate_epochs",
            "2",
            "--learning_rate",
            "2e-3",
            "--intermediate_learning_rate",
            "2e-3",
            "--batch_size",
            "16",
            "--device",
            "cpu",
            "--max_restarts",
            "0",
            *STUDENT,
        ],
        "graph_loop": lambda k: [
            sys.executable,
            "-c",
            GRAPH_LOOP,
            str(work / "data" / "SST-2" / "train"),
            str(graph_runs),
        ],
    }


def classify(done: subprocess.CompletedProcess) -> str:
    """ok, failed (a non-zero status that is no crash) or the signal that killed the run."""
    died = DIED.search(done.stderr)
    if died:
        return died.group(1)
    if done.returncode < 0:
        return f"SIG{-done.returncode}"
    if done.returncode in (134, 139):
        return {134: "SIGABRT", 139: "SIGSEGV"}[done.returncode]
    return "ok" if done.returncode == 0 else "failed"


def stress(name: str, command: Callable[[int], list[str]], runs: int, env: dict[str, str], timeout: float) -> dict:
    outcomes: collections.Counter = collections.Counter()
    early_pops, seconds, failures = 0, [], []
    for k in range(runs):
        start = time.perf_counter()
        try:
            done = subprocess.run(command(k), capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            outcomes["timeout"] += 1
            continue
        seconds.append(time.perf_counter() - start)
        outcome = classify(done)
        outcomes[outcome] += 1
        if outcome != "ok":
            failures.append({"run": k, "outcome": outcome, "stderr_tail": done.stderr[-1500:]})
        if name == "graph_loop" and outcome == "ok":
            early_pops += json.loads(done.stdout.strip().splitlines()[-1])["early_pops"] or 0
        crashes = sum(v for o, v in outcomes.items() if o.startswith("SIG"))
        print(f"{name} {k + 1}/{runs}: {outcome} ({crashes} crashes so far)", file=sys.stderr, flush=True)
    crashes = sum(v for o, v in outcomes.items() if o.startswith("SIG"))
    result = {
        "runs": runs,
        "crashes": crashes,
        "crashes_per_100": round(100 * crashes / runs, 2),
        "outcomes": dict(outcomes),
        "median_seconds": round(sorted(seconds)[len(seconds) // 2], 1) if seconds else None,
        "failures": failures[:5],
    }
    if name == "graph_loop":
        result["runs_that_ended_before_they_were_recorded"] = early_pops
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="runs of each workload")
    parser.add_argument("--workloads", default="dataset,tinybert,graph_loop")
    parser.add_argument("--fix", choices=("on", "off"), default="on", help="the lazy-job queue fix (distil.native)")
    parser.add_argument(
        "--hogs", type=int, default=os.cpu_count() or 1, help="busy loops beside the runs (default: one per core)"
    )
    parser.add_argument("--graph-runs", type=int, default=2000, help="graph runs per graph_loop process")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a run counts as hung")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results_stress.json")
    args = parser.parse_args()
    env = environment({"DISTIL_LAZY_JOB_FIX": args.fix})
    results: dict = {
        "date": datetime.date.today().isoformat(),
        "fix": args.fix,
        "hogs": args.hogs,
        "cpus": os.cpu_count(),
        "workloads": {},
    }
    hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(args.hogs)]
    try:
        with tempfile.TemporaryDirectory(prefix="distil-stress-") as tmp:
            prepare(Path(tmp))
            commands = workloads(Path(tmp), args.graph_runs)
            for name in args.workloads.split(","):
                results["workloads"][name] = stress(name, commands[name], args.runs, env, args.timeout)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    write_json_atomic(args.output, results)
    print(json.dumps({k: v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
