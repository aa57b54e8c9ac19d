"""The benchmark suite in one command: conversion, OFRecord reader, training steps, inference, memory.

Measures, on synthetic data of the real shapes:
- GLUE -> OFRecord conversion examples/s (a synthetic SST-2-like task, BERT + LSTM variants);
- OFRecord reader examples/s, eager and inside an nn.Graph, on the converted BERT data, next to
  the examples/s a student training step consumes at the same batch size;
- training step seconds, eager vs nn.Graph (AdamW, clipping, fused updates), teacher and student;
- eval nn.Graph inference examples/s of the teacher and of each student architecture
  (KD/TinyBERT, BERT-PKD/Theseus, Distilled-BiLSTM) and their speed-ups over the teacher;
- peak RSS (getrusage) of the process of each section, and the largest of them.
Each section (data, student training, teacher training, teacher inference, student inference)
runs in a fresh process: OneFlow keeps the memory of a graph until the process ends (an eval
graph of BERT-base at batch 32 holds ~10 GB on CPU), so one process for all would not fit in RAM,
and each peak RSS then belongs to one workload. Every figure is the median of --repeats runs after
--warmup untimed runs; each run starts and ends with a full sync (an nn.Graph returns its loss
before its update has finished). Graphs are compiled by a separate first call whose time is
recorded beside the figure. The defaults are the real configurations (about 5 minutes on this
2-core CPU); flags shrink sizes, and --quick shrinks all of them for CI (seconds; recorded
in the JSON, whose figures then describe nothing real). Writes --output (default
bench/results.json) atomically and prints a table, one row per figure.

Usage: bash scripts/run_bench.sh [flags]
   or: PYTHONPATH=src .venv/bin/python bench/run_all.py [--quick] [--repeats 5] [--warmup 1] ...
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bert import ForwardGraph, StepGraph, inputs as bert_inputs
from bench_convert import write_sst2
from bench_lstm import EvalGraph as LstmEvalGraph, make_batch
from distil.data.convert import DEFAULT_VOCAB, ConvertConfig, convert_task
from distil.data.dataset import OFRecordDataset
from distil.fileio import write_json_atomic
from distil.models.bert import BertConfig, BertForSequenceClassification
from distil.models.lstm import BiLstmForSequenceClassification, LstmConfig
from distil.runtime import exit_now, import_oneflow
from distil.train.graph import MODEL_INPUTS
from distil.train.optim import build_optimizer

flow = import_oneflow()
# waits for all queued work, a train graph's backward and update included
full_sync = flow._oneflow_internal.eager.Sync

ROOT = Path(__file__).resolve().parents[1]
SST2_DEV, SST2_TEST = 872, 1821
QUICK = {
    "batch": 4,
    "seq": 16,
    "teacher_batch": 2,
    "teacher_layers": 2,
    "teacher_hidden": 64,
    "teacher_heads": 2,
    "teacher_ffn": 128,
    "student_layers": 1,
    "student_hidden": 32,
    "student_heads": 2,
    "student_ffn": 64,
    "pkd_layers": 1,
    "lstm_seq": 8,
    "lstm_vocab": 102,
    "lstm_embedding": 16,
    "lstm_hidden": 16,
    "lstm_fc": 16,
    "convert_examples": 256,
    "reader_batches": 2,
    "repeats": 1,
    "warmup": 0,
    "teacher_repeats": 1,
}


@dataclasses.dataclass
class Figure:
    """One row of the table: a median value, and the per-run seconds it came from."""

    label: str
    value: float
    unit: str
    runs_s: list[float] = dataclasses.field(default_factory=list)
    details: dict[str, object] = dataclasses.field(default_factory=dict)


Figures = dict[str, Figure]


# ---------------------------------------------------------------- timing


def log(message: str) -> None:
    print(f"[run_all {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed_s(run: Callable[[], object]) -> float:
    """Seconds of one run between two full syncs."""
    full_sync()
    start = time.perf_counter()
    run()
    full_sync()
    return time.perf_counter() - start


def timed_runs(run: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` synced runs after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    return [timed_s(run) for _ in range(repeats)]


def throughput(label: str, examples: int, runs: list[float], **details: object) -> Figure:
    return Figure(label, examples / statistics.median(runs), "examples/s", runs, dict(details))


def seconds(label: str, runs: list[float], **details: object) -> Figure:
    return Figure(label, statistics.median(runs), "s", runs, dict(details))


def ratio(label: str, numerator: Figure, denominator: Figure) -> Figure:
    return Figure(label, numerator.value / denominator.value, "x")


# ---------------------------------------------------------------- conversion and reader


def conversion(args: argparse.Namespace, workdir: Path) -> Figures:
    """convert_task on a synthetic SST-2 (all splits, BERT + LSTM data, one worker per core)."""
    write_sst2(workdir / "glue", args.convert_examples, SST2_DEV, SST2_TEST)
    config = ConvertConfig(
        workdir / "glue", workdir / "ofrecord", DEFAULT_VOCAB, max_seq_length=args.seq, lstm_seq_length=args.lstm_seq
    )
    examples = args.convert_examples + SST2_DEV + SST2_TEST
    runs = timed_runs(lambda: convert_task("SST-2", config), args.warmup, args.repeats)
    label = f"conversion, SST-2-like {examples:,} sentences (BERT {args.seq} + LSTM {args.lstm_seq})"
    return {"convert_examples_per_s": throughput(label, examples, runs, workers=os.cpu_count())}


class ReaderGraph(flow.nn.Graph):
    def __init__(self, data: OFRecordDataset):
        super().__init__()
        self.data = data

    def build(self) -> dict[str, flow.Tensor]:
        return self.data()


def read_batches(next_batch: Callable[[], dict[str, flow.Tensor]], batches: int) -> None:
    for _ in range(batches):
        for tensor in next_batch().values():
            tensor.numpy()


def reader(args: argparse.Namespace, split_dir: Path) -> Figures:
    """The training reader (shuffled, model inputs + labels), eager and in an nn.Graph."""

    def dataset() -> OFRecordDataset:
        return OFRecordDataset(split_dir, args.batch, shuffle=True, seed=0, features=(*MODEL_INPUTS, "label_ids"))

    eager = dataset()
    graph = ReaderGraph(dataset())
    compile_s = timed_s(graph)
    examples = args.batch * args.reader_batches
    size = f"batch {args.batch}, seq {args.seq}"
    return {
        "reader_eager_examples_per_s": throughput(
            f"OFRecord reader, eager ({size})",
            examples,
            timed_runs(lambda: read_batches(eager, args.reader_batches), args.warmup, args.repeats),
        ),
        "reader_graph_examples_per_s": throughput(
            f"OFRecord reader, nn.Graph ({size})",
            examples,
            timed_runs(lambda: read_batches(graph, args.reader_batches), args.warmup, args.repeats),
            compile_s=compile_s,
        ),
    }


def data_section(args: argparse.Namespace) -> Figures:
    """Conversion, then the reader on the converted BERT train split."""
    with tempfile.TemporaryDirectory(prefix="distil-bench-") as tmp:
        log(f"conversion: {args.convert_examples:,} train sentences")
        figures = conversion(args, Path(tmp))
        log("OFRecord reader")
        figures.update(reader(args, Path(tmp) / "ofrecord" / "SST-2" / "train"))
    return figures


def consumption(figures: Figures, args: argparse.Namespace) -> Figures:
    """What a student nn.Graph training step consumes, and how many times faster the graph reader delivers."""
    consumed = Figure(
        f"training consumption, {bert_name(student_config(args))} nn.Graph step (batch {args.batch})",
        args.batch / figures["train_student_graph_step_s"].value,
        "examples/s",
    )
    return {
        "train_consumption_examples_per_s": consumed,
        "reader_headroom": ratio(
            "reader nn.Graph / training consumption", figures["reader_graph_examples_per_s"], consumed
        ),
    }


# ---------------------------------------------------------------- BERT and BiLSTM models


def bert_config(layers: int, hidden: int, heads: int, ffn: int) -> BertConfig:
    return BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn)


def teacher_config(args: argparse.Namespace) -> BertConfig:
    return bert_config(args.teacher_layers, args.teacher_hidden, args.teacher_heads, args.teacher_ffn)


def student_config(args: argparse.Namespace) -> BertConfig:
    """The KD/TinyBERT student."""
    return bert_config(args.student_layers, args.student_hidden, args.student_heads, args.student_ffn)


def pkd_config(args: argparse.Namespace) -> BertConfig:
    """The BERT-PKD/Theseus student: fewer layers of the teacher's width."""
    return bert_config(args.pkd_layers, args.teacher_hidden, args.teacher_heads, args.teacher_ffn)


