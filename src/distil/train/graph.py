"""The one training graph and the one evaluation graph every algorithm runs in.

The OFRecord reader sits inside each graph (OneFlow's data pipeline), the optimizer, clipping
and LR schedule are attached here and nowhere else, and an algorithm only supplies a step
module whose outputs ending in `_loss` are summed and back-propagated.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from distil.data.dataset import EvalStream, OFRecordDataset
from distil.runtime import import_oneflow
from distil.train.metrics import compute_metrics
from distil.train.optim import clip_global_norm
from distil.train.placement import Placement

flow = import_oneflow()

MODEL_INPUTS = ("input_ids", "segment_ids", "input_mask")


def _sum_losses(outputs: Dict[str, flow.Tensor]) -> flow.Tensor:
    losses = [value for name, value in outputs.items() if name.endswith("_loss")]
    total = losses[0]
    for value in losses[1:]:
        total = total + value
    return total


class TrainGraph(flow.nn.Graph):
    """Read a batch, run the algorithm's step module, back-propagate the sum of its `*_loss` outputs.

    Step-dependent numbers (a replacing rate, a loss weight) are passed as tensor arguments of
    each call: a Python float read in `build` would be frozen when the graph compiles.
    """

    def __init__(self, step_module: flow.nn.Module, data: OFRecordDataset, optimizer, schedule,
                 placement: Placement):
        super().__init__()
        self.step_module = step_module
        self.data = data
        self.placement = placement
        self.add_optimizer(optimizer, lr_sch=schedule)
        # fused AdamW update and residual adds: ~7 % per step on CPU (bench/bench_bert.py --only step)
        self.config.allow_fuse_model_update_ops(True)
        self.config.allow_fuse_add_to_output(True)
        if placement.fp16:
            self.config.enable_amp(True)
            self.set_grad_scaler(flow.amp.GradScaler(init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                                                     growth_interval=2000))

    def build(self, *step_inputs: flow.Tensor) -> Dict[str, flow.Tensor]:
        outputs = self.step_module(self.placement.batch(self.data()), *step_inputs)
        total = _sum_losses(outputs)
        total.backward()
        return {**outputs, "loss": total}


class EagerStep:
    """The TrainGraph's work done eagerly, for steps whose computation changes from step to step.

    BERT-of-Theseus samples which modules run in each step; a static nn.Graph would have to
    compute every branch. Same call and state interface as TrainGraph.
    """

    def __init__(self, step_module: flow.nn.Module, data: OFRecordDataset, optimizer, schedule,
                 placement: Placement, clip_grad: float):
        self.step_module, self.data, self.placement = step_module, data, placement
        self.optimizer, self.schedule, self.clip_grad = optimizer, schedule, clip_grad

    def __call__(self, *step_inputs) -> Dict[str, flow.Tensor]:
        outputs = self.step_module(self.placement.batch(self.data()), *step_inputs)
        total = _sum_losses(outputs)
        if total.requires_grad:  # a Theseus step that sampled only frozen predecessors has nothing to learn
            total.backward()
            if self.clip_grad > 0:
                clip_global_norm(self.optimizer, self.clip_grad)
            self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad()
        return {**outputs, "loss": total}

    def state_dict(self) -> Dict:
        """Keyed as a TrainGraph's: the step module's weights under "step_module", then the rest."""
        return {"step_module": self.step_module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        """The optimizer and schedule (the trainer loads the step module's weights itself)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])


class EvalGraph(flow.nn.Graph):
    """Logits and labels of the next evaluation batch, from every rank (the model must be in eval mode when
    it compiles)."""

    def __init__(self, model: flow.nn.Module, data: OFRecordDataset, placement: Placement):
        super().__init__()
        self.model = model
        self.data = data
        self.placement = placement
        if placement.fp16:
            self.config.enable_amp(True)

    def build(self) -> Dict[str, flow.Tensor]:
        batch = self.placement.batch(self.data())
        logits = self.model(*(batch[name] for name in MODEL_INPUTS))["logits"]
        if self.placement.fp16:
            logits = flow.cast(logits, flow.float32)
        return {"logits": self.placement.gather(logits), "labels": self.placement.gather(batch["label_ids"])}


class Evaluator:
    """Evaluates a model on one split, every example exactly once, and times its throughput."""

    def __init__(self, model: flow.nn.Module, split_dir: Path, metrics: Sequence[str], batch_size: int,
                 placement: Placement):
        self.model, self.metrics = placement.module(model), tuple(metrics)
        self.data = OFRecordDataset(split_dir, batch_size, features=(*MODEL_INPUTS, "label_ids"), placement=placement)
        self.graph = EvalGraph(model, self.data, placement)
        self.stream = EvalStream(self.data.num_examples, batch_size, self.data.shards)

    @property
    def num_examples(self) -> int:
        return self.data.num_examples

    def run(self) -> Tuple[Dict[str, float], Dict[str, np.ndarray], Dict[str, float]]:
        """(metrics, {"logits", "labels"} in file order, timing) for one pass over the split.

        Timing leaves out the first batch, which may include the graph's compilation.
        """
        was_training = self.model.training
        self.model.eval()
        marks = []

        def next_batch():
            out = {k: (v.to_local() if v.is_global else v).numpy() for k, v in self.graph().items()}
            marks.append(time.perf_counter())
            return out

        start = time.perf_counter()
        outputs = self.stream.run(next_batch)
        self.model.train(was_training)
        timed_examples = self.num_examples - min(self.data.batch_size, self.num_examples)
        timed_seconds = marks[-1] - marks[0]
        timing = {"seconds": marks[-1] - start,
                  "examples_per_second": timed_examples / timed_seconds if timed_examples and timed_seconds else
                  self.num_examples / (marks[-1] - start)}
        return compute_metrics(self.metrics, outputs["logits"], outputs["labels"]), outputs, timing
