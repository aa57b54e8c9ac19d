"""Where a run computes: the one place that puts every module and every batch of a run on its device.

Training places the whole step module (student, frozen teacher, fit_dense, Theseus's mixed encoder)
before the optimizer is built; evaluation places the eval model; the augmentation's masked LM goes
through the same object. Nothing else in the package calls `.to(device)`.
"""

from __future__ import annotations

from typing import Dict

from distil.errors import UsageError
from distil.runtime import import_oneflow

flow = import_oneflow()


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when OneFlow sees a GPU, else 'cpu'; 'cuda' / 'cuda:K' must be visible."""
    if name == "auto":
        return "cuda" if flow.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if not name.startswith("cuda") or name not in ("cuda", *(f"cuda:{k}" for k in range(64))):
        raise UsageError(f"--device {name}: expected auto, cpu, cuda or cuda:K")
    if not flow.cuda.is_available():
        raise UsageError(f"--device {name}, but OneFlow sees no GPU on this machine (CUDA_VISIBLE_DEVICES, driver); "
                         "use --device cpu or auto")
    if ":" in name and int(name.split(":")[1]) >= flow.cuda.device_count():
        raise UsageError(f"--device {name}, but only {flow.cuda.device_count()} GPU(s) are visible")
    return name


class Placement:
    """A run's device; `module` and `batch` put parameters and inputs there."""

    def __init__(self, device: str = "cpu"):
        self.device = resolve_device(device)

    def module(self, module: flow.nn.Module) -> flow.nn.Module:
        """Move every parameter and buffer of `module` (and its submodules) to the run's device, in place."""
        return module.to(self.device)

    def batch(self, batch: Dict[str, flow.Tensor]) -> Dict[str, flow.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def __repr__(self) -> str:
        return f"Placement({self.device!r})"