def lstm_config(args: argparse.Namespace) -> LstmConfig:
    return LstmConfig(
        vocab_size=args.lstm_vocab,
        pad_token_id=args.lstm_vocab - 1,
        embedding_size=args.lstm_embedding,
        hidden_size=args.lstm_hidden,
        fc_size=args.lstm_fc,
    )


def bert_name(config: BertConfig) -> str:
    return f"{config.num_hidden_layers}L-{config.hidden_size}"


def model_names(args: argparse.Namespace) -> dict[str, str]:
    """Table names of the inference models, by figure key."""
    student = student_config(args)
    return {
        "teacher": f"teacher {bert_name(teacher_config(args))}",
        "kd_tinybert": f"KD/TinyBERT {bert_name(student)} (FFN {student.intermediate_size})",
        "pkd_theseus": f"BERT-PKD/Theseus {bert_name(pkd_config(args))}",
        "bilstm": f"Distilled-BiLSTM {args.lstm_embedding}/{args.lstm_hidden}/{args.lstm_fc}",
    }


def cross_entropy(logits: flow.Tensor, labels: flow.Tensor) -> flow.Tensor:
    return flow.nn.functional.cross_entropy(logits, labels.reshape(-1).to(flow.int64))


def graph_step(config: BertConfig, batch: Sequence[flow.Tensor]) -> Callable[[], object]:
    """A compiled nn.Graph training step (as distil.train.graph.TrainGraph configures it)."""
    model = BertForSequenceClassification(config).train()
    optimizer, schedule = build_optimizer(model.named_parameters(), 1e-4, 0.01, 1000)
    graph = StepGraph(model, optimizer, schedule)
    graph.config.allow_fuse_model_update_ops(True)
    graph.config.allow_fuse_add_to_output(True)
    return lambda: graph(*batch).numpy()


