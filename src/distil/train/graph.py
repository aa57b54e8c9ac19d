"""The one training graph every algorithm runs in, and the one evaluation pass.

The OFRecord reader sits inside each evaluation graph (OneFlow's data pipeline) and feeds the training
graph from outside (so a resumed run can put it back where it was); the optimizer, clipping
and LR schedule are attached here and nowhere else, and an algorithm only supplies a step
module whose outputs ending in `_loss` are summed and back-propagated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from distil.data import buckets
from distil.data.dataset import EvalStream, OFRecordDataset, SplitLike, as_split
from distil.models import io
from distil.runtime import import_oneflow
from distil.train.metrics import compute_metrics
from distil.train.optim import clip_global_norm
from distil.train.placement import Placement
from distil.train.settings import MICRO_BATCH_TOKENS

flow = import_oneflow()

MODEL_INPUTS = ("input_ids", "segment_ids", "input_mask")


def _sum_losses(outputs: dict[str, flow.Tensor]) -> flow.Tensor:
    losses = [value for name, value in outputs.items() if name.endswith("_loss")]
    total = losses[0]
    for value in losses[1:]:
        total = total + value
    return total


class TrainGraph(flow.nn.Graph):
    """Run the algorithm's step module on a batch, back-propagate the sum of its `*_loss` outputs, update.

    The batch comes in as arguments (`step(batch)`), read eagerly by the trainer: the reader's position is
    then the trainer's to restore when a run resumes mid-epoch. With `micro_batches` > 1 the graph cuts
    the batch into that many parts on dim 0 and accumulates their gradients (one update per call).
    Step-dependent numbers (a replacing rate, a loss weight) would be tensor arguments after the batch: a
    Python float read in `build` would be frozen when the graph compiles.
    """

    def __init__(
        self,
        step_module: flow.nn.Module,
        features: Sequence[str],
        optimizer,
        schedule,
        placement: Placement,
        micro_batches: int = 1,
    ):
        super().__init__()
        for parameter in step_module.parameters():
            parameter.grad = None  # another graph's build may have left its lazy gradients there
        self.step_module = step_module
        self.features = tuple(features)
        self.add_optimizer(optimizer, lr_sch=schedule)
        if micro_batches > 1:  # inputs are cut into that many parts on dim 0; outputs concatenate
            self.config.set_gradient_accumulation_steps(micro_batches)
        # fused AdamW update and residual adds: ~7 % per step on CPU (bench/bench_bert.py --only step)
        self.config.allow_fuse_model_update_ops(True)
        self.config.allow_fuse_add_to_output(True)
        if placement.fp16:
            self.config.enable_amp(True)
            self.set_grad_scaler(
                flow.amp.GradScaler(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000)
            )

    def build(self, *inputs: flow.Tensor) -> dict[str, flow.Tensor]:
        batch = dict(zip(self.features, inputs))
        outputs = self.step_module(batch, *inputs[len(self.features) :])
        total = _sum_losses(outputs)
        total.backward()
        return {**outputs, "loss": total}

    def step(self, batch: dict[str, flow.Tensor], *step_inputs: flow.Tensor) -> dict[str, flow.Tensor]:
        return self(*(batch[name] for name in self.features), *step_inputs)


class TrainGraphs:
    """One TrainGraph per batch length, all updating the same parameters with one AdamW state and LR step.

    OneFlow 0.9 compiles one static shape per nn.Graph. A graph built after the first is handed the first
    one's optimizer state (moments, train step) before it compiles, and OneFlow then computes on those very
    tensors: every graph reads and writes the same state (tests/test_length_training.py checks it against one
    graph). `build(length, steps)` makes the graph for batches of `length` positions when `steps` steps have
    run; same interface as TrainGraph.
    """

    def __init__(self, build: Callable[[int, int], TrainGraph], length_of: Callable[[dict[str, flow.Tensor]], int]):
        self.build, self.length_of = build, length_of
        self.graphs: dict[int, TrainGraph] = {}
        self.loaded: dict[str, flow.Tensor] = {}  # a resumed run's optimizer state, for the first graph
        self.steps = 0

    def step(self, batch: dict[str, flow.Tensor], *step_inputs: flow.Tensor) -> dict[str, flow.Tensor]:
        length = self.length_of(batch)
        graph = self.graphs.get(length) or self._add(length)
        self.steps += 1
        return graph.step(batch, *step_inputs)

    def _add(self, length: int) -> TrainGraph:
        first = next(iter(self.graphs.values()), None)
        graph = self.build(length, self.steps)
        shared = self.loaded if first is None else first.state_dict()
        graph.load_state_dict({name: value for name, value in shared.items() if name != "step_module"})
        self.graphs[length] = graph
        return graph

    @property
    def lengths(self) -> list[int]:
        return sorted(self.graphs)

    def state_dict(self) -> dict:
        return next(iter(self.graphs.values())).state_dict()

    def load_state_dict(self, state: dict) -> None:
        """The optimizer state (the trainer loads the step module's weights itself), before any step."""
        self.loaded = dict(state)


class EagerStep:
    """The TrainGraph's work done eagerly, for steps whose computation changes from step to step.

    BERT-of-Theseus samples which modules run in each step; a static nn.Graph would have to
    compute every branch. Same `step` and state interface as TrainGraph.
    """

    def __init__(self, step_module: flow.nn.Module, optimizer, schedule, clip_grad: float):
        self.step_module, self.optimizer, self.schedule, self.clip_grad = step_module, optimizer, schedule, clip_grad

    def step(self, batch: dict[str, flow.Tensor], *step_inputs) -> dict[str, flow.Tensor]:
        outputs = self.step_module(batch, *step_inputs)
        total = _sum_losses(outputs)
        if total.requires_grad:  # a Theseus step that sampled only frozen predecessors has nothing to learn
            total.backward()
            if self.clip_grad > 0:
                clip_global_norm(self.optimizer, self.clip_grad)
            self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad()
        return {**outputs, "loss": total}

    def state_dict(self) -> dict:
        """Keyed as a TrainGraph's: the step module's weights under "step_module", then the rest."""
        return {
            "step_module": self.step_module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """The optimizer and schedule (the trainer loads the step module's weights itself)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])


Compute = Callable[[flow.nn.Module, dict[str, flow.Tensor]], dict[str, flow.Tensor]]
GRAPH_PASS_BUDGET = 8_000_000  # rows x seq x layers x hidden of one pass below which a graph stays small


def in_graph(model: flow.nn.Module, rows: int, seq_length: int) -> bool:
    """Whether a pass of `model` over `rows` x `seq_length` runs as an nn.Graph (fast) or eagerly (lean).

    OneFlow 0.9's CPU nn.Graph keeps every buffer of its forward pass: BERT-base at batch 32 x 128 takes
    11.7 GB as a graph and 1.6 GB eagerly (4L-312: 2.1 vs 0.6 GB); small models and the BiLSTM, whose
    step loop costs many eager op launches, are up to 10x faster as a graph (issue 11).
    """
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", None)
    return layers is None or rows * seq_length * layers * config.hidden_size <= GRAPH_PASS_BUDGET


class PassGraph(flow.nn.Graph):
    """`compute(model, batch)` on the next batch of `data`, gathered from every rank, as a static graph (the
    model must be in eval mode when it compiles)."""

    def __init__(self, compute: Compute, model: flow.nn.Module, data: OFRecordDataset, placement: Placement):
        super().__init__()
        self.model, self.data, self.placement, self.compute = model, data, placement, compute
        if placement.fp16:
            self.config.enable_amp(True)

    def build(self) -> dict[str, flow.Tensor]:
        return _gathered(self.compute(self.model, self.placement.batch(self.data())), self.placement)


def _gathered(values: dict[str, flow.Tensor], placement: Placement) -> dict[str, flow.Tensor]:
    return {
        name: placement.gather(flow.cast(v, flow.float32) if v.dtype == flow.float16 else v)
        for name, v in values.items()
    }


class InputsPassGraph(flow.nn.Graph):
    """`compute(model, batch)` on a batch given as inputs, gathered, as a static graph: one per batch shape."""

    def __init__(self, compute: Compute, model: flow.nn.Module, features: Sequence[str], placement: Placement):
        super().__init__()
        self.model, self.compute, self.features, self.placement = model, compute, tuple(features), placement
        if placement.fp16:
            self.config.enable_amp(True)

    def build(self, *inputs: flow.Tensor) -> dict[str, flow.Tensor]:
        return _gathered(self.compute(self.model, dict(zip(self.features, inputs))), self.placement)


class SplitPass:
    """Passes of `compute(model, batch)` over a split: {name: one row per example, in file order}, every
    example exactly once, each rank on its shard; in a PassGraph (compiled once) or eagerly without autograd
    (in mixed precision under --use_fp16). Later passes go on where the reader stopped.

    With `cut`, the batches read are regrouped, CHUNK_BATCHES at a time, into batches of examples of
    similar length cut to their length bucket (a graph per bucket; eagerly, to the longest member), and
    the outputs put back in reading order: the same values without computing the padding. With N ranks
    each rank regroups its own rows, a batch is cut to the longest length any rank needs, and the ranks'
    outputs are exchanged once per chunk. `compute`'s outputs must hold one row per example and no
    sequence axis (logits, labels).
    """

    def __init__(
        self,
        compute: Compute,
        model: flow.nn.Module,
        data: OFRecordDataset,
        placement: Placement,
        graph: bool = False,
        cut: bool = False,
    ):
        self.compute, self.model, self.data, self.placement = compute, model, data, placement
        self.stream = EvalStream(data.num_examples, data.batch_size // data.shards, data.shards)
        self.cut = cut
        self.graph = PassGraph(compute, model, data, placement) if graph and not self.cut else None
        self.cut_graphs: dict[int, InputsPassGraph] | None = {} if graph and self.cut else None
        if self.cut:
            self.mask = next(name for name in data.names if name.endswith("input_mask"))
            self.seq_length = data.meta["features"][self.mask]["shape"][-1]
            self.sequences = {name for name in data.names if data.meta["features"][name]["shape"] == [self.seq_length]}
            self.buckets = buckets.boundaries_for(data.meta, self.seq_length) or [self.seq_length]

    def run(self, on_batch: Callable[[], None] = lambda: None) -> dict[str, np.ndarray]:
        if self.cut:
            return self._run_cut(on_batch)

        def next_batch() -> dict[str, np.ndarray]:
            if self.graph is not None:
                values = self.graph()
            else:
                with flow.no_grad(), self.placement.autocast():
                    values = _gathered(self.compute(self.model, self.placement.batch(self.data())), self.placement)
            on_batch()
            return {name: io.as_numpy(v) for name, v in values.items()}

        return self.stream.run(next_batch)

    def _run_cut(self, on_batch: Callable[[], None]) -> dict[str, np.ndarray]:
        steps = math.ceil(max(self.stream.sizes) / self.stream.batch_size)  # the reads of one pass, no more
        ready: list[dict[str, np.ndarray]] = []
        read = 0

        def next_batch() -> dict[str, np.ndarray]:
            nonlocal read
            if not ready:
                count = min(buckets.CHUNK_BATCHES, steps - read)
                read += count
                ready.extend(
                    self._by_length(
                        [{name: io.as_numpy(value) for name, value in self.data().items()} for _ in range(count)],
                        on_batch,
                    )
                )
            return ready.pop(0)

        return self.stream.run(next_batch)

    def _by_length(
        self, batches: list[dict[str, np.ndarray]], on_batch: Callable[[], None]
    ) -> list[dict[str, np.ndarray]]:
        """The outputs of `batches` (this rank's rows, in their order) computed on their rows sorted by length;
        with N ranks, as global batches (each rank's rows in turn)."""
        rows = {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}
        lengths = rows[self.mask].sum(axis=1)
        size = len(batches[0][self.mask])
        groups = buckets.groups_by_length(lengths, size)
        widths = self.placement.largest(
            [
                buckets.width_of(lengths[chosen], self.buckets if self.cut_graphs is not None else None)
                for chosen in groups
            ]
        )
        mine = slice(self.placement.rank * size, (self.placement.rank + 1) * size)  # this rank's rows of a batch
        outputs: dict[str, np.ndarray] = {}
        for chosen, width in zip(groups, widths):
            full = np.concatenate([chosen, np.repeat(chosen[-1:], size - len(chosen))])  # one shape per bucket
            values = self._compute(buckets.cut(rows, full, width, self.sequences), width)
            for name, value in values.items():
                outputs.setdefault(name, np.empty((len(lengths), *value.shape[1:]), dtype=value.dtype))[chosen] = value[
                    mine
                ][: len(chosen)]
            on_batch()
        everyone = {name: self.placement.everyones(value) for name, value in outputs.items()}  # (ranks, rows, ...)
        return [
            {name: np.concatenate(list(value[:, i * size : (i + 1) * size])) for name, value in everyone.items()}
            for i in range(len(batches))
        ]

    def _compute(self, batch: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
        tensors = self.placement.batch({name: flow.tensor(value) for name, value in batch.items()})
        if self.cut_graphs is not None:
            if width not in self.cut_graphs:
                self.cut_graphs[width] = InputsPassGraph(self.compute, self.model, list(tensors), self.placement)
            values = self.cut_graphs[width](*tensors.values())
        else:
            with flow.no_grad(), self.placement.autocast():
                values = _gathered(self.compute(self.model, tensors), self.placement)
        return {name: io.as_numpy(value) for name, value in values.items()}


def _logits_and_labels(model: flow.nn.Module, batch: dict[str, flow.Tensor]) -> dict[str, flow.Tensor]:
    return {"logits": model.logits(*(batch[name] for name in MODEL_INPUTS)), "labels": batch["label_ids"]}


class Evaluator:
    """Evaluates a model on one split, every example exactly once, and times its throughput."""

    def __init__(
        self,
        model: flow.nn.Module,
        split: SplitLike,
        metrics: Sequence[str],
        batch_size: int,
        placement: Placement,
        length_buckets: str = "auto",
    ):
        cut = buckets.check_mode(length_buckets)
        self.model, self.metrics, self.placement = placement.module(model), tuple(metrics), placement
        split = as_split(split)
        graph = in_graph(model, batch_size, split.seq_length())
        if graph:  # a compiled pass holds all its buffers: its graphs (one per bucket) at most MICRO_BATCH_TOKENS
            lengths = (buckets.boundaries_for(split.meta, split.seq_length()) if cut else None) or [split.seq_length()]
            batch_size = min(batch_size, max(1, MICRO_BATCH_TOKENS // sum(lengths)))
        self.data = OFRecordDataset(split, batch_size, features=(*MODEL_INPUTS, "label_ids"), placement=placement)
        self.passes = SplitPass(_logits_and_labels, self.model, self.data, placement, graph, cut)

    @property
    def num_examples(self) -> int:
        return self.data.num_examples

    def run(self) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, float]]:
        """(metrics, {"logits", "labels"} in file order, timing) for one pass over the split.

        Timing leaves out the first batch, which includes warming up.
        """
        was_training = self.model.training
        self.model.eval()
        marks: list[float] = []

        start = time.perf_counter()
        outputs = self.passes.run(lambda: marks.append(time.perf_counter()))
        self.model.train(was_training)
        timed_examples = self.num_examples - min(self.data.batch_size, self.num_examples)
        timed_seconds = marks[-1] - marks[0]
        timing = {
            "seconds": marks[-1] - start,
            "examples_per_second": timed_examples / timed_seconds
            if timed_examples and timed_seconds
            else self.num_examples / (marks[-1] - start),
        }
        return compute_metrics(self.metrics, outputs["logits"], outputs["labels"]), outputs, timing


class LossEvaluator:
    """The step module's summed loss terms on a held-out split, for stages without labels to score (general
    distillation): `dev_loss`, the mean over the split's examples of their batch's loss, computed eagerly without
    dropout or gradients. Same interface as Evaluator."""

    def __init__(self, step_module: flow.nn.Module, split: SplitLike, batch_size: int, placement: Placement):
        self.step_module, self.placement = step_module, placement
        self.model = step_module.student  # (the one module dropout is turned off for; a teacher is always off)
        self.split, self.batch_size = as_split(split), batch_size

    @property
    def num_examples(self) -> int:
        return self.split.num_examples

    @staticmethod
    def _losses(step_module: flow.nn.Module, batch: dict[str, flow.Tensor]) -> dict[str, flow.Tensor]:
        rows = batch["input_mask"].shape[0]
        return {"loss": _sum_losses(step_module(batch)).reshape(1).repeat(rows)}

    def run(self) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, float]]:
        was_training = self.model.training
        self.model.eval()
        start = time.perf_counter()
        data = OFRecordDataset(self.split, self.batch_size, features=MODEL_INPUTS, placement=self.placement)
        outputs = SplitPass(self._losses, self.step_module, data, self.placement).run()  # the same batches each time
        self.model.train(was_training)
        seconds = time.perf_counter() - start
        return (
            {"dev_loss": float(outputs["loss"].mean())},
            outputs,
            {"seconds": seconds, "examples_per_second": self.num_examples / max(seconds, 1e-9)},
        )
