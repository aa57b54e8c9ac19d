"""The one trainer loop: steps in a TrainGraph, dev evaluation each epoch, best-model saving, resume.

Follows the original's loop (AdamW + warm-up/decay, evaluation after every epoch, keep the best)
with its defects fixed: best selection uses `>=` and always saves once, the final metrics
describe the saved best model, and `train_state/` lets an interrupted run continue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from distil.data import buckets
from distil.data.dataset import OFRecordDataset, Split, SplitLike, TrainStream, as_split
from distil.errors import UsageError
from distil.fileio import replace_dir, write_json_atomic
from distil.models import io
from distil.models.dropout import seed_dropout
from distil.models.io import TRAIN_STATE_DIR, WEIGHTS_DIR, load_weights, save_weights, size_on_disk
from distil.runtime import import_oneflow
from distil.train import teacher_cache
from distil.train.graph import EagerStep, Evaluator, TrainGraph, TrainGraphs
from distil.train.optim import build_optimizer
from distil.train.placement import Placement
from distil.train.schedules import warmup_linear_factor, warmup_steps
from distil.train.settings import TrainSettings, micro_batch_count
from distil.train.step import SCHEDULE_PREFIX
from distil.train.tensorboard import EventLog

flow = import_oneflow()
log = logging.getLogger(__name__)

STATE_FILE = "state.json"
# settings a resumed run may change: they change no result
RESUME_FREE = ("checkpoint_every", "checkpoint_minutes", "log_every", "tensorboard")
ADDED_SINCE = {"length_buckets": "off"}  # settings a train_state/ of an earlier version lacks: what it trained with
STEP_MODULE = "step_module"  # the key of the step module's weights in a runner's state dict
StepInputs = Callable[[int, int], tuple[flow.Tensor, ...]]


@dataclasses.dataclass
class RunState:
    """What train_state/state.json holds besides the graph (weights, AdamW moments, LR step)."""

    step: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one entry per epoch
    losses: list[dict[str, float]] = dataclasses.field(default_factory=list)  # {step, loss, each term} as logged
    finished: bool = False
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. the teacher a student learns from


def read_run_state(model_dir: Path) -> RunState | None:
    path = model_dir / TRAIN_STATE_DIR / STATE_FILE
    if not path.is_file():
        return None
    values = json.loads(path.read_text(encoding="utf-8"))
    values["losses"] = [{"step": e[0], "loss": e[1]} if isinstance(e, list) else e for e in values.get("losses", [])]
    return RunState(**values)


def model_size(model: flow.nn.Module, model_dir: Path) -> dict[str, float]:
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "parameters": int(parameters),
        "size_mb": round(parameters * 4 / 2**20, 2),
        "size_on_disk_mb": round(size_on_disk(model_dir / WEIGHTS_DIR) / 2**20, 2),
    }


def seed_everything(step_module: flow.nn.Module, seed: int) -> None:
    """OneFlow's global RNG and every dropout site of the step's models, from one number."""
    flow.manual_seed(seed)
    seed_dropout(step_module, seed)


def build_step_runner(
    step_module: flow.nn.Module,
    features: Sequence[str],
    settings: TrainSettings,
    total: int,
    placement: Placement | None = None,
    eager: bool = False,
    micro_batches: int = 0,
    first_step: int = 0,
    lengths: Sequence[int] = (),
) -> TrainGraphs | EagerStep:
    """Place the step module, then build the optimizer, its schedule over `total` steps, and the graphs (or
    eager step) that apply them to batches of `features`: a graph per batch length, each cutting its batch
    into `micro_batches` parts and updating once. 0: parts of as many rows as `settings` allow for rows of the
    summed `lengths` of every graph the run will build (its buckets; () = the graph's own length), so that
    the graphs, each holding the buffers of one part, hold together what one full-length graph would. A graph
    built after the first, at step s, seeds the dropout sites from the run's seed + s (the first graph keeps
    the caller's seeds): each graph draws its own masks."""
    placement = placement or Placement()
    placement.module(step_module)
    optimizer, schedule = build_optimizer(
        step_module.named_parameters(),
        settings.learning_rate,
        settings.weight_decay,
        total,
        settings.warmup_proportion,
        settings.clip_grad,
        graph=not eager,
    )
    if eager:
        if placement.fp16:
            raise UsageError(
                "--use_fp16: this stage trains eagerly (BERT-of-Theseus's module replacement), and "
                "OneFlow 0.9's loss scaling works only in nn.Graph; leave USE_FP16 False for it"
            )
        return EagerStep(step_module, optimizer, schedule, settings.clip_grad)

    def build(length: int, step: int) -> TrainGraph:
        parts = micro_batches or micro_batch_count(settings, sum(lengths) or length)
        if step:
            seed_dropout(step_module, settings.seed + first_step + step)
        log.info(
            "a compiled step for batches of %d positions: %d micro-batch(es) of %d rows per process",
            length,
            parts,
            settings.batch_size // parts,
        )
        return TrainGraph(step_module, features, optimizer, schedule, placement, parts)

    return TrainGraphs(build, lambda batch: batch["input_mask"].shape[-1])


class Trainer:
    """Trains `model` through `step_module` on one task and keeps the best dev checkpoint in `model_dir`."""

    def __init__(
        self,
        model: flow.nn.Module,
        step_module: flow.nn.Module,
        settings: TrainSettings,
        train_split: SplitLike,
        eval_splits: dict[str, SplitLike],
        metrics: tuple[str, ...],
        model_dir: Path,
        device: str | Placement = "cpu",
        step_inputs: StepInputs | None = None,
        extra_state: dict | None = None,
        eager: bool = False,
        evaluator=None,
    ):
        self.model, self.step_module, self.settings = model, step_module, settings
        self.train_split = as_split(train_split)
        self.eval_splits: dict[str, Split] = {name: as_split(split) for name, split in eval_splits.items()}
        self.metrics = metrics
        self.model_dir = model_dir
        self.placement = device if isinstance(device, Placement) else Placement(device)
        self.step_inputs = step_inputs or (lambda step, total: ())
        self.extra_state = extra_state or {}
        self.main_metric = metrics[0]
        self.eager = eager
        self.evaluator = evaluator  # fit's (by default an Evaluator of the task's metrics), which evaluate_best reuses

    # ------------------------------------------------------------ the loop

    def fit(self) -> RunState:
        """Train to the end (resuming from train_state/ if a previous run was interrupted)."""
        state = self._start_or_resume()
        self._epoch_start = time.perf_counter()  # the first epoch's time includes the teacher cache's pass
        train = teacher_cache.prepare(
            self.step_module,
            self.train_split,
            self.model_dir,
            self.placement,
            self.settings.teacher_cache,
            self.settings.eval_batch_size,
            self.settings.length_buckets == "auto",
        )
        seed_everything(self.step_module, self.settings.seed + state.step)
        # one seed for the whole run: a resumed run reads the same order and skips what it has trained on
        data = OFRecordDataset(
            train,
            self.settings.batch_size,
            shuffle=self.settings.shuffle,
            seed=self.settings.seed,
            placement=self.placement,
        )
        if self.placement.distributed:
            log.info(
                "%d processes, %d examples per process and step: global batch %d",
                self.placement.world_size,
                self.settings.batch_size,
                self.settings.batch_size * self.placement.world_size,
            )
        steps_per_epoch = math.ceil(data.num_examples / (self.settings.batch_size * self.placement.world_size))
        total = self.total_steps(steps_per_epoch)
        batches = self._stream(data, train, steps_per_epoch)
        scheduled = sorted(self._schedule_values(0, total))
        graph = build_step_runner(
            self.step_module,
            [*data.names, *scheduled],
            self.settings,
            total,
            self.placement,
            self.eager,
            first_step=state.step,
            lengths=batches.boundaries or [train.seq_length()],
        )
        if state.step:
            self._load_train_state(graph)
            log.info(
                "resuming %s from step %d of %d (the data order goes on where it stopped: skipping the %d "
                "batches read so far)",
                self.model_dir,
                state.step,
                total,
                state.step,
            )
            batches.skip(state.step)
        evaluator = self.evaluator = self.evaluator or Evaluator(
            self.model,
            self.eval_splits["eval"],
            self.metrics,
            self.settings.eval_batch_size,
            self.placement,
            self.settings.length_buckets,
        )
        self.model.train()
        progress = tqdm(
            total=total,
            initial=state.step,
            desc=f"train {self.model_dir.name}",
            unit="step",
            dynamic_ncols=True,
            disable=None if self.placement.writer else True,
        )
        self._last_log = (time.perf_counter(), state.step)
        self._last_save = time.perf_counter()
        self.events = EventLog(self.settings.tensorboard, self.model_dir.name, self.placement.writer)
        with logging_redirect_tqdm(), contextlib.closing(self.events):  # (a diverged run's events are flushed too)
            while state.step < total:
                batch = batches()
                if scheduled:
                    batch.update(self._scheduled_features(batch, self._schedule_values(state.step, total)))
                outputs = graph.step(batch, *self.step_inputs(state.step, total))
                state.step += 1
                progress.update(1)
                if state.step % self.settings.log_every == 0 or state.step == total:
                    self._log_losses(outputs, state, total, progress)
                if state.step % steps_per_epoch == 0 or state.step == total:
                    self._end_of_epoch(graph, evaluator, state, math.ceil(state.step / steps_per_epoch), total)
                elif self._checkpoint_due(state.step):
                    self._save_train_state(graph, state)
        progress.close()
        return state

    def _schedule_values(self, step: int, total: int) -> dict[str, float]:
        """The step module's scheduled loss-weight factors at `step` ({} when nothing is scheduled)."""
        values = getattr(self.step_module, "schedule_values", None)
        return values(step, total) if values else {}

    def _scheduled_features(self, batch: dict[str, flow.Tensor], values: dict[str, float]) -> dict[str, flow.Tensor]:
        """Each value as a batch feature holding it in every row: a graph input that follows the batch through
        micro-batches and processes (a Python float in the graph would be frozen when it compiles)."""
        rows = batch["input_mask"].shape[0] // self.placement.world_size
        return self.placement.batch(
            {name: flow.tensor(np.full(rows, value, np.float32)) for name, value in values.items()}
        )

    def _stream(self, data: OFRecordDataset, train: Split, steps_per_epoch: int) -> TrainStream:
        """The run's batches: regrouped by length and cut (--length_buckets auto; eager steps to each batch's
        longest member, graphs to the buckets of the split's length histogram), or as read."""
        regroup = self.settings.length_buckets == "auto"
        boundaries = None
        if regroup and not self.eager:
            boundaries = buckets.boundaries_for(train.meta, train.seq_length())
            if boundaries is None:
                log.warning(
                    "%s/meta.json has no length histogram (converted by an earlier version): training "
                    "at the full length; re-run glue_process.sh for length buckets",
                    train.dir,
                )
                regroup = False
            else:
                summary = buckets.describe(train.meta["lengths"]["histogram"], boundaries)
                log.info(
                    "length buckets %s hold %s examples: %.0f %% of the positions computed are padding "
                    "(%.0f %% at the full length; --length_buckets off)",
                    "/".join(map(str, boundaries)),
                    "/".join(map(str, summary["examples"])),
                    100 * summary["padding_share"],
                    100 * train.meta["lengths"]["padding_share"],
                )
        return TrainStream(data, steps_per_epoch, self.settings.seed, self.placement, regroup, boundaries)

    def _checkpoint_due(self, step: int) -> bool:
        """train_state/ is saved every `checkpoint_every` steps and, at logging steps, when `checkpoint_minutes`
        have passed since the last save (rank 0's clock decides for every rank: they save together)."""
        if self.settings.checkpoint_every and step % self.settings.checkpoint_every == 0:
            return True
        if not self.settings.checkpoint_minutes or step % self.settings.log_every:
            return False
        return self.placement.agree(time.perf_counter() - self._last_save >= 60 * self.settings.checkpoint_minutes)

    def total_steps(self, steps_per_epoch: int) -> int:
        total = self.settings.epochs * steps_per_epoch
        return min(total, self.settings.max_steps) if self.settings.max_steps else total

    def _log_losses(self, outputs: dict[str, flow.Tensor], state: RunState, total: int, progress: tqdm) -> None:
        """Every `log_every` steps: each weighted loss term by name, their sum `loss`, the learning rate and
        the throughput of all processes (original: Metric)."""
        # (one value per micro-batch: their mean is the step's, as every term is a mean over rows)
        losses = {
            k: round(float(v.numpy().mean()), 6) for k, v in outputs.items() if k == "loss" or k.endswith("_loss")
        }
        warmup = warmup_steps(total, self.settings.warmup_proportion)
        lr = self.settings.learning_rate * warmup_linear_factor(state.step - 1, total, warmup)
        extra = {k: float(v.numpy().mean()) for k, v in outputs.items() if k.startswith("temperature_")}
        extra.update(
            {
                f"weight_{k[len(SCHEDULE_PREFIX) : -len('_loss')]}": v
                for k, v in self._schedule_values(state.step - 1, total).items()
            }
        )
        self.events.scalars("train", {**losses, "learning_rate": lr, **extra}, state.step)
        if not all(np.isfinite(v) for v in losses.values()):
            raise UsageError(
                f"training diverged: non-finite loss at step {state.step} ({losses}); lower "
                f"--learning_rate (now {self.settings.learning_rate}) or check the data"
            )
        state.losses.append({"step": state.step, **losses, **extra})
        now, (then, then_step) = time.perf_counter(), self._last_log
        self._last_log = (now, state.step)
        progress.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}")
        log.info(
            "step %d/%d lr %.3e %s %.1f examples/s",
            state.step,
            total,
            lr,
            json.dumps({**losses, **extra}),
            (state.step - then_step) * self.settings.batch_size * self.placement.world_size / (now - then),
        )

    def _end_of_epoch(
        self, graph: TrainGraphs | EagerStep, evaluator: Evaluator, state: RunState, epoch: int, total: int
    ) -> None:
        metrics, _, _ = evaluator.run()
        value = metrics[self.main_metric]
        # original: strict >, from 0.0, so a run could save nothing
        improved = not self.settings.select_best or state.best_value is None or value >= state.best_value
        now = time.perf_counter()
        seconds, self._epoch_start = round(now - self._epoch_start, 1), now
        state.history.append(
            {"epoch": epoch, "step": state.step, "metrics": metrics, "saved": improved, "seconds": seconds}
        )
        self.events.scalars("dev", metrics, state.step)
        log.info(
            "epoch %d (step %d/%d, %.1f s) dev %s%s",
            epoch,
            state.step,
            total,
            seconds,
            json.dumps({k: round(v, 4) for k, v in metrics.items()}),
            " — new best, saved" if improved else "",
        )
        if improved:
            state.best_value, state.best_epoch = value, epoch
            self.placement.write(lambda: save_weights(self.model, self.model_dir))
        state.finished = state.step == total
        self._save_train_state(graph, state)

    # ------------------------------------------------------------ train_state/

    def _start_or_resume(self) -> RunState:
        leftovers = [*self.model_dir.glob(f".{TRAIN_STATE_DIR}.*"), *self.model_dir.glob(f".{WEIGHTS_DIR}.tmp-*")]
        self.placement.write(
            lambda: [shutil.rmtree(p, ignore_errors=True) for p in leftovers]
        )  # what a killed run wrote
        settings = dataclasses.asdict(self.settings)
        previous = read_run_state(self.model_dir)
        if previous is None or previous.step == 0:
            return RunState(settings=settings, extra=self.extra_state)
        before = {**ADDED_SINCE, **previous.settings}
        changed = sorted(k for k in settings if before.get(k) != settings[k] and k not in RESUME_FREE) + sorted(
            k for k in {**previous.extra, **self.extra_state} if previous.extra.get(k) != self.extra_state.get(k)
        )
        if changed:
            raise UsageError(
                f"{self.model_dir / TRAIN_STATE_DIR} belongs to a run with other settings "
                f"(differs in: {changed}); use another model directory, the same settings and "
                "number of processes, or --overwrite to start again"
            )
        previous.settings = settings
        return previous

    def _frozen(self) -> set:
        """Names of the step module's frozen parameters (the teacher): rebuilt from their source on resume."""
        return {name for name, p in self.step_module.named_parameters() if not p.requires_grad}

    def _save_train_state(self, graph: TrainGraphs | EagerStep, state: RunState) -> None:
        """Everything resuming needs except frozen weights, written to a temporary folder and renamed."""
        self._last_save = time.perf_counter()
        staged = self.model_dir / f".{TRAIN_STATE_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(staged, ignore_errors=True)
        frozen = self._frozen()
        saved = io.local_copies(graph.state_dict())
        saved[STEP_MODULE] = {k: v for k, v in saved[STEP_MODULE].items() if k not in frozen}

        def write() -> None:
            try:
                flow.save(saved, str(staged / "graph"))
                write_json_atomic(staged / STATE_FILE, dataclasses.asdict(state))
                replace_dir(staged, self.model_dir / TRAIN_STATE_DIR)
            finally:
                shutil.rmtree(staged, ignore_errors=True)

        self.placement.write(write)

    def _load_train_state(self, graph: TrainGraphs | EagerStep) -> None:
        saved = flow.load(str(self.model_dir / TRAIN_STATE_DIR / "graph"))
        module_state = saved.pop(STEP_MODULE)
        expected = set(self.step_module.state_dict()) - self._frozen()
        if set(module_state) != expected:
            raise UsageError(
                f"{self.model_dir / TRAIN_STATE_DIR} does not match this run's model (differs in "
                f"{sorted(set(module_state) ^ expected)[:5]}); use --overwrite to start again"
            )
        io.load_state(self.step_module, module_state, str(self.model_dir / TRAIN_STATE_DIR), skip=tuple(self._frozen()))
        graph.load_state_dict(saved)

    # ------------------------------------------------------------ final evaluation

    def evaluate_best(self) -> dict[str, Any]:
        """Reload the saved best weights and evaluate them (original: reported the last epoch's)."""
        load_weights(self.model, self.model_dir)
        # the epochs' evaluator again: a second compiled pass would hold as much memory again
        return evaluate(
            self.model,
            self.eval_splits,
            self.metrics,
            self.settings.eval_batch_size,
            self.placement,
            self.model_dir,
            {"eval": self.evaluator} if self.evaluator else {},
            self.settings.length_buckets,
        )