def eager_step(config: BertConfig, batch: Sequence[flow.Tensor]) -> Callable[[], object]:
    """The same step eagerly: forward, backward, clipping, AdamW, zero_grad."""
    model = BertForSequenceClassification(config).train()
    optimizer, _ = build_optimizer(model.named_parameters(), 1e-4, 0.01, 1000)
    ids, segments, mask, labels = batch

    def step() -> object:
        loss = cross_entropy(model(ids, segments, mask)["logits"], labels)
        loss.backward()
        optimizer.clip_grad()
        optimizer.step()
        optimizer.zero_grad()
        return loss.numpy()

    return step


def train_steps(key: str, role: str, config: BertConfig, batch: int, seq: int, warmup: int, repeats: int) -> Figures:
    """Seconds per training step (AdamW, clip 1.0), eager and nn.Graph; each run ends with a full sync."""
    data = bert_inputs(batch, seq)
    name = f"{role} {bert_name(config)}"
    eager_runs = timed_runs(eager_step(config, data), warmup, repeats)
    step = graph_step(config, data)
    compile_s = timed_s(step)
    graph_runs = timed_runs(step, warmup, repeats)
    return {
        f"train_{key}_eager_step_s": seconds(f"train step {name}, eager (batch {batch})", eager_runs),
        f"train_{key}_graph_step_s": seconds(
            f"train step {name}, nn.Graph (batch {batch})", graph_runs, compile_s=compile_s
        ),
    }


def graph_throughput(
    label: str, graph: flow.nn.Graph, batch: Sequence[flow.Tensor], warmup: int, repeats: int
) -> Figure:
    run = lambda: graph(*batch).numpy()  # noqa: E731
    compile_s = timed_s(run)
    return throughput(label, batch[0].shape[0], timed_runs(run, warmup, repeats), compile_s=compile_s)


def bert_inference(label: str, config: BertConfig, args: argparse.Namespace, repeats: int) -> Figure:
    graph = ForwardGraph(BertForSequenceClassification(config).eval())
    return graph_throughput(
        f"{label} (batch {args.batch}, seq {args.seq})",
        graph,
        bert_inputs(args.batch, args.seq)[:3],
        args.warmup,
        repeats,
    )


def lstm_inference(label: str, config: LstmConfig, args: argparse.Namespace) -> Figure:
    graph = LstmEvalGraph(BiLstmForSequenceClassification(config).eval())
    batch, _ = make_batch(args.batch, args.lstm_seq, config.vocab_size, config.pad_token_id)
    return graph_throughput(
        f"{label} (vocab {config.vocab_size}, batch {args.batch}, seq {args.lstm_seq})",
        graph,
        batch,
        args.warmup,
        args.repeats,
    )


