"""AdamW with the original's settings: eps 1e-6, decay except bias/LayerNorm, clip 1.0, warm-up then linear decay."""

from __future__ import annotations

from typing import Iterable, Tuple

from distil.runtime import import_oneflow
from distil.train.schedules import warmup_steps

flow = import_oneflow()

NO_DECAY = ("bias", "LayerNorm", "layer_norm")  # substrings, as the original's weight_decay_excludes


def build_optimizer(named_parameters: Iterable[Tuple[str, "flow.nn.Parameter"]], learning_rate: float,
                    weight_decay: float, total_steps: int, warmup_proportion: float = 0.1,
                    clip_grad: float = 1.0, epsilon: float = 1e-6):
    """AdamW over trainable parameters in two groups, and its LR schedule (stepped inside the graph).

    Clipping lives in the param groups: that is how OneFlow 0.9's nn.Graph applies it.
    """
    decay, no_decay = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            (no_decay if any(s in name for s in NO_DECAY) else decay).append(param)
    clip = {"clip_grad_max_norm": clip_grad, "clip_grad_norm_type": 2.0} if clip_grad > 0 else {}
    groups = [{"params": ps, "weight_decay": wd, **clip} for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps]
    optimizer = flow.optim.AdamW(groups, lr=learning_rate, eps=epsilon)
    warmup = warmup_steps(total_steps, warmup_proportion)
    decay_schedule = flow.optim.lr_scheduler.PolynomialLR(
        optimizer, decay_batch=max(1, total_steps - warmup), end_learning_rate=0.0, power=1.0)
    if warmup == 0:
        return optimizer, decay_schedule
    schedule = flow.optim.lr_scheduler.WarmupLR(decay_schedule, warmup_factor=0.0, warmup_iters=warmup,
                                                warmup_method="linear", warmup_prefix=True)
    return optimizer, schedule
