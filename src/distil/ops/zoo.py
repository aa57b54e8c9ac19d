"""The loss zoo: TextBrewer 0.2.1's other intermediate-feature losses (`textbrewer.losses`), summed over layer
pairs the way `layer_distill` / `att_distill` pair them, so a recipe can swap MSE for any of them.

Like `distill.py`'s operators, each returns a scalar, works eagerly and inside `flow.nn.Graph`, detaches the
teacher inputs and, given `mask` (B, S) with 1 = real token, leaves padded positions out entirely: the value
does not change when a batch is cut to its longest real length. The mask must be 0/1 (it is used as weights).
On the CPU, OneFlow 0.9 broadcasts a (B, S, 1) mask over (B, S, H) ~25x slower than a same-shape multiply
(bench/bench_tinybert.py), so masks are applied after reducing over H, by a matmul, or expanded by a matmul.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

from distil.ops.distill import F, LayerMap, _check_shapes, _pairs, attention_pairs, flow

__all__ = ["att_ce", "fsp", "gram", "hidden_cos", "mmd", "nst"]

COS_EPS = 1e-12  # torch's cosine_embedding_loss adds this to each squared norm (aten Loss.cpp EPSILON)
FspPairs = Sequence[tuple[tuple[int, int], tuple[int, int]]]


def _over_h(x: flow.Tensor, ones: flow.Tensor) -> flow.Tensor:
    """(B, S, H) -> (B, S): Σ over H as a matmul with `ones` (B, 1, H); sum(dim=-1)'s backward is 3x slower."""
    return flow.matmul(x, ones, transpose_b=True).reshape(x.shape[0], x.shape[1])


def hidden_cos(
    student_reps: Sequence[flow.Tensor],
    teacher_reps: Sequence[flow.Tensor],
    mapping: LayerMap = "uniform",
    mask: flow.Tensor | None = None,
) -> flow.Tensor:
    """DistilBERT's cosine loss (TextBrewer `cos_loss`): Σ over mapped pairs (i, m(i)), i = 0..L_s, of the mean over
    positions (real tokens only, given `mask`) of 1 - cos(h_s[i], h_t[m(i)]), where, as torch's
    cosine_embedding_loss computes it, cos = s·t / sqrt((‖s‖² + 1e-12)(‖t‖² + 1e-12)).

    Args:
        student_reps: L_s+1 tensors (B, S, H), embeddings first, at the teacher width H.
        teacher_reps: L_t+1 tensors (B, S, H), detached here.
        mapping: see `layer_mapping`. mask: (B, S), 1 for real tokens, or None.
    """
    total, real = None, None
    for i, j in _pairs(student_reps, teacher_reps, mapping):
        _check_shapes("layer", i, j, student_reps[i], teacher_reps[j])
        s, t = student_reps[i], teacher_reps[j].detach()
        batch, seq, _ = s.shape
        real = _real(mask, batch, seq) if real is None else real
        ones = _ones(t[:, :1, :])  # (B, 1, H)
        norms = (_over_h(s * s, ones) + COS_EPS) * (_over_h(t * t, ones) + COS_EPS)  # (B, S)
        distance = 1.0 - _over_h(s * t, ones) * flow.rsqrt(norms)  # (B, S)
        term = distance.mean() if mask is None else (distance * real).sum() / real.sum()
        total = term if total is None else total + term
    return total