def student_train_section(args: argparse.Namespace) -> Figures:
    log(f"train steps: student {bert_name(student_config(args))}")
    return train_steps("student", "student", student_config(args), args.batch, args.seq, args.warmup, args.repeats)


def teacher_train_section(args: argparse.Namespace) -> Figures:
    log(f"train steps: teacher {bert_name(teacher_config(args))}")
    return train_steps(
        "teacher", "teacher", teacher_config(args), args.teacher_batch, args.seq, args.warmup, args.teacher_repeats
    )


def teacher_inference_section(args: argparse.Namespace) -> Figures:
    name = model_names(args)["teacher"]
    log(f"inference: {name}")
    return {
        "infer_teacher_examples_per_s": bert_inference(
            f"inference {name}", teacher_config(args), args, args.teacher_repeats
        )
    }


def student_inference_section(args: argparse.Namespace) -> Figures:
    """Eval nn.Graph throughput of each student architecture."""
    measures: dict[str, Callable[[str], Figure]] = {
        "kd_tinybert": lambda label: bert_inference(label, student_config(args), args, args.repeats),
        "pkd_theseus": lambda label: bert_inference(label, pkd_config(args), args, args.repeats),
        "bilstm": lambda label: lstm_inference(label, lstm_config(args), args),
    }
    figures: Figures = {}
    for key, measure in measures.items():
        name = model_names(args)[key]
        log(f"inference: {name}")
        figures[f"infer_{key}_examples_per_s"] = measure(f"inference {name}")
    return figures


def speedups(figures: Figures, args: argparse.Namespace) -> Figures:
    teacher = figures["infer_teacher_examples_per_s"]
    return {
        f"speedup_{key}": ratio(f"speed-up {name} over the teacher", figures[f"infer_{key}_examples_per_s"], teacher)
        for key, name in model_names(args).items()
        if key != "teacher"
    }


SECTIONS: dict[str, Callable[[argparse.Namespace], Figures]] = {
    "data": data_section,
    "student_train": student_train_section,
    "teacher_train": teacher_train_section,
    "teacher_inference": teacher_inference_section,
    "student_inference": student_inference_section,
}


# ---------------------------------------------------------------- machine, suite, output


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def process_threads() -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Threads:")), None)
    except OSError:
        return None


def machine() -> dict[str, object]:
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "thread_env": {k: v for k, v in sorted(os.environ.items()) if "THREAD" in k},
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
    }


def peak_rss(section: str) -> Figure:
    """This process's peak RSS; the process ran one section only."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return Figure(
        f"peak RSS, {section.replace('_', ' ')} process",
        kib / 1024,
        "MB",
        details={"process_threads": process_threads()},
    )


def run_section(section: str, args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Runs in a fresh process: one section's figures and the process's peak RSS, as plain dicts."""
    figures = SECTIONS[section](args)
    figures[f"peak_rss_{section}_mb"] = peak_rss(section)
    return {key: dataclasses.asdict(figure) for key, figure in figures.items()}


def in_fresh_process(section: str, args: argparse.Namespace) -> Figures:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        result = pool.submit(run_section, section, args).result()
    return {key: Figure(**values) for key, values in result.items()}


def run_suite(args: argparse.Namespace) -> Figures:
    """Every section in its own process; then the figures derived from several sections, in table order."""
    measured: Figures = {}
    for section in SECTIONS:
        measured.update(in_fresh_process(section, args))
    measured.update(consumption(measured, args))
    measured.update(speedups(measured, args))
    rss = {key: figure for key, figure in measured.items() if key.startswith("peak_rss_")}
    largest = max(rss, key=lambda key: rss[key].value)
    measured["peak_rss_mb"] = Figure(
        "peak RSS, largest section process", rss[largest].value, "MB", details={"figure": largest}
    )
    order = [
        "convert_",
        "reader_eager",
        "reader_graph",
        "train_consumption",
        "reader_headroom",
        "train_teacher",
        "train_student",
        "infer_",
        "speedup_",
        "peak_rss",
    ]
    return {key: measured[key] for prefix in order for key in measured if key.startswith(prefix)}


