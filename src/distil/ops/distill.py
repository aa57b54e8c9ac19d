"""The distillation operators of the original platform (Oneflow-Model-Compression
`knowledge_distill_util.py`) plus BERT-PKD's patient loss.

Each returns a scalar, works eagerly and inside `flow.nn.Graph`, and detaches the teacher inputs,
so gradients reach the student only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from numbers import Integral

from distil.runtime import import_oneflow

flow = import_oneflow()
F = flow.nn.functional

LayerMap = str | Sequence[int]
PRED_MODES = ("soft_ce", "kl", "mse")
MAPPINGS = ("uniform", "last")
MASKED = -100.0  # attention scores at or below this are padding keys (the model adds -10000)


def pred_distill(
    student_logits: flow.Tensor,
    teacher_logits: flow.Tensor,
    temperature: float | flow.Tensor = 1.0,
    mode: str = "soft_ce",
) -> flow.Tensor:
    """Soft-label (prediction) distillation; p_t = softmax(z_t/T), log q_s = log_softmax(z_s/T).

    soft_ce (the original): mean over all B·C elements of -p_t·log q_s (no T²);
    kl: T² · (1/B) Σ_b Σ_c p_t (log p_t - log q_s) (Hinton); mse: mean((z_s - z_t)²), T ignored.
    Regression (C == 1, STS-B) has no soft labels: every mode returns mean((z_s - z_t)²).

    Args:
        student_logits: (B, C). teacher_logits: (B, C), detached here.
        temperature: T > 0, or one per example, (B, 1) (`dynamic_temperature`). mode: one of PRED_MODES.
    Returns:
        A scalar tensor.
    """
    if mode not in PRED_MODES:
        raise ValueError(f"unknown pred_distill mode '{mode}'; valid modes: {', '.join(PRED_MODES)}")
    if tuple(student_logits.shape) != tuple(teacher_logits.shape):
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    teacher_logits = teacher_logits.detach()
    if mode == "mse" or student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits, teacher_logits)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    if mode == "soft_ce":
        return (-F.softmax(teacher_logits / temperature, dim=-1) * log_q).mean()
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, C)
    kl = (flow.exp(log_p) * (log_p - log_q)).sum(dim=-1)  # (B,)
    if isinstance(temperature, flow.Tensor):
        return (kl * (temperature * temperature).reshape(-1)).mean()
    return kl.mean() * (temperature * temperature)


TEMPERATURE_SCHEDULES = ("constant", "flsw", "cwsm")


def dynamic_temperature(
    schedule: str,
    student_logits: flow.Tensor,
    teacher_logits: flow.Tensor,
    base: float,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> float | flow.Tensor:
    """The soft-label temperature, per example (B, 1), from the batch's logits (arXiv 1911.07471, as TextBrewer's
    temperature schedulers compute it; no gradient flows through it):
    flsw: w = (1 - cos(z_s, z_t))^gamma, T = base + beta·(mean(w) - w) (examples the student already matches
    get a higher temperature); cwsm: w = 1 / (max softmax(z_s) + 1e-3), T = base + beta·(mean(w) - w);
    constant: `base`."""
    if schedule not in TEMPERATURE_SCHEDULES:
        raise ValueError(f"unknown temperature schedule '{schedule}' (known: {', '.join(TEMPERATURE_SCHEDULES)})")
    if schedule == "constant":
        return base
    s = student_logits.detach()
    if schedule == "flsw":
        t = teacher_logits.detach()
        s = s / (flow.sqrt((s * s).sum(dim=-1, keepdim=True)) + 1e-4)
        t = t / (flow.sqrt((t * t).sum(dim=-1, keepdim=True)) + 1e-4)
        w = flow.pow(1.0 - (s * t).sum(dim=-1, keepdim=True), gamma)
    else:
        w = 1.0 / (F.softmax(s, dim=-1).max(dim=-1, keepdim=True)[0] + 1e-3)
    return base + (w.mean() - w) * beta


def layer_mapping(num_student_layers: int, num_teacher_layers: int, mapping: LayerMap = "uniform") -> list[int]:
    """The teacher index for each student index 0..L_s (0 = embeddings, i = layer i).

    "uniform": i·(L_t/L_s); "last": 0, then L_t - L_s + i; or an explicit list of L_s+1 indices in [0, L_t].
    """
    n_s, n_t = num_student_layers, num_teacher_layers
    if n_s < 1 or n_t < 1:
        raise ValueError(f"need at least one layer on each side (student {n_s}, teacher {n_t})")
    if isinstance(mapping, str):
        if mapping == "uniform":
            if n_t % n_s:
                raise ValueError(
                    f"teacher has {n_t} layers, student {n_s}: {n_t} is not divisible by {n_s}; "
                    "give an explicit mapping"
                )
            return [i * (n_t // n_s) for i in range(n_s + 1)]
        if mapping == "last":
            if n_s > n_t:
                raise ValueError(
                    f"mapping 'last' needs a student no deeper than its teacher (student {n_s} layers, teacher {n_t})"
                )
            return [0] + [n_t - n_s + i for i in range(1, n_s + 1)]
        raise ValueError(
            f"unknown layer mapping '{mapping}'; use one of {', '.join(MAPPINGS)} or a list of teacher indices"
        )
    if not isinstance(mapping, (list, tuple)):
        raise ValueError(
            f"a layer mapping is a name ({', '.join(MAPPINGS)}) or a list/tuple, not {type(mapping).__name__}"
        )
    if len(mapping) != n_s + 1:
        raise ValueError(
            f"an explicit mapping needs {n_s + 1} teacher indices (student indices 0..{n_s}), "
            f"got {len(mapping)}: {list(mapping)}"
        )
    bad = [m for m in mapping if isinstance(m, bool) or not isinstance(m, Integral) or not 0 <= m <= n_t]
    if bad:
        raise ValueError(f"explicit mapping {list(mapping)} has entries {bad} outside the teacher indices 0..{n_t}")
    return [int(m) for m in mapping]


def _pairs(student: Sequence[flow.Tensor], teacher: Sequence[flow.Tensor], mapping: LayerMap) -> list[tuple]:
    """(student index, teacher index) for hidden-state lists (index 0 = embeddings)."""
    return list(enumerate(layer_mapping(len(student) - 1, len(teacher) - 1, mapping)))


def _check_shapes(kind: str, i: int, j: int, s: flow.Tensor, t: flow.Tensor) -> None:
    if tuple(s.shape) != tuple(t.shape):
        hint = " (project the student to the teacher width first)" if kind == "layer" else ""
        raise ValueError(
            f"{kind} pair student {i} <-> teacher {j}: shapes {tuple(s.shape)} and {tuple(t.shape)} differ{hint}"
        )


def layer_distill(
    student_reps: Sequence[flow.Tensor],
    teacher_reps: Sequence[flow.Tensor],
    mapping: LayerMap = "uniform",
    mask: flow.Tensor | None = None,
) -> flow.Tensor:
    """Σ over mapped pairs (i, m(i)), i = 0..L_s, of mean((h_s[i] - h_t[m(i)])²): over every position (the
    original, padding included) or, given `mask`, over the real tokens only (TextBrewer's masked loss), a
    value that does not change when a batch is cut to a shorter length.

    Args:
        student_reps: L_s+1 tensors (B, S, H), embeddings first, already projected to the teacher width H.
        teacher_reps: L_t+1 tensors (B, S, H), detached here.
        mapping: see `layer_mapping`.
        mask: (B, S), 1 for real tokens, or None.
    Returns:
        A scalar tensor.
    """
    real = None if mask is None else flow.cast(mask, flow.float32)  # (B, S)
    total = None
    for i, j in _pairs(student_reps, teacher_reps, mapping):
        _check_shapes("layer", i, j, student_reps[i], teacher_reps[j])
        s, t = student_reps[i], teacher_reps[j].detach()
        term = F.mse_loss(s, t) if real is None else _masked_mean_squared(s, t, real)
        total = term if total is None else total + term
    return total


def _masked_mean_squared(s: flow.Tensor, t: flow.Tensor, real: flow.Tensor) -> flow.Tensor:
    """mean((s - t)²) over the positions `real` (B, S) keeps, s and t (B, S, H).

    Summed over H first, then weighted by the mask at the same shape: OneFlow 0.9's CPU multiply of
    (B, S, H) by a (B, S, 1) mask takes ~25x as long (bench/bench_tinybert.py).
    """
    diff = s - t
    return ((diff * diff).sum(dim=-1) * real).sum() / (real.sum() * s.shape[-1])


def att_distill(
    student_atts: Sequence[flow.Tensor],
    teacher_atts: Sequence[flow.Tensor],
    mapping: LayerMap = "uniform",
    mask: flow.Tensor | None = None,
) -> flow.Tensor:
    """Σ over student layers i = 1..L_s of mean((A_s[i] - A_t[m(i)])²), where entries <= -100 (padding keys)
    of both score tensors are set to 0 first (TinyBERT). m is `layer_mapping`; list index = layer - 1.
    Given `mask`, the mean runs over the (query, key) pairs of real tokens only (padding pairs weigh 0, so
    nothing is zeroed), a value that does not change when a batch is cut to a shorter length.

    Args:
        student_atts: L_s tensors (B, heads, S, S) of pre-softmax scores.
        teacher_atts: L_t tensors (B, heads, S, S), detached here; heads must match the student's.
        mapping: see `layer_mapping` (an explicit list still has L_s+1 entries; entry 0 is unused).
        mask: (B, S), 1 for real tokens, or None.
    Returns:
        A scalar tensor.
    """
    real = None if mask is None else flow.cast(mask, flow.float32)  # (B, S)
    total = None
    for s, t in attention_pairs(student_atts, teacher_atts, mapping):
        term = _zeroed_padding_mse(s, t) if real is None else _real_pairs_mse(s, t, real)
        total = term if total is None else total + term
    return total


def attention_pairs(
    student_atts: Sequence[flow.Tensor], teacher_atts: Sequence[flow.Tensor], mapping: LayerMap = "uniform"
) -> Iterator[tuple[flow.Tensor, flow.Tensor]]:
    """(student scores of layer i, teacher scores of layer m(i), detached) for i = 1..L_s, checked: the
    teacher embeddings have no attention, and maps compare head by head."""
    targets = layer_mapping(len(student_atts), len(teacher_atts), mapping)
    for i in range(1, len(student_atts) + 1):
        j = targets[i]
        if j == 0:
            raise ValueError(f"student layer {i} is mapped to the teacher embeddings (0), which have no attention")
        s, t = student_atts[i - 1], teacher_atts[j - 1].detach()
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"attention maps can only be compared head by head: student layer {i} has "
                f"{s.shape[1]} heads, teacher layer {j} has {t.shape[1]}"
            )
        _check_shapes("attention", i, j, s, t)
        yield s, t


def _zeroed_padding_mse(s: flow.Tensor, t: flow.Tensor) -> flow.Tensor:
    """mean((s - t)²) over every entry, scores <= MASKED (padding keys) set to 0 first (the original)."""
    # = flow.where(x <= -100, 0, x); a scalar `where` promotes to float64, zeros_like warns in nn.Graph
    return F.mse_loss(s.masked_fill(s <= MASKED, 0.0), t.masked_fill(t <= MASKED, 0.0))


def _real_pairs_mse(s: flow.Tensor, t: flow.Tensor, real: flow.Tensor) -> flow.Tensor:
    """mean((s - t)²) over the (query, key) pairs of real tokens, s and t (B, heads, S, S), `real` (B, S).

    The padding keys' additive mask cancels in s - t and their pairs weigh 0, so nothing is zeroed first.
    Keys are summed by a matrix product with the key mask and heads by a sum before the query mask applies:
    OneFlow 0.9's CPU masked_fill and broadcast multiply over (B, heads, S, S) made this term ~25x slower
    (bench/bench_tinybert.py).
    """
    batch, heads, seq, _ = s.shape
    diff = s - t
    per_query = flow.matmul(diff * diff, real.unsqueeze(1).unsqueeze(-1))  # (B, heads, S, 1)
    per_query = per_query.reshape(batch, heads, seq).sum(dim=1)  # (B, S)
    pairs = (real.sum(dim=1) * real.sum(dim=1)).sum() * heads
    return (per_query * real).sum() / pairs


def pkd_patient_loss(
    student_reps: Sequence[flow.Tensor], teacher_reps: Sequence[flow.Tensor], mapping: LayerMap = "uniform"
) -> flow.Tensor:
    """BERT-PKD's patient loss (Sun et al. 2019) as its official code scales it: the mean over batch ×
    intermediate pairs (i = 1..L_s-1, teacher layer m(i)) × hidden of (c_s[i]/‖c_s[i]‖ - c_t[m(i)]/‖c_t[m(i)]‖)²,
    c = the [CLS] vector (position 0); mapped uniformly this is the paper's PKD-skip.

    Args:
        student_reps: L_s+1 tensors (B, S, H), embeddings first, L_s >= 2, at the teacher width.
        teacher_reps: L_t+1 tensors (B, S, H), detached here.
        mapping: see `layer_mapping`.
    Returns:
        A scalar tensor.
    """
    if len(student_reps) < 3:
        raise ValueError(
            f"the patient loss needs a student with at least 2 layers (intermediate layers "
            f"exclude the last one); got {len(student_reps) - 1}"
        )
    pairs = _pairs(student_reps, teacher_reps, mapping)[1:-1]
    for i, j in pairs:
        _check_shapes("layer", i, j, student_reps[i], teacher_reps[j])
    s = F.normalize(flow.stack([student_reps[i][:, 0] for i, _ in pairs], dim=1), p=2.0, dim=-1)  # (B, L, H)
    t = F.normalize(flow.stack([teacher_reps[j].detach()[:, 0] for _, j in pairs], dim=1), p=2.0, dim=-1)
    return F.mse_loss(s, t)