def att_ce(
    student_atts: Sequence[flow.Tensor],
    teacher_atts: Sequence[flow.Tensor],
    mapping: LayerMap = "uniform",
    mask: flow.Tensor | None = None,
) -> flow.Tensor:
    """Attention cross-entropy (TextBrewer `att_ce_loss`): Σ over student
    layers i = 1..L_s (teacher layer m(i), `att_distill`'s pairing) of -Σ_k softmax(A_t)_k · log_softmax(A_s)_k
    over keys k, averaged over (batch, head, query) positions; given `mask`, over real queries only, with padding
    keys weighted 0 (TextBrewer's masked branch). The softmaxes run over all keys: padding keys carry -10000, so
    their probability is exactly 0 in float32 and cutting the batch leaves the value unchanged.

    TextBrewer's mask=None branch zeroes softmax(A_t) wherever A_t <= -1e-3, i.e. at every negative pre-softmax
    score, not only at padding; here nothing is zeroed (padding keys have probability 0 already), which equals
    TextBrewer's value whenever the teacher's real scores are >= -1e-3.

    Computed per query as lse(A_s)·Σ_k p_k m_k - Σ_k p_k m_k A_s,k (m = key mask, or 1), sums over keys as
    matmuls with a key column (see `_logsumexp`): OneFlow 0.9's CPU log_softmax is off by up to ~4e-6, its
    logsumexp is ~40x slower than softmax, and a sum over the last axis backward ~4x slower than a matmul.

    Args:
        student_atts: L_s tensors (B, heads, S, S) of pre-softmax scores (padding keys carrying -10000).
        teacher_atts: L_t tensors (B, heads, S, S), detached here; heads must match the student's.
        mapping: see `layer_mapping` (an explicit list has L_s+1 entries; entry 0 is unused).
        mask: (B, S), 1 for real tokens, or None.
    """
    total, real = None, None
    for s, t in attention_pairs(student_atts, teacher_atts, mapping):
        batch, heads, seq, _ = s.shape
        real = _real(mask, batch, seq) if real is None else real
        ones = _ones(t[:, :1, :, :1])  # (B, 1, S, 1)
        keys = ones if mask is None else real.unsqueeze(1).unsqueeze(-1)  # (B, 1, S, 1)
        p = F.softmax(t, dim=-1)  # (B, h, S, S)
        weight = flow.matmul(p, keys)  # Σ_k p_k m_k
        cross = flow.matmul(p * s, keys)  # Σ_k p_k m_k s_k
        per_query = _logsumexp(s, ones) * weight - cross  # (B, h, S, 1)
        if mask is None:
            term = per_query.mean()
        else:
            term = (per_query.reshape(batch, heads, seq).sum(dim=1) * real).sum() / (real.sum() * heads)
        total = term if total is None else total + term
    return total


def nst(
    student_reps: Sequence[flow.Tensor],
    teacher_reps: Sequence[flow.Tensor],
    mapping: LayerMap = "uniform",
    mask: flow.Tensor | None = None,
) -> flow.Tensor:
    """Neuron selectivity transfer as TextBrewer computes it (`mmd_loss` with layer_S = [i, i], layer_T =
    [m(i), m(i)]; a variant of NST, arXiv 1707.01219, with a linear kernel over tokens): Σ over mapped pairs
    (i, m(i)), i = 0..L_s, of mean((h_s h_sᵀ / H_s - h_t h_tᵀ / H_t)²) over the (S, S) token-token entries of each
    example; given `mask`, over the pairs of real tokens only (Σ_b n_b² entries). Widths may differ.

    TextBrewer's masked branch divides the Gram matrices by the padded length S instead of the width, so its
    value changes with the padding; here both branches divide by the width (its mask=None branch exactly; its
    masked value is this one times (H/S)² when H_s = H_t = H).

    Args:
        student_reps: L_s+1 tensors (B, S, H_s), embeddings first.
        teacher_reps: L_t+1 tensors (B, S, H_t), detached here.
        mapping: see `layer_mapping`. mask: (B, S), 1 for real tokens, or None.
    """
    total, real = None, None
    for i, j in _pairs(student_reps, teacher_reps, mapping):
        s, t = student_reps[i], teacher_reps[j].detach()
        if tuple(s.shape[:2]) != tuple(t.shape[:2]):
            raise ValueError(
                f"nst pair student {i} <-> teacher {j}: (batch, length) {tuple(s.shape[:2])} and "
                f"{tuple(t.shape[:2])} differ (only the widths may differ)"
            )
        real = _real(mask, s.shape[0], s.shape[1]) if real is None else real
        diff = flow.matmul(s, s, transpose_b=True) * (1.0 / s.shape[-1]) - flow.matmul(t, t, transpose_b=True) * (
            1.0 / t.shape[-1]
        )  # (B, S, S)
        term = (diff * diff).mean() if mask is None else _real_pairs_mean(diff * diff, real)
        total = term if total is None else total + term
    return total