def evaluate(
    model: flow.nn.Module,
    eval_splits: dict[str, SplitLike],
    metrics: tuple[str, ...],
    batch_size: int,
    device: str | Placement,
    model_dir: Path,
    evaluators: dict[str, Evaluator] | None = None,
    length_buckets: str = "auto",
) -> dict[str, Any]:
    """Metrics on every evaluation split (MNLI: matched and mismatched), with size and throughput; `evaluators`
    already built for some splits are reused."""
    results: dict[str, Any] = {}
    placement = device if isinstance(device, Placement) else Placement(device)
    for name, split in eval_splits.items():
        evaluator = (evaluators or {}).get(name) or Evaluator(
            model, split, metrics, batch_size, placement, length_buckets
        )
        values, _, timing = evaluator.run()
        entry = {
            **values,
            "num_examples": evaluator.num_examples,
            "examples_per_second": round(timing["examples_per_second"], 1),
            "eval_seconds": round(timing["seconds"], 3),
        }
        if name == "eval":
            results.update(entry)
        else:
            results[name] = entry
    results["model"] = model_size(model, model_dir)
    results["batch_size"], results["device"] = batch_size, placement.device
    results["length_buckets"] = length_buckets
    if placement.distributed:
        results["processes"] = placement.world_size
    return results
