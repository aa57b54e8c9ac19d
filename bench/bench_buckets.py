"""Length buckets against full-length batches, side by side in one process, on the real corpus (issue 23).

The real corpus (Rotten Tomatoes snippets, bench/fetch_real_corpus.py) converted by the project's converter at
--seq 128; each part runs `--length_buckets off` and `auto` alternately, a warm-up round (compilations) then
--repeats timed rounds, and reports examples/s of every round, their medians and the ratio auto/off:
  train    KD steps of the 4L-312 student (FFN 1200) reading cached teacher logits, through TrainStream and
           the step runner (TrainGraphs), a round being one regrouping chunk of steps; the cache comes from
           teacher_cache.prepare with a small teacher (a cached step never runs the teacher, so its size
           does not change the step);
  eval     Evaluator of the student on the dev rows;
  teacher  the teacher cache's pass (12L-768, random weights) over the first --teacher_size training rows:
           teacher_cache.teacher_pass with cut=False (off) and cut=True (auto);
  predict  distil.predict.predict with the OneFlow engine on the dev TSV;
  onnx     the same with onnxruntime, only when `export_model` gives the student a symbolic sequence axis.
A shared, noisy machine changes the absolute figures from round to round; the ratio of neighbouring rounds is
the figure. Prints one JSON object.

Usage: bash scripts/run_bench.sh buckets [--parts train,eval,teacher,predict,onnx] [--repeats 3]
   or: PYTHONPATH=src .venv/bin/python bench/bench_buckets.py ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from distil.data import buckets  # noqa: E402
from distil.data.convert import DEFAULT_VOCAB, ConvertConfig, convert_task  # noqa: E402
from distil.data.dataset import OFRecordDataset, TrainStream, open_split  # noqa: E402
from distil.models import io  # noqa: E402
from distil.models.bert import BertConfig  # noqa: E402
from distil.predict import predict  # noqa: E402
from distil.runtime import import_oneflow  # noqa: E402
from distil.train import teacher_cache  # noqa: E402
from distil.train.graph import Evaluator  # noqa: E402
from distil.train.placement import Placement  # noqa: E402
from distil.train.settings import TrainSettings  # noqa: E402
from distil.train.step import DistillStep, hard_label, soft_labels  # noqa: E402
from distil.train.trainer import build_step_runner, seed_everything  # noqa: E402
from real_data import prepare_corpus  # noqa: E402

flow = import_oneflow()
MODES = ("off", "auto")
PARTS = ("train", "eval", "teacher", "predict", "onnx")
TASK = {"name": "SST-2", "labels": ["0", "1"], "num_labels": 2, "metrics": ["accuracy"]}


def bert_config(layers: int, hidden: int, ffn: int) -> dict[str, object]:
    vocab = len(DEFAULT_VOCAB.read_text(encoding="utf-8").splitlines())
    return {
        **BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=12,
            intermediate_size=ffn,
        ).to_dict(),
        "num_labels": 2,
    }


def bert(layers: int, hidden: int, ffn: int) -> flow.nn.Module:
    """A BERT with random weights and a 2-label head (speed does not depend on the weights)."""
    return io.build_model(bert_config(layers, hidden, ffn))


def side_by_side(rounds: dict[str, Callable[[], int]], repeats: int) -> dict[str, object]:
    """Each mode's round (it returns the examples it handled) alternately, a warm-up then `repeats` timed;
    examples/s of every timed round, medians, and the ratio of the medians."""
    rates: dict[str, list[float]] = {mode: [] for mode in rounds}
    warmup: dict[str, float] = {}
    for repeat in range(repeats + 1):
        for mode, run in rounds.items():
            start = time.perf_counter()
            examples = run()
            seconds = time.perf_counter() - start
            if repeat:
                rates[mode].append(round(examples / seconds, 2))
            else:
                warmup[mode] = round(seconds, 1)
    medians = {mode: statistics.median(values) for mode, values in rates.items()}
    figures = {
        "examples_per_s": rates,
        "median": medians,
        "warmup_seconds": warmup,
        "speedup": round(medians["auto"] / medians["off"], 2),
    }
    print(json.dumps(figures), file=sys.stderr, flush=True)  # a part's figures as soon as they are known
    return figures


def convert(glue: Path, out: Path, seq: int) -> Path:
    convert_task("SST-2", ConvertConfig(glue, out, DEFAULT_VOCAB, max_seq_length=seq, lstm_seq_length=0, workers=1))
    return out / "SST-2"


def train_part(train_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, object]:
    placement = Placement("cpu")
    small_teacher = bert(1, 96, 384).eval()
    rounds, runners = {}, {}
    for mode in MODES:
        flow.manual_seed(0)
        student = bert(4, 312, 1200)
        step = DistillStep(student, [hard_label(0.5), soft_labels(0.5, 1.0)], small_teacher)
        cached = teacher_cache.prepare(step, train_dir, work / "kd", placement, "auto", 32)
        settings = TrainSettings(learning_rate=1e-4, length_buckets=mode)
        seed_everything(step, settings.seed)
        data = OFRecordDataset(cached, settings.batch_size, shuffle=True, seed=settings.seed, placement=placement)
        steps_per_epoch = math.ceil(data.num_examples / settings.batch_size)
        auto = mode == "auto"
        stream = TrainStream(
            data,
            steps_per_epoch,
            settings.seed,
            placement,
            auto,
            buckets.boundaries_for(cached.meta, cached.seq_length()) if auto else None,
        )
        steps = (args.repeats + 1) * buckets.CHUNK_BATCHES
        runner = runners[mode] = build_step_runner(
            step, data.names, settings, steps, placement, lengths=stream.boundaries or [cached.seq_length()]
        )
        student.train()
        rounds[mode] = chunk_of_steps(runner, stream, settings.batch_size)
    figures = side_by_side(rounds, args.repeats)
    figures["graph_lengths"] = {mode: runner.lengths for mode, runner in runners.items()}
    return figures


def chunk_of_steps(runner, stream: TrainStream, batch_size: int) -> Callable[[], int]:
    """A round: one regrouping chunk of training steps, waited for to the end."""

    def run() -> int:
        for _ in range(buckets.CHUNK_BATCHES):
            outputs = runner.step(stream())
        outputs["loss"].numpy()
        return buckets.CHUNK_BATCHES * batch_size

    return run


def eval_part(dev_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    flow.manual_seed(0)
    student = bert(4, 312, 1200)

    def evaluation(mode: str) -> Callable[[], int]:
        evaluator = Evaluator(student, dev_dir, ("accuracy",), 32, Placement("cpu"), mode)
        return lambda: evaluator.run() and evaluator.num_examples

    return side_by_side({mode: evaluation(mode) for mode in MODES}, args.repeats)


def teacher_part(teacher_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, object]:
    placement = Placement("cpu")
    flow.manual_seed(0)
    teacher = bert(12, 768, 3072).eval()
    step = DistillStep(bert(4, 312, 1200), [hard_label(0.5), soft_labels(0.5, 1.0)], teacher)
    split = open_split(teacher_dir)

    def teacher_pass(cut: bool) -> Callable[[], int]:
        def run() -> int:
            teacher_cache.teacher_pass(step, split, ("logits",), placement, 32, work, cut=cut)
            return split.num_examples

        return run

    return side_by_side({"off": teacher_pass(False), "auto": teacher_pass(True)}, args.teacher_repeats)


def student_dir(work: Path, seq: int) -> Path:
    """The student as a model directory, for predict and the export."""
    flow.manual_seed(0)
    config = bert_config(4, 312, 1200)
    target = work / "student"
    io.write_new_model_dir(
        target,
        io.build_model(config),
        config,
        DEFAULT_VOCAB,
        {"name": "random-init"},
        task=TASK,
        data={"format": "bert", "folder": "SST-2", "seq_length": seq, "do_lower_case": True},
    )
    return target


def predict_part(
    model_dir: Path, dev_tsv: Path, work: Path, engine: str, args: argparse.Namespace, onnx_file: Path | None = None
) -> dict[str, object]:
    examples = len(dev_tsv.read_text(encoding="utf-8").splitlines()) - 1

    def run(mode: str) -> Callable[[], int]:
        return lambda: predict(
            model_dir, [str(dev_tsv)], work / f"predict-{mode}.jsonl", 32, "cpu", engine, onnx_file, mode
        )["examples"]

    figures = side_by_side({mode: run(mode) for mode in MODES}, args.repeats)
    same = [
        json.loads(a)["label"] == json.loads(b)["label"]
        for a, b in zip(*((work / f"predict-{mode}.jsonl").read_text().splitlines() for mode in MODES))
    ]
    figures["same_labels"] = f"{sum(same)}/{examples}"
    return figures


def onnx_part(model_dir: Path, dev_tsv: Path, work: Path, args: argparse.Namespace) -> dict[str, object]:
    from distil.onnx_export import export_model
    from distil.predict import OnnxEngine

    path = work / "student.onnx"
    export_model(io.load_model(model_dir).eval(), args.seq, path, "the student")
    if not OnnxEngine(path).cuts:
        return {"not_measured": "not yet: the export's sequence axis is fixed"}
    return predict_part(model_dir, dev_tsv, work, "onnxruntime", args, path)


def describe(split_dir: Path, seq: int) -> dict[str, object]:
    split = open_split(split_dir)
    meta, lengths = split.meta, split.meta["lengths"]
    return {
        "examples": split.num_examples,
        "mean_length": lengths["mean"],
        "p90": lengths["p90"],
        "padding_share_full": lengths["padding_share"],
        "buckets": buckets.describe(lengths["histogram"], buckets.boundaries_for(meta, seq)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--work",
        type=Path,
        default=ROOT / "data" / "real_corpus",
        help="the corpus's folder (fetched there once, as bench/real_data.py does)",
    )
    p.add_argument("--seq", type=int, default=128)
    p.add_argument(
        "--train_size",
        type=int,
        default=3072,
        help="training rows for the train part (a multiple of 32 x 32 keeps rounds on chunk boundaries)",
    )
    p.add_argument("--dev_size", type=int, default=1000)
    p.add_argument("--teacher_size", type=int, default=384, help="training rows of the teacher's pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--teacher_repeats", type=int, default=2)
    p.add_argument("--parts", default=",".join(PARTS), help=f"any of {', '.join(PARTS)}")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    glue = prepare_corpus(args.work, args.train_size, args.dev_size).parent
    run_dir = args.work / f"buckets_seq{args.seq}"
    data = convert(glue, run_dir / "data", args.seq)
    teacher_glue = run_dir / "glue_teacher" / "SST-2"
    teacher_glue.mkdir(parents=True, exist_ok=True)
    lines = (glue / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (teacher_glue / "train.tsv").write_text("".join(lines[: args.teacher_size + 1]), encoding="utf-8")
    (teacher_glue / "dev.tsv").write_text((glue / "SST-2" / "dev.tsv").read_text(encoding="utf-8"), encoding="utf-8")
    teacher_data = convert(teacher_glue.parent, run_dir / "data_teacher", args.seq)
    figures: dict[str, object] = {}
    if "train" in parts:
        figures["train"] = train_part(data / "train", run_dir, args)
    if "eval" in parts:
        figures["eval"] = eval_part(data / "eval", args)
    if "teacher" in parts:
        figures["teacher"] = teacher_part(teacher_data / "train", run_dir, args)
    model_dir = student_dir(run_dir, args.seq) if {"predict", "onnx"} & set(parts) else None
    if "predict" in parts:
        figures["predict"] = predict_part(model_dir, glue / "SST-2" / "dev.tsv", run_dir, "oneflow", args)
    if "onnx" in parts:
        figures["onnx"] = onnx_part(model_dir, glue / "SST-2" / "dev.tsv", run_dir, args)
    print(
        json.dumps(
            {
                "benchmark": "bench/bench_buckets.py",
                "started": started,
                "flags": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "data": {
                    "train": describe(data / "train", args.seq),
                    "dev": describe(data / "eval", args.seq),
                    "teacher_rows": describe(teacher_data / "train", args.seq),
                },
                "figures": figures,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
