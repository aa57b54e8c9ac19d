"""Step-dependent numbers as pure functions of (step, total): the learning-rate schedule and loss-weight schedules."""

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


WEIGHT_SCHEDULES = ("constant", "linear_decay", "linear_growth")


def weight_factor(schedule: str, step: int, total_steps: int) -> float:
    """A loss weight's multiplier at `step` (0-based) of `total_steps`: TextBrewer's weight schedulers of the
    training progress r = step / total: constant 1, linear_decay 1 - r, linear_growth r."""
    if schedule not in WEIGHT_SCHEDULES:
        raise ValueError(f"unknown weight schedule '{schedule}' (known: {', '.join(WEIGHT_SCHEDULES)})")
    progress = step / max(1, total_steps)
    return {"constant": 1.0, "linear_decay": 1.0 - progress, "linear_growth": progress}[schedule]
