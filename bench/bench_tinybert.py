"""TinyBERT's training step phase by phase: this project (OneFlow) against PyTorch + TextBrewer, same shapes (issue 24).

Both sides time the same phases on the same random batch (B x S, real lengths spread from S/4 to S), each phase
a pass that stops after it; medians over --repeats rounds of --steps passes after a warm-up:
  teacher       the frozen teacher's forward (every output the terms read)
  student       the student's forward in training mode, without autograd
  forward       teacher + student + every loss term, no backward
  step          the whole one-stage step: forward, backward, clipping (1.0), AdamW update
  step_inter    the intermediate stage's step (attention + hidden states, no soft labels)
  step_no_att   the one-stage step without the attention term
  step_no_hid   the one-stage step without the hidden-state term
  step_pred     the prediction stage's step (soft labels only, the teacher running for its logits)
Derived: backward + update = step - forward; a term's cost in the step = step - step_no_<term>.
Ours runs the trainer's own step (DistillStep in build_step_runner's TrainGraphs, micro-batches as the trainer
chooses them; --micro_batches 1 to compare one pass); the forward phases run as nn.Graphs returning scalars.
PyTorch runs TextBrewer's GeneralDistiller.train_on_batch with bench/torch_finetune.py's adaptors (the
real-data accuracy runs' set-up), torch.optim.AdamW and clip_grad_norm_.
--shape minilm: the real-data runs' pair (6L-384 teacher, 3L-384 student, 12 heads, FFN 1536);
--shape tinybert: the paper's (12L-768 teacher, 4L-312 student, FFN 1200, through fit_dense 312 -> 768).
Prints a table and one JSON object (--output writes it).

Usage: bash scripts/run_bench.sh tinybert [--shape minilm] [--seq 64] [--batch 32] [--repeats 3] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "minilm": (
        {"num_hidden_layers": 6, "hidden_size": 384, "intermediate_size": 1536},
        {"num_hidden_layers": 3, "hidden_size": 384, "intermediate_size": 1536},
    ),
    "tinybert": (
        {"num_hidden_layers": 12, "hidden_size": 768, "intermediate_size": 3072},
        {"num_hidden_layers": 4, "hidden_size": 312, "intermediate_size": 1200},
    ),
}
VOCAB = 30522
PHASES = ("teacher", "student", "forward", "step", "step_inter", "step_no_att", "step_no_hid", "step_pred")
STEP_TERMS = {
    "step": ("att", "hid", "pred"),
    "step_inter": ("att", "hid"),
    "step_no_att": ("hid", "pred"),
    "step_no_hid": ("att", "pred"),
    "step_pred": ("pred",),
}


def make_batch(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids, real lengths from seq/4 to seq, a [CLS] first and one segment; labels 0/1."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(2, seq // 4), seq + 1, size=batch)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1000, VOCAB, size=(batch, seq)) * mask
    ids[:, 0] = 101
    return {
        "input_ids": ids,
        "segment_ids": np.zeros_like(ids),
        "input_mask": mask,
        "label_ids": rng.integers(0, 2, size=batch),
    }


def timed_rounds(phases: dict[str, Callable[[], None]], steps: int, repeats: int) -> dict[str, float]:
    """ms per pass of each phase: a warm-up round, then `repeats` rounds of `steps` passes, phases interleaved
    round by round (a busy machine then slows every phase alike); the median round."""
    rounds: dict[str, list[float]] = {name: [] for name in phases}
    for repeat in range(repeats + 1):
        for name, run in phases.items():
            start = time.perf_counter()
            for _ in range(steps if repeat else 1):
                run()
            if repeat:
                rounds[name].append(1000 * (time.perf_counter() - start) / steps)
    return {name: round(statistics.median(values), 1) for name, values in rounds.items()}


# ---------------------------------------------------------------------------------------------- this project
def ours(args: argparse.Namespace) -> dict[str, object]:
    sys.path.insert(0, str(ROOT / "src"))
    from distil.algorithms.students import fit_dense
    from distil.models import io
    from distil.models.bert import BertConfig
    from distil.runtime import import_oneflow
    from distil.train.settings import TrainSettings
    from distil.train.step import DistillStep, attention, hidden_states, soft_labels
    from distil.train.trainer import build_step_runner

    flow = import_oneflow()
    teacher_sizes, student_sizes = SHAPES[args.shape]

    def bert(sizes: dict[str, int]):
        return io.build_model(
            {**BertConfig(vocab_size=VOCAB, num_attention_heads=12, **sizes).to_dict(), "num_labels": 2}
        )

    flow.manual_seed(0)
    teacher, student = bert(teacher_sizes).eval(), bert(student_sizes).train()
    for parameter in teacher.parameters():
        parameter.requires_grad = False
    projection = fit_dense(student_sizes["hidden_size"], teacher_sizes["hidden_size"])
    terms = {"att": attention(), "hid": hidden_states(1.0), "pred": soft_labels(1.0, 1.0, "kl")}
    batch = {name: flow.tensor(value) for name, value in make_batch(args.batch, args.seq).items()}
    features = list(batch)

    class Scalars(flow.nn.Graph):
        """`run(module, batch)` as a static graph returning one scalar per output tensor (nothing large leaves it)."""

        def __init__(self, module, run: Callable):
            super().__init__()
            self.module, self.run = module, run

        def build(self, *values):
            outputs = self.run(self.module, dict(zip(features, values)))
            flat = {}
            for name, value in outputs.items():
                for i, tensor in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                    flat[f"{name}{i}"] = tensor.sum()
            return flat

    def model_pass(model, values):
        return model(*(values[name] for name in ("input_ids", "segment_ids", "input_mask")))

    full = DistillStep(student, list(terms.values()), teacher, projection)
    graphs = {
        "teacher": Scalars(teacher, model_pass),
        "student": Scalars(student, model_pass),
        "forward": Scalars(full, lambda step, values: step(values)),
    }
    phases = {name: (lambda g=graph: list(g(*batch.values()).values())[0].numpy()) for name, graph in graphs.items()}
    settings = TrainSettings(learning_rate=1e-4, batch_size=args.batch)
    runners = {}
    for name, chosen in STEP_TERMS.items():
        step = DistillStep(student, [terms[t] for t in chosen], teacher, projection if "hid" in chosen else None)
        runners[name] = build_step_runner(step, features, settings, 10**6, micro_batches=args.micro_batches)
        phases[name] = lambda r=runners[name]: r.step(batch)["loss"].numpy()
    figures = timed_rounds(phases, args.steps, args.repeats)
    return {"ms": figures, "micro_batches": args.micro_batches or "auto"}


# -------------------------------------------------------------------------------------- PyTorch + TextBrewer
def theirs(args: argparse.Namespace) -> dict[str, object]:
    import torch
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from textbrewer.presets import MATCH_LOSS_MAP
    from transformers import BertConfig, BertForSequenceClassification

    sys.path.insert(0, str(ROOT / "bench"))
    from torch_finetune import make_adaptor, optimizer_and_schedule, tinybert_attention_mse

    MATCH_LOSS_MAP["attention_mse_tinybert"] = tinybert_attention_mse
    torch.manual_seed(0)
    teacher_sizes, student_sizes = SHAPES[args.shape]

    def bert(sizes: dict[str, int]) -> BertForSequenceClassification:
        config = BertConfig(vocab_size=VOCAB, num_attention_heads=12, num_labels=2, **sizes)
        config._attn_implementation = "eager"
        return BertForSequenceClassification(config)

    teacher, student = bert(teacher_sizes).eval(), bert(student_sizes).train()
    raw = make_batch(args.batch, args.seq)
    batch = {
        "input_ids": torch.tensor(raw["input_ids"]),
        "token_type_ids": torch.tensor(raw["segment_ids"]),
        "attention_mask": torch.tensor(raw["input_mask"]),
        "labels": torch.tensor(raw["label_ids"]),
    }
    ratio = teacher_sizes["num_hidden_layers"] // student_sizes["num_hidden_layers"]
    width = (student_sizes["hidden_size"], teacher_sizes["hidden_size"])
    adaptors = [make_adaptor(model, with_attention=True) for model in (teacher, student)]

    def distiller(chosen: Sequence[str]) -> GeneralDistiller:
        matches = []
        if "hid" in chosen:
            matches += [
                {
                    "layer_T": i * ratio,
                    "layer_S": i,
                    "feature": "hidden",
                    "loss": "hidden_mse",
                    "weight": 1,
                    **({"proj": ["linear", *width]} if width[0] != width[1] else {}),
                }
                for i in range(student_sizes["num_hidden_layers"] + 1)
            ]
        if "att" in chosen:
            matches += [
                {
                    "layer_T": i * ratio - 1,
                    "layer_S": i - 1,
                    "feature": "attention",
                    "loss": "attention_mse_tinybert",
                    "weight": 1,
                }
                for i in range(1, student_sizes["num_hidden_layers"] + 1)
            ]
        config = DistillationConfig(
            temperature=1.0,
            kd_loss_type="ce",
            kd_loss_weight=1.0 if "pred" in chosen else 0,
            hard_label_weight=0.0,
            intermediate_matches=matches,
        )
        out = Path(args.scratch) / "textbrewer"
        return GeneralDistiller(
            train_config=TrainingConfig(output_dir=str(out), device="cpu", log_dir=str(out)),
            distill_config=config,
            model_T=teacher,
            model_S=student,
            adaptor_T=adaptors[0],
            adaptor_S=adaptors[1],
        )

    def step_of(chosen: Sequence[str]) -> Callable[[], None]:
        brewer = distiller(chosen)
        params = list(student.named_parameters()) + [
            (f"proj{i}.{n}", p)
            for i, proj in enumerate(brewer.projs)
            if proj is not None
            for n, p in proj.named_parameters()
        ]
        hyper = argparse.Namespace(lr=1e-4, wd=0.01)
        optimizer, schedule = optimizer_and_schedule(params, hyper, 10**6)

        def run() -> None:
            loss, _ = brewer.train_on_batch(batch, {})
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step(), schedule.step(), optimizer.zero_grad()

        return run

    full = distiller(("att", "hid", "pred"))

    def no_grad(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                fn()

        return run

    model_inputs = {k: v for k, v in batch.items() if k != "labels"}
    phases = {
        "teacher": no_grad(lambda: adaptors[0](batch, teacher(**model_inputs))),
        "student": no_grad(lambda: adaptors[1](batch, student(**model_inputs))),
        "forward": no_grad(lambda: full.train_on_batch(batch, {})),
    }
    for name, chosen in STEP_TERMS.items():
        phases[name] = step_of(chosen)
    return {"ms": timed_rounds(phases, args.steps, args.repeats), "torch_threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------------- report
def derived(ms: dict[str, float]) -> dict[str, float]:
    return {
        "backward_update": round(ms["step"] - ms["forward"], 1),
        "att_in_step": round(ms["step"] - ms["step_no_att"], 1),
        "hid_in_step": round(ms["step"] - ms["step_no_hid"], 1),
        "losses_in_forward": round(ms["forward"] - ms["teacher"] - ms["student"], 1),
    }


def table(figures: dict[str, dict[str, object]], batch: int) -> str:
    rows = [f"{'phase (ms per step of ' + str(batch) + ')':34s} {'ours':>9s} {'PyTorch':>9s} {'ours/PyTorch':>13s}"]
    sides = [figures[side]["ms"] | derived(figures[side]["ms"]) for side in ("ours", "pytorch")]
    for name in (*PHASES, "backward_update", "att_in_step", "hid_in_step", "losses_in_forward"):
        a, b = sides[0][name], sides[1][name]
        ratio = f"{a / b:.2f}" if b > 0 else "-"
        rows.append(f"{name:34s} {a:9.1f} {b:9.1f} {ratio:>13s}")
    step_ours, step_theirs = sides[0]["step"], sides[1]["step"]
    rows.append(
        f"one-stage examples/s: ours {1000 * batch / step_ours:.1f}, PyTorch {1000 * batch / step_theirs:.1f}"
        f" -> {step_theirs / step_ours:.2f}x"
    )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="minilm")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="passes per timed round")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    p.add_argument("--micro_batches", type=int, default=0, help="ours: 0 = the trainer's choice")
    p.add_argument("--side", choices=("both", "ours", "pytorch"), default="both")
    p.add_argument("--torch_python", default=os.environ.get("TORCH_PYTHON", "/work/torchref/bin/python"))
    p.add_argument("--scratch", default="/tmp/bench_tinybert")
    p.add_argument("--output", type=Path)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side == "ours":
        print(json.dumps(ours(args)))
        return 0
    if args.side == "pytorch":
        print(json.dumps(theirs(args)))
        return 0
    figures = {}
    for side, python in (("ours", sys.executable), ("pytorch", args.torch_python)):
        command = [python, __file__, "--side", side, *(argv if argv is not None else sys.argv[1:])]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise SystemExit(f"{side} side failed ({done.returncode}):\n{done.stderr[-3000:]}")
        figures[side] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["settings"] = {k: str(v) for k, v in vars(args).items() if k not in ("side", "output")}
    print(table(figures, args.batch))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
