"""Serving under load: the 4L-312 student behind `python -m distil serve` (dynamic batching, onnxruntime, FP32
and INT8) against (a) offline onnxruntime on the same file at batch 32 and (b) the same weights in PyTorch +
transformers behind the same server stack (uvicorn + Starlette) without batching (bench/torch_serve.py, in
the reference venv), one after the other on this machine.

The student: a 4L-312 BERT (FFN 1200) fine-tuned here (`python -m distil train --algorithm teacher`, from random
weights, --train_size examples, 1 epoch, seq --seq) on the real corpus (--real_corpus DIR, as bench_kd.py) or on
generated SST-2-shaped sentences, then `export-onnx --quantize int8` (which reports FP32 and INT8 dev accuracy).
The load: --concurrency clients (threads with keep-alive HTTP connections on 127.0.0.1), each sending one dev
sentence per JSON infer request, --requests requests in all per level (bounded; each request times out after 60 s).
Reported per server and concurrency: requests/s (= examples/s), p50 and p99 latency; offline: examples/s at
batch 32 (the dev set sorted by length, batches cut to their longest member, as `predict` runs it), the same
in arrival order (consecutive 32, one call each) for context, and the p50 of bare one-example `session.run`s
(the first 200 dev sentences, each at its own length, as the load sends them).

Usage: bash scripts/run_bench.sh serve [--real_corpus DIR] [--requests 400] [--concurrency 1,8,32] [--quick]
   or: PYTHONPATH=src .venv/bin/python bench/bench_serve.py ...
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_convert import write_sst2  # noqa: E402
from bench_processes import free_port  # noqa: E402
from distil.data.convert import DEFAULT_VOCAB, ConvertConfig, convert_task  # noqa: E402
from distil.fileio import write_json_atomic  # noqa: E402
from real_data import export_hf, prepare_corpus  # noqa: E402

STUDENT = {
    "hidden_size": 312,
    "num_hidden_layers": 4,
    "num_attention_heads": 12,
    "intermediate_size": 1200,
    "max_position_embeddings": 512,
}
QUICK = {
    "student": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
    },
    "seq": 32,
    "train_size": 64,
    "dev_size": 32,
    "requests": 40,
    "concurrency": "1,4",
}
MODEL_ID = "student"


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def train_student(work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, object]]:
    """The fine-tuned student's model dir (work/student) with model.onnx and, unless refused, model.int8.onnx;
    the INT8 export's report (dev accuracy FP32 and INT8, sizes)."""
    from distil.models import io

    if args.real_corpus:
        corpus = prepare_corpus(args.real_corpus, args.train_size, args.dev_size)
        (work / "glue").mkdir(parents=True)
        os.symlink(corpus, work / "glue" / "SST-2")
    else:
        write_sst2(work / "glue", args.train_size, args.dev_size, 0)
    convert_task(
        "SST-2",
        ConvertConfig(
            work / "glue", work / "data", DEFAULT_VOCAB, max_seq_length=args.seq, lstm_seq_length=0, workers=1
        ),
    )
    io.init_bert(work / "init", DEFAULT_VOCAB, args.student_sizes)
    student = work / MODEL_ID
    subprocess.run(
        [
            sys.executable,
            "-m",
            "distil",
            "train",
            "--algorithm",
            "teacher",
            "--task",
            "SST-2",
            "--pretrained_model",
            str(work / "init"),
            "--data_root",
            str(work / "data"),
            "--model_save_dir",
            str(student),
            "--epochs",
            "1",
            "--batch_size",
            "32",
            "--learning_rate",
            "1e-4",
            "--device",
            "cpu",
        ],
        check=True,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=open(work / "train.log", "w"),
    )
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "distil",
            "export-onnx",
            str(student),
            "--quantize",
            "int8",
            "--data_root",
            str(work / "data"),
        ],
        env=env(),
        capture_output=True,
        text=True,
    )
    if export.returncode:  # the INT8 file was refused (or the export failed): FP32 only, said so
        print(f"export-onnx --quantize int8: {export.stderr.strip().splitlines()[-1]}", file=sys.stderr)
        return student, {"refused": export.stderr.strip().splitlines()[-1]}
    return student, json.loads(export.stdout)["int8"]


