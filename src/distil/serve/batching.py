"""Triton's dynamic batching for one model, and Triton's per-model metrics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import UnknownMetricFamily

from distil.predict import logits_by_length
from distil.serve.models import Model

log = logging.getLogger(__name__)

# An engine call's fixed cost in tokens of one row: onnxruntime on this EPYC, FP32 and INT8 alike, costs about
# 0.2-0.8 ms a call plus 0.02-0.04 ms a token, i.e. ~20 tokens a call (4L-312 student, widths 16-64).
CALL_COST_TOKENS = 20

COUNTERS = {  # Triton's metrics: name -> meaning (each cumulative, per model)
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (examples)",
    "nv_inference_exec_count": "Number of model executions performed (batches)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
}


class Metrics:
    """Triton's per-model counters, collected into a registry of this server's own."""

    def __init__(self, models: Sequence[str]):
        self.values = {model: dict.fromkeys(COUNTERS, 0) for model in models}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def add(self, model: str, **amounts: float) -> None:
        """Add to counters named without their `nv_inference_` prefix (only the event loop calls this)."""
        for name, amount in amounts.items():
            self.values[model][f"nv_inference_{name}"] += int(amount)

    def collect(self):
        for name, meaning in COUNTERS.items():
            family = UnknownMetricFamily(name, meaning, labels=["model"])
            for model, values in self.values.items():
                family.add_metric([model], values[name])
            yield family


class BatchFailed(Exception):
    """The batch holding a request could not be computed."""


@dataclasses.dataclass
class _Queued:
    features: dict[str, np.ndarray]
    future: asyncio.Future
    queued: float  # time.perf_counter() when queued

    @property
    def rows(self) -> int:
        return len(self.features["input_ids"])


class Batcher:
    """Triton's dynamic batcher for one model: queued requests run together, on the model's own thread."""

    def __init__(self, model: Model, max_batch_size: int, max_queue_delay_us: int, metrics: Metrics):
        self.model, self.max_batch_size, self.metrics = model, max_batch_size, metrics
        self.delay = max_queue_delay_us / 1e6
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"model-{model.name}")
        self.held: _Queued | None = None  # the request that did not fit into the last batch
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run(), name=f"batcher-{self.model.name}")

    async def stop(self) -> None:
        """After the drain, when no request waits any more."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.executor.shutdown(wait=True)

    async def infer(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, float, float]:
        """The request's logits, its seconds in the queue and its batch's seconds of compute."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Queued(features, future, time.perf_counter()))
        return await future

    async def _next_batch(self) -> list[_Queued]:
        first = self.held or await self.queue.get()
        self.held = None
        batch, rows, deadline = [first], first.rows, first.queued + self.delay
        while rows < self.max_batch_size:
            if self.queue.empty():
                try:
                    item = await asyncio.wait_for(self.queue.get(), deadline - time.perf_counter())
                except asyncio.TimeoutError:
                    break
            else:
                item = self.queue.get_nowait()
            if rows + item.rows > self.max_batch_size:
                self.held = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    def _compute(self, features: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, int]:
        """(On the worker thread) the logits of the batch's rows in order, and how many engine calls gave them:
        the rows sorted by length and split into calls, each cut to its longest text, where the padding saved
        outweighs a call's fixed cost (`length_groups`)."""
        rows = {name: np.concatenate([f[name] for f in features]) for name in features[0]}
        calls: list[int] = []
        engine = self.model.engine
        logits = logits_by_length(engine, rows, self.max_batch_size, engine.cuts, calls.append, CALL_COST_TOKENS)
        return logits, len(calls)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            try:
                logits, calls = await loop.run_in_executor(self.executor, self._compute, [q.features for q in batch])
            except Exception as e:  # (the batch's requests fail, the server goes on)
                log.exception("model %s: a batch of %d requests failed", self.model.name, len(batch))
                for queued in batch:
                    if not queued.future.done():
                        queued.future.set_exception(
                            BatchFailed(
                                f"model '{self.model.name}' failed on the batch "
                                f"holding this request: {type(e).__name__}: {e}"
                            )
                        )
                continue
            computed = time.perf_counter() - started
            self.metrics.add(self.model.name, exec_count=calls)
            start = 0
            for queued in batch:
                if not queued.future.done():
                    queued.future.set_result((logits[start : start + queued.rows], started - queued.queued, computed))
                start += queued.rows
