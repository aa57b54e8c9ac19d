"""Where a run computes: the one place that puts every module and every batch of a run on its device,
or, under `python -m oneflow.distributed.launch`, on every rank.

Training places the whole step module (student, frozen teacher, fit_dense, Theseus's mixed encoder)
before the optimizer is built; evaluation places the eval model; the augmentation's masked LM goes
through the same object. Nothing else in the package calls `.to(device)` or `.to_global`.

With N processes (data parallelism), parameters are global tensors broadcast to all ranks and
batches are split on dim 0 (each rank reads its own shard of the records); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distil.errors import UsageError
from distil.runtime import import_oneflow

flow = import_oneflow()


def release_graphs() -> None:
    """Every rank of a multi-process job closes the compiled graphs it no longer references, at this point.

    Under N processes, closing an nn.Graph waits until the other ranks close theirs (measured: a rank
    closing one while the other waits in a barrier hangs both). Graphs in reference cycles close
    whenever Python's collector runs, which differs between ranks (rank 0 alone writes files), so a
    run's end collects them explicitly on every rank, then meets.
    """
    gc.collect()
    flow.comm.barrier()


def resolve_device(name: str, fp16: bool = False) -> str:
    """'auto' -> 'cuda' when OneFlow sees a GPU, else 'cpu'; 'cuda' / 'cuda:K' must be visible; `fp16`
    (mixed precision) needs CUDA."""
    device = _visible_device(name)
    if fp16 and not device.startswith("cuda"):
        raise UsageError(
            f"--use_fp16 (USE_FP16) needs a GPU: OneFlow 0.9 has no float16 kernels on the CPU "
            f"(this run's device is {device}); leave it False"
        )
    return device


def _visible_device(name: str) -> str:
    if name == "auto":
        return "cuda" if flow.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name not in ("cuda", *(f"cuda:{k}" for k in range(64))):
        raise UsageError(f"--device {name}: expected auto, cpu, cuda or cuda:K")
    if not flow.cuda.is_available():
        raise UsageError(
            f"--device {name}, but OneFlow sees no GPU on this machine (CUDA_VISIBLE_DEVICES, driver); "
            "use --device cpu or auto"
        )
    if ":" in name and int(name.split(":")[1]) >= flow.cuda.device_count():
        raise UsageError(f"--device {name}, but only {flow.cuda.device_count()} GPU(s) are visible")
    return name


class Placement:
    """A run's device, ranks and precision; `module` and `batch` put parameters and inputs there.

    `fp16` (the original's --use_fp16): the graphs compute in mixed precision (OneFlow's nn.Graph AMP,
    with dynamic loss scaling when training). OneFlow 0.9 has no float16 kernels on the CPU.
    """

    def __init__(self, device: str = "cpu", fp16: bool = False):
        self.device = resolve_device(device, fp16)
        self.fp16 = fp16
        self.world_size, self.rank = flow.env.get_world_size(), flow.env.get_rank()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def writer(self) -> bool:
        """Only rank 0 writes files."""
        return self.rank == 0

    def ranks(self, device_type: str = "") -> flow.placement:
        return flow.placement(device_type or self.device.split(":")[0], ranks=list(range(self.world_size)))

    def module(self, module: flow.nn.Module) -> flow.nn.Module:
        """Move every parameter and buffer of `module` (and its submodules) to the run's device, in place;
        with N processes, make them global tensors broadcast over all ranks."""
        # placing twice fails in OneFlow 0.9 (a second to_global; .to after an nn.Graph has run it)
        if self.distributed:
            if any(p.is_global for p in module.parameters()):
                return module
            return module.to_global(placement=self.ranks(), sbp=flow.sbp.broadcast)
        if all(p.device == flow.device(self.device) for p in module.parameters()):
            return module
        return module.to(self.device)

    def batch(self, batch: dict[str, flow.Tensor]) -> dict[str, flow.Tensor]:
        """A batch from the reader, on the device; with N processes it is already global, split on dim 0."""
        if self.distributed:
            return {k: v.to_global(placement=self.ranks(), sbp=flow.sbp.split(0)) for k, v in batch.items()}
        return {k: v.to(self.device) for k, v in batch.items()}

    def autocast(self):
        """Eager mixed precision under --use_fp16 (the graphs use nn.Graph AMP instead); else a no-op."""
        return flow.autocast(device_type="cuda", dtype=flow.float16) if self.fp16 else contextlib.nullcontext()

    def reader(self) -> dict:
        """The OFRecordReader's placement: each rank reads its own part files."""
        return {"placement": self.ranks("cpu"), "sbp": flow.sbp.split(0)} if self.distributed else {}

    def gather(self, tensor: flow.Tensor) -> flow.Tensor:
        """Every rank's rows on every rank (inside a graph: a broadcast global tensor)."""
        return tensor.to_global(sbp=flow.sbp.broadcast) if self.distributed else tensor

    def barrier(self) -> None:
        if self.distributed:
            flow.comm.barrier()

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank (ranks that must take the same branch around a collective)."""
        if not self.distributed:
            return flag
        value = flow.tensor([int(flag)], dtype=flow.int64)
        flow.comm.broadcast(value, 0)
        return bool(value.item())

    def everyones(self, rows: np.ndarray) -> np.ndarray:
        """Every rank's `rows` (the same shape on each), stacked on a new first axis in rank order."""
        if not self.distributed:
            return rows[None]
        mine = flow.tensor(rows[None]).to_global(placement=self.ranks("cpu"), sbp=flow.sbp.split(0))
        return mine.to_global(sbp=flow.sbp.broadcast).to_local().numpy()

    def largest(self, values: Sequence[int]) -> list[int]:
        """Each of `values` maximised over all ranks (every rank passes as many)."""
        return [int(v) for v in self.everyones(np.asarray(values, dtype=np.int64)).max(axis=0)]

    def release(self) -> None:
        """Under N processes, every rank closes here the compiled graphs it no longer references."""
        if self.distributed:
            release_graphs()

    def write(self, write: Callable[[], Any]) -> None:
        """Files of a run are written by rank 0 alone; the other ranks wait until they are there."""
        if self.writer:
            write()
        self.barrier()

    def __repr__(self) -> str:
        return f"Placement({self.device!r}, rank {self.rank} of {self.world_size}{', fp16' if self.fp16 else ''})"