mmd = nst


def gram(
    student_reps: Sequence[flow.Tensor],
    teacher_reps: Sequence[flow.Tensor],
    mapping: LayerMap = "uniform",
    mask: flow.Tensor | None = None,
) -> flow.Tensor:
    """Gram-matrix (feature-correlation) loss: TextBrewer's 'gram' match loss, which is `fsp_loss` with layer_S =
    [i, i], layer_T = [m(i), m(i)] (0.2.1 has no separate gram_loss): Σ over mapped pairs (i, m(i)),
    i = 0..L_s, of mean((h_sᵀ h_s / n - h_tᵀ h_t / n)²) over the (B, H, H) entries, n = the example's length
    (its number of real tokens given `mask`, whose padded rows are left out of both products).

    Args:
        student_reps: L_s+1 tensors (B, S, H), embeddings first, at the teacher width H.
        teacher_reps: L_t+1 tensors (B, S, H), detached here.
        mapping: see `layer_mapping`. mask: (B, S), 1 for real tokens, or None.
    """
    total, weights = None, {}
    for i, j in _pairs(student_reps, teacher_reps, mapping):
        _check_shapes("layer", i, j, student_reps[i], teacher_reps[j])
        s, t = student_reps[i], teacher_reps[j].detach()
        term = _fsp_term(s, s, t, t, mask, weights)
        total = term if total is None else total + term
    return total


def fsp(
    student_reps: Sequence[flow.Tensor],
    teacher_reps: Sequence[flow.Tensor],
    pairs: FspPairs,
    mask: flow.Tensor | None = None,
) -> flow.Tensor:
    """Flow-of-solution-procedure loss (Yim et al., CVPR 2017) as TextBrewer computes it (`fsp_loss`): Σ over
    ((s_a, s_b), (t_a, t_b)) in `pairs` of mean((h_s[s_a]ᵀ h_s[s_b] / n - h_t[t_a]ᵀ h_t[t_b] / n)²) over the
    (B, H_a, H_b) entries, n = the example's length (its number of real tokens given `mask`, whose padded rows are
    left out of the products).

    Args:
        student_reps: L_s+1 tensors (B, S, H), embeddings first (index 0).
        teacher_reps: L_t+1 tensors (B, S, H), detached here; h_s[s_a] must match h_t[t_a] in shape, and
            h_s[s_b] h_t[t_b].
        pairs: a non-empty sequence of ((s_a, s_b), (t_a, t_b)) layer indices, 0 = embeddings.
        mask: (B, S), 1 for real tokens, or None.
    """
    pairs = _fsp_pairs(pairs, len(student_reps) - 1, len(teacher_reps) - 1)
    total, weights = None, {}
    for (sa, sb), (ta, tb) in pairs:
        for i, j in ((sa, ta), (sb, tb)):
            _check_shapes("fsp layer", i, j, student_reps[i], teacher_reps[j])
        if tuple(student_reps[sa].shape[:2]) != tuple(student_reps[sb].shape[:2]):
            raise ValueError(
                f"fsp pair student layers {sa} and {sb}: (batch, length) "
                f"{tuple(student_reps[sa].shape[:2])} and {tuple(student_reps[sb].shape[:2])} differ"
            )
        term = _fsp_term(
            student_reps[sa], student_reps[sb], teacher_reps[ta].detach(), teacher_reps[tb].detach(), mask, weights
        )
        total = term if total is None else total + term
    return total


# ---------------------------------------------------------------- helpers
def _real(mask: flow.Tensor | None, batch: int, seq: int) -> flow.Tensor | None:
    """The mask as float32 (B, S), after checking its shape against the tensors it masks."""
    if mask is None:
        return None
    if tuple(mask.shape) != (batch, seq):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, the tensors it masks need (batch, length) = {(batch, seq)}"
        )
    return flow.cast(mask, flow.float32)


