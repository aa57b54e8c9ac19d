"""AdamW with the original's settings: eps 1e-6, decay except bias/LayerNorm, clip 1.0, warm-up then linear decay.

Clipping uses one global norm over every trainable parameter (as torch.nn.utils.clip_grad_norm_ and
the original's single optimizer). OneFlow 0.9 clips each parameter group on its own, so the training
graph keeps one group and leaves bias/LayerNorm out of weight decay with the graph optimizer's
exclusion patterns (the original's `weight_decay_excludes`); the eager step uses two groups and clips
all of them at once (`EagerStep`). Both are checked step by step against PyTorch
(tests/test_train_parity.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from distil.runtime import import_oneflow
from distil.train.schedules import warmup_steps

flow = import_oneflow()

NO_DECAY = ("bias", "LayerNorm", "layer_norm")  # substrings, as the original's weight_decay_excludes


class GraphAdamW(flow.optim.AdamW):
    """AdamW whose nn.Graph update skips weight decay for variables whose names contain a NO_DECAY pattern."""

    def _generate_conf_for_graph(self, train_conf, vars_conf):
        confs = super()._generate_conf_for_graph(train_conf, vars_conf)
        for conf in confs:
            conf.weight_decay_conf.excludes.pattern.extend(NO_DECAY)
        return confs


def trainable(named_parameters: Iterable[tuple[str, flow.nn.Parameter]]) -> list[tuple[str, flow.nn.Parameter]]:
    return [(name, param) for name, param in named_parameters if param.requires_grad]


def build_optimizer(
    named_parameters: Iterable[tuple[str, flow.nn.Parameter]],
    learning_rate: float,
    weight_decay: float,
    total_steps: int,
    warmup_proportion: float = 0.1,
    clip_grad: float = 1.0,
    epsilon: float = 1e-6,
    graph: bool = True,
):
    """AdamW over the trainable parameters and its LR schedule (stepped inside the graph when `graph`).

    `graph`: one group that the graph clips by the global norm `clip_grad` (0 = no clipping); else two
    groups (decay / no decay) for eager steps, which clip with `clip_global_norm`.
    """
    params = trainable(named_parameters)
    if graph:
        clip = {"clip_grad_max_norm": clip_grad, "clip_grad_norm_type": 2.0} if clip_grad > 0 else {}
        optimizer = GraphAdamW(
            [{"params": [p for _, p in params], "weight_decay": weight_decay, **clip}], lr=learning_rate, eps=epsilon
        )
    else:
        decay = [p for name, p in params if not any(s in name for s in NO_DECAY)]
        no_decay = [p for name, p in params if any(s in name for s in NO_DECAY)]
        groups = [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps]
        optimizer = flow.optim.AdamW(groups, lr=learning_rate, eps=epsilon)
    warmup = warmup_steps(total_steps, warmup_proportion)
    decay_schedule = flow.optim.lr_scheduler.PolynomialLR(
        optimizer, decay_batch=max(1, total_steps - warmup), end_learning_rate=0.0, power=1.0
    )
    if warmup == 0:
        return optimizer, decay_schedule
    schedule = flow.optim.lr_scheduler.WarmupLR(
        decay_schedule, warmup_factor=0.0, warmup_iters=warmup, warmup_method="linear", warmup_prefix=True
    )
    return optimizer, schedule


def clip_global_norm(optimizer, max_norm: float) -> None:
    """Scale all gradients of `optimizer` together so that their joint L2 norm is at most `max_norm`."""
    params = [p for group in optimizer.param_groups for p in group.parameters if p.grad is not None]
    if params:
        flow.nn.utils.clip_grad_norm_(params, max_norm, 2.0)
