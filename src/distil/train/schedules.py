"""Step-dependent numbers as pure functions of (step, total): the learning-rate schedule."""

from __future__ import annotations


def warmup_steps(total_steps: int, warmup_proportion: float) -> int:
    """Warm-up length as the original computes it: int(total × proportion)."""
    return int(total_steps * warmup_proportion)


def warmup_linear_factor(step: int, total_steps: int, warmup: int) -> float:
    """LR multiplier at `step` (0-based): linear warm-up from 0, then linear decay to 0 at `total_steps`.

    Mirrors OneFlow's WarmupLR(PolynomialLR(power=1)) that runs inside the training graph; used to
    log the learning rate, which the graph does not report back.
    """
    assert 0 <= step <= total_steps and 0 <= warmup <= total_steps
    if step < warmup:
        return step / warmup
    return (total_steps - step) / max(1, total_steps - warmup)