def _ones(x: flow.Tensor) -> flow.Tensor:
    """Ones shaped like x, a small slice of a detached teacher tensor at a real position, with its placement:
    flow.ones_like warns inside nn.Graph ("Ones() is called in a nn.Graph, but not registered")."""
    return x * 0.0 + 1.0


def _logsumexp(s: flow.Tensor, ones: flow.Tensor) -> flow.Tensor:
    """log Σ_k exp(s_k) over the last axis of s (B, h, S, S), as (B, h, S, 1); `ones` is a (B, 1, S, 1) column.

    The value is max(s) - log(max softmax(s)) (accurate to float32 rounding, no broadcast subtraction); the
    gradient, softmax(s), comes from Σ_k q_k·s_k with q = softmax(s) held constant, added and subtracted so that
    it changes the value by nothing: amax's backward on the CPU takes ~30x its forward."""
    frozen = s.detach()
    q = F.softmax(frozen, dim=-1)
    value = flow.amax(frozen, dim=-1, keepdim=True) - flow.log(flow.amax(q, dim=-1, keepdim=True))
    linear = flow.matmul(q * s, ones)
    return value + (linear - linear.detach())


def _real_pairs_mean(x: flow.Tensor, real: flow.Tensor) -> flow.Tensor:
    """Mean of x (B, S, S) over the (row, column) pairs of real tokens: columns weighted by a matmul, rows after."""
    batch, seq, _ = x.shape
    per_row = flow.matmul(x, real.unsqueeze(-1)).reshape(batch, seq)  # (B, S)
    lengths = real.sum(dim=1)
    return (per_row * real).sum() / (lengths * lengths).sum()


def _fsp_term(
    sa: flow.Tensor, sb: flow.Tensor, ta: flow.Tensor, tb: flow.Tensor, mask: flow.Tensor | None, weights: dict
) -> flow.Tensor:
    """mean((saᵀ W sb - taᵀ W tb)²) over (B, H_a, H_b), W = diag(m_bs / n_b) (1/S without a mask). Only the
    first factor is weighted: for a 0/1 mask that equals TextBrewer's masking of both. `weights` caches the
    (B, S, H_a) weight tensor per width for the next pair."""
    batch, seq, width = sa.shape
    if mask is None:
        scale = 1.0 / seq
        diff = flow.matmul(sa, sb, transpose_a=True) * scale - flow.matmul(ta, tb, transpose_a=True) * scale
        return (diff * diff).mean()
    if width not in weights:
        real = _real(mask, batch, seq)
        per_row = (real / real.sum(dim=1, keepdim=True)).unsqueeze(-1)  # (B, S, 1)
        # a (B, S, 1) x (B, 1, H_a) matmul instead of a broadcast
        weights[width] = flow.matmul(per_row, _ones(ta[:, :1, :]))  # (B, S, H_a)
    w = weights[width]
    diff = flow.matmul(sa * w, sb, transpose_a=True) - flow.matmul(ta * w, tb, transpose_a=True)
    return (diff * diff).mean()


def _fsp_pairs(pairs: FspPairs, n_student: int, n_teacher: int) -> list:
    """`pairs` as a list of ((s_a, s_b), (t_a, t_b)) ints, each checked against the layer counts."""

    def layer_pair(entry, part, n):
        x = entry[part]
        if (
            not isinstance(x, (list, tuple))
            or len(x) != 2
            or any(isinstance(k, bool) or not isinstance(k, Integral) or not 0 <= k <= n for k in x)
        ):
            side = ("student", "teacher")[part]
            raise ValueError(f"fsp pair {entry!r}: the {side} part must be two layer indices in 0..{n}, got {x!r}")
        return int(x[0]), int(x[1])

    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise ValueError(f"fsp needs a non-empty list of ((s_a, s_b), (t_a, t_b)) layer pairs, got {pairs!r}")
    checked = []
    for entry in pairs:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"fsp pair {entry!r} is not ((s_a, s_b), (t_a, t_b))")
        checked.append((layer_pair(entry, 0, n_student), layer_pair(entry, 1, n_teacher)))
    return checked