def dev_texts(work: Path) -> list[str]:
    lines = (work / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines]


def offline(student: Path, onnx_file: Path, texts: list[str], repeats: int) -> dict[str, float]:
    """onnxruntime in-process on the file: examples/s at batch 32 (the whole dev set sorted by length, batches
    cut), the same in arrival order (each batch of 32 dev examples cut to its longest, one call: what a server
    meets) and the p50 of bare one-example calls on the first 200 dev sentences, each at its own length."""
    from distil.models import io
    from distil.predict import Featurizer, Line, OnnxEngine, logits_by_length

    engine = OnnxEngine(onnx_file)
    features = Featurizer(student, io.read_config(student))([Line("-", i, t, None) for i, t in enumerate(texts)])
    passes = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        logits_by_length(engine, features, 32, engine.cuts, lambda n: None)
        passes.append(time.perf_counter() - start)
    arrival = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for first in range(0, len(texts), 32):
            logits_by_length(
                engine,
                {k: v[first : first + 32] for k, v in features.items()},
                32,
                engine.cuts,
                lambda n: None,
                call_cost=None,
            )
        arrival.append(time.perf_counter() - start)
    calls = []  # one call per request the load sends: each dev sentence alone, at its own length
    for i in range(min(len(texts), 201)):
        one = {k: v[i : i + 1, : int(features["input_mask"][i].sum())] for k, v in features.items()}
        start = time.perf_counter()
        engine(one)
        calls.append(time.perf_counter() - start)
    return {
        "examples_per_s": len(texts) / statistics.median(passes[1:]),
        "arrival_order_examples_per_s": len(texts) / statistics.median(arrival[1:]),
        "bare_call_p50_ms": 1000 * statistics.median(calls[1:]),
    }