def format_value(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def table(figures: Figures) -> str:
    width = max(len(f.label) for f in figures.values())
    values = {key: format_value(f.value) for key, f in figures.items()}
    value_width = max(len(v) for v in values.values())
    lines = [f"{'figure':<{width}}  {'value':>{value_width}}  unit", f"{'-' * width}  {'-' * value_width}  ----------"]
    lines += [f"{f.label:<{width}}  {values[key]:>{value_width}}  {f.unit}" for key, f in figures.items()]
    return "\n".join(lines)


def figure_json(figure: Figure) -> dict[str, object]:
    return {
        **dataclasses.asdict(figure),
        "value": round(figure.value, 4),
        "runs_s": [round(t, 4) for t in figure.runs_s],
        "details": {k: round(v, 4) if isinstance(v, float) else v for k, v in figure.details.items()},
    }


def results(
    args: argparse.Namespace,
    figures: Figures,
    started: datetime.datetime,
    elapsed: float,
    machine_info: dict[str, object],
) -> dict[str, object]:
    sizes = (
        "QUICK: every size shrunk for CI (--quick); these figures do not describe the real configurations"
        if args.quick
        else "the flags below; their defaults are the real configurations"
    )
    return {
        "suite": "bench/run_all.py",
        "quick": args.quick,
        "sizes": sizes,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "machine": machine_info,
        "versions": {"python": platform.python_version(), "oneflow": flow.__version__, "numpy": np.__version__},
        "flags": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "figures": {key: figure_json(f) for key, f in figures.items()},
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add = parser.add_argument
    add("--output", type=Path, default=ROOT / "bench" / "results.json", help="results JSON (written atomically)")
    add(
        "--quick",
        action="store_true",
        help="shrink every size for CI (flags given explicitly still win): "
        + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    add("--repeats", type=int, default=5, help="timed runs per figure (the median is reported)")
    add("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    add("--teacher-repeats", type=int, default=3, help="timed runs of the teacher's figures")
    add("--batch", type=int, default=32, help="batch of the reader, the student steps and all inference")
    add("--seq", type=int, default=128, help="BERT sequence length (conversion, reader, steps, inference)")
    add("--teacher-batch", type=int, default=8, help="batch of the teacher's training steps")
    add("--teacher-layers", type=int, default=12)
    add("--teacher-hidden", type=int, default=768)
    add("--teacher-heads", type=int, default=12)
    add("--teacher-ffn", type=int, default=3072)
    add("--student-layers", type=int, default=4, help="KD/TinyBERT student")
    add("--student-hidden", type=int, default=312)
    add("--student-heads", type=int, default=12)
    add("--student-ffn", type=int, default=1200)
    add("--pkd-layers", type=int, default=3, help="BERT-PKD/Theseus student (teacher width)")
    add("--lstm-seq", type=int, default=32, help="Distilled-BiLSTM sequence length (conversion and inference)")
    add("--lstm-vocab", type=int, default=10002)
    add("--lstm-embedding", type=int, default=300)
    add("--lstm-hidden", type=int, default=300)
    add("--lstm-fc", type=int, default=400)
    add(
        "--convert-examples",
        type=int,
        default=20000,
        help=f"train sentences of the synthetic SST-2 (SST-2 has 67,349; dev {SST2_DEV} and test {SST2_TEST} added)",
    )
    add("--reader-batches", type=int, default=100, help="batches read per timed reader run")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    too_small = [
        name
        for name, value in vars(args).items()
        if isinstance(value, int) and not isinstance(value, bool) and value < (0 if name == "warmup" else 1)
    ]
    if too_small:
        parser.error(f"must be positive: {', '.join(too_small)}")
    if args.convert_examples < args.batch:
        parser.error("--convert-examples must be at least --batch (the reader reads the converted train split)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite, write the JSON, print the table; return the exit status (OneFlow may crash at teardown)."""
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help or a usage error: argparse has printed why
        return e.code if isinstance(e.code, int) else 2
    started, start, machine_info = datetime.datetime.now(), time.perf_counter(), machine()
    figures = run_suite(args)
    output = results(args, figures, started, time.perf_counter() - start, machine_info)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output, output)
    print(
        f"{'QUICK run: sizes shrunk, not the real configurations. ' if args.quick else ''}"
        f"{machine_info['cpu_count']} CPUs ({machine_info['cpu_model']}), OneFlow {flow.__version__}, "
        f"medians of {args.repeats} runs ({args.teacher_repeats} for the teacher) after {args.warmup} warm-up, "
        f"{output['seconds']} s"
    )
    print(table(figures))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    try:
        status = main()
    except Exception:  # (report it, then leave through exit_now like every entry point)
        traceback.print_exc()
        status = 1
    exit_now(status)
