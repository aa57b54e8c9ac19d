"""Dropout with an independent mask at every site, eagerly and inside `nn.Graph` (OneFlow 0.9 has neither).

OneFlow 0.9's `nn.Dropout` gives every instance its own `flow.Generator()`, all with the same fixed
seed, so in eager mode the k-th call of every dropout module draws the same mask; inside an nn.Graph
its dropout ignores generators and seeds altogether, and every random op of a graph reads one shared
stream. Either way each dropout site of a BERT zeroed the same hidden units in a step, at every
layer: the residual stream lost them for good, gradients to the lower layers shrank or exploded
(measured against PyTorch: 0.1x-40x the expected norm), and a pretrained 3-layer student never left
the majority class (issue 8). `flow.rand` with a generator of its own draws an independent stream
in both modes, so each site here owns one, seeded from the run's seed by `seed_dropout`.
"""

from __future__ import annotations

import itertools
from typing import Dict

from distil.runtime import import_oneflow

flow = import_oneflow()

_construction_order = itertools.count()


class Dropout(flow.nn.Module):
    """Zero each element with probability `p` in training and scale the rest by 1/(1-p); identity in eval."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.seed = next(_construction_order)
        self._generators: Dict[str, "flow.Generator"] = {}

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._generators.clear()

    def _generator(self, device_type: str) -> "flow.Generator":
        if device_type not in self._generators:
            generator = flow.Generator(device=device_type)
            generator.manual_seed(self.seed)
            self._generators[device_type] = generator
        return self._generators[device_type]

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.is_global:  # N processes: one mask over the global batch, each rank drawing its own rows
            noise = flow.rand(*x.shape, dtype=x.dtype, placement=x.placement, sbp=x.sbp,
                              generator=self._generator(x.placement.type))
        else:
            noise = flow.rand(*x.shape, dtype=x.dtype, device=x.device, generator=self._generator(x.device.type))
        # keep = 1 where noise >= p: floor(noise + 1 - p); a comparison with a scalar is ~10x slower on CPU
        keep = flow.floor(noise + (1.0 - self.p))
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def seed_dropout(module: flow.nn.Module, seed: int) -> int:
    """Give every Dropout in `module` its own stream derived from `seed`; returns how many there are.

    Call before the first step (an nn.Graph reads the generators when it compiles).
    """
    sites = [m for m in module.modules() if isinstance(m, Dropout)]
    for index, site in enumerate(sites):
        site.reseed(seed * 100_003 + index)
    return len(sites)