class Server:
    """A server process on a free port of 127.0.0.1: started, waited for (bounded), always stopped."""

    def __init__(self, command_for: Callable[[int], list[str]], log: Path):
        self.port = free_port()
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            command_for(self.port), env=env(), stdout=self.log, stderr=self.log, start_new_session=True
        )

    def __enter__(self) -> Server:
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited ({self.process.returncode}); see {self.log.name}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/v2/health/ready")
                if connection.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise SystemExit(f"the server was not ready within 180 s; see {self.log.name}")

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def load(port: int, texts: list[str], concurrency: int, requests: int) -> dict[str, float]:
    """`requests` JSON infer requests of one sentence each from `concurrency` client threads: requests/s and
    latency percentiles; an error or a wrong answer stops the benchmark."""
    per_client = max(1, requests // concurrency)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for k in range(per_client):
            text = texts[(index * per_client + k) % len(texts)]
            body = json.dumps(
                {"id": str(k), "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
            )
            start = time.perf_counter()
            connection.request("POST", f"/v2/models/{MODEL_ID}/infer", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200 or b"probabilities" not in answer:
                with lock:
                    failures.append(f"{response.status}: {answer[:200]!r}")
                return
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} failed requests, e.g. {failures[0]}")
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "requests": len(latencies),
    }


def run_levels(server: Server, texts: list[str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    top = max(args.levels)
    load(server.port, texts, top, 4 * top)  # warm-up: onnxruntime's first calls at new shapes allocate
    return {str(c): load(server.port, texts, c, args.requests) for c in args.levels}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real_corpus", type=Path, help="the real corpus's folder (as bench_kd.py's)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--train_size", type=int, default=1280)
    p.add_argument("--dev_size", type=int, default=512)
    p.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--repeats", type=int, default=5, help="offline passes over the dev set")
    p.add_argument(
        "--torch-python", dest="torch_python", default=os.environ.get("TORCH_PYTHON", "/work/torchref/bin/python")
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI: " + str(QUICK))
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results_serve.json")
    args = p.parse_args()
    args.student_sizes = STUDENT
    if args.quick:
        args.student_sizes = QUICK["student"]
        for key in ("seq", "train_size", "dev_size", "requests", "concurrency"):
            setattr(args, key, QUICK[key])
    args.levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        work = Path(tmp)
        student, results["int8_export"] = train_student(work, args)
        texts = dev_texts(work)
        for precision in ["fp32"] + (["int8"] if (student / "model.int8.onnx").is_file() else []):
            onnx_file = student / ("model.int8.onnx" if precision == "int8" else "model.onnx")
            results[f"offline-{precision}"] = offline(student, onnx_file, texts, args.repeats)
            ours = [sys.executable, "-m", "distil", "serve", str(student), "--precision", precision]
            with Server(lambda port: [*ours, "--port", str(port)], work / f"serve-{precision}.log") as server:
                results[f"served-{precision}"] = run_levels(server, texts, args)
        if Path(args.torch_python).is_file() and not args.quick:
            folder = export_hf(student, work / "student_hf")
            theirs = [args.torch_python, str(ROOT / "bench" / "torch_serve.py"), str(folder), MODEL_ID]
            with Server(lambda port: [*theirs, str(port), str(args.seq)], work / "torch.log") as server:
                results["pytorch-served-fp32"] = run_levels(server, texts, args)
    report(results, args)


def report(results: dict[str, object], args: argparse.Namespace) -> None:
    """Print the table and the targets' ratios; write --output."""
    print(
        f"serving the student {args.student_sizes} at seq {args.seq}, {args.requests} requests per level, "
        f"{os.cpu_count()} CPUs; INT8 export: {json.dumps(results['int8_export'])}"
    )
    print(f"{'server':22s} {'concurrency':>11s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, levels in results.items():
        if name.startswith(("served", "pytorch")):
            for level, figures in levels.items():
                print(
                    f"{name:22s} {level:>11s} {figures['requests_per_s']:8.1f} {figures['p50_ms']:8.1f} "
                    f"{figures['p99_ms']:8.1f}"
                )
    top = str(max(args.levels))
    for precision in ("fp32", "int8"):
        if f"served-{precision}" in results:
            off, served = results[f"offline-{precision}"], results[f"served-{precision}"]
            print(
                f"{precision}: offline onnxruntime {off['examples_per_s']:.1f} examples/s at batch 32 "
                f"({off['arrival_order_examples_per_s']:.1f} in arrival order), bare call p50 "
                f"{off['bare_call_p50_ms']:.2f} ms; served at concurrency {top} / offline "
                f"{served[top]['requests_per_s'] / off['examples_per_s']:.2f}x (target >= 0.8); p50 at concurrency "
                f"1 - bare call {served['1']['p50_ms'] - off['bare_call_p50_ms']:+.2f} ms (target <= +3)"
            )
    if "served-int8" in results:
        ratio = results["served-int8"][top]["requests_per_s"] / results["served-fp32"][top]["requests_per_s"]
        print(f"INT8 / FP32 served throughput at concurrency {top}: {ratio:.2f}x (target >= 1.5)")
    if "pytorch-served-fp32" in results:
        for level in map(str, args.levels):
            ours, theirs = results["served-fp32"][level], results["pytorch-served-fp32"][level]
            print(
                f"concurrency {level}: ours / PyTorch served {ours['requests_per_s'] / theirs['requests_per_s']:.2f}x"
                f" throughput, p50 {ours['p50_ms']:.1f} vs {theirs['p50_ms']:.1f} ms"
            )
    write_json_atomic(
        args.output,
        {
            "benchmark": "serve",
            "started": datetime.datetime.now().isoformat(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "quick": args.quick,
            "flags": {k: v for k, v in vars(args).items() if isinstance(v, (int, str, bool, list))},
            "figures": results,
        },
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
