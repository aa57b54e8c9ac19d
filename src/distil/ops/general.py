"""General (task-agnostic) distillation: MiniLM's self-attention losses.

MiniLM (Wang et al. 2020, arXiv 2002.10957) distils the teacher's last Transformer layer into the student's last
layer through two distributions per head and query: the attention distribution softmax(Q Kᵀ / sqrt(d_head))
(`attention_transfer`, L_AT) and the value relation softmax(V Vᵀ / sqrt(d_head)) (`value_relation`, L_VR), each
compared by KL(teacher || student) summed over keys and averaged over heads and (batch, query) positions.
MiniLMv2 (arXiv 2012.15828) generalises the relations to query-query, key-key and value-value with `relation heads`
that need not be the attention heads (`self_relation`). Widths may differ between student and teacher everywhere;
v1's losses compare head by head, so their head counts must match.

Like `distill.py`'s operators, each returns a scalar, works eagerly and inside `flow.nn.Graph`, detaches the
teacher inputs and, given `mask` (B, S) with 1 = real token (0/1: it is used as weights), leaves padding out: padding
keys get probability 0 and the mean runs over real queries only, so the value does not change when a batch is cut to
its longest real length. Without a mask every key and query counts.
"""

from __future__ import annotations

from numbers import Integral

from distil.ops.distill import F, flow
from distil.ops.zoo import _logsumexp, _ones, _real

__all__ = ["attention_transfer", "self_relation", "value_relation"]

PADDING_BIAS = 10000.0  # added negatively to padding keys' relation scores, as the model does to attention scores


def attention_transfer(
    student_scores: flow.Tensor, teacher_scores: flow.Tensor, mask: flow.Tensor | None = None
) -> flow.Tensor:
    """MiniLM's attention-distribution transfer L_AT: KL(softmax(A_t) || softmax(A_s)) summed over keys, averaged
    over heads and (batch, query) positions, the real queries only given `mask`.

    The softmaxes run over all keys: padding keys already carry the model's additive -10000, so their probability
    is exactly 0 in float32 and they drop out (the mask is not applied to keys again).

    Args:
        student_scores: (B, heads, S, S) pre-softmax attention scores of the student's last layer.
        teacher_scores: (B, heads, S, S), detached here; the same number of heads (MiniLM v1 compares head by head).
        mask: (B, S), 1 for real tokens, or None.
    Returns:
        A scalar tensor.
    """
    _check_heads("attention_transfer", "scores", student_scores, teacher_scores)
    for name, x in (("student", student_scores), ("teacher", teacher_scores)):
        if x.shape[2] != x.shape[3]:
            raise ValueError(
                f"attention_transfer: {name} scores must be (batch, heads, length, length), got {tuple(x.shape)}"
            )
    real = _real(mask, student_scores.shape[0], student_scores.shape[2])
    return _kl_mean(student_scores, teacher_scores.detach(), real)


def value_relation(
    student_values: flow.Tensor, teacher_values: flow.Tensor, mask: flow.Tensor | None = None
) -> flow.Tensor:
    """MiniLM's value-relation transfer L_VR: per head, VR = softmax(V Vᵀ / sqrt(d_head)) over keys (padding keys
    set to -10000 first, given `mask`), then KL(VR_t || VR_s) summed over keys, averaged over heads and (batch,
    query) positions, the real queries only given `mask`. d_head may differ between student and teacher.

    The same computation as `self_relation` on the values concatenated over heads with relation_heads = heads.

    Args:
        student_values: (B, heads, S, d_s) values of the student's last layer, split into heads.
        teacher_values: (B, heads, S, d_t), detached here; the same number of heads (MiniLM v1).
        mask: (B, S), 1 for real tokens, or None.
    Returns:
        A scalar tensor.
    """
    _check_heads("value_relation", "values", student_values, teacher_values)
    real = _real(mask, student_values.shape[0], student_values.shape[2])
    return _relation_kl(student_values, teacher_values.detach(), real)


def self_relation(
    student_x: flow.Tensor, teacher_x: flow.Tensor, relation_heads: int, mask: flow.Tensor | None = None
) -> flow.Tensor:
    """MiniLMv2's self-attention relation transfer for one of queries, keys or values: each side's (B, S, H)
    tensor (concatenated over attention heads) is split into `relation_heads` heads of width d = H / relation_heads,
    R = softmax(x_h x_hᵀ / sqrt(d)) over keys (padding keys set to -10000 first, given `mask`), and the loss is
    KL(R_t || R_s) summed over keys, averaged over relation heads and (batch, query) positions, the real queries
    only given `mask`. The widths may differ; the number of attention heads does not matter.

    Args:
        student_x: (B, S, H_s) queries, keys or values of a student layer.
        teacher_x: (B, S, H_t) the same of a teacher layer, detached here.
        relation_heads: a positive integer dividing H_s and H_t.
        mask: (B, S), 1 for real tokens, or None.
    Returns:
        A scalar tensor.
    """
    if isinstance(relation_heads, bool) or not isinstance(relation_heads, Integral) or relation_heads < 1:
        raise ValueError(f"self_relation: relation_heads must be a positive integer, got {relation_heads!r}")
    for name, x in (("student", student_x), ("teacher", teacher_x)):
        if len(x.shape) != 3:
            raise ValueError(f"self_relation: {name} tensor must be (batch, length, width), got {tuple(x.shape)}")
        if x.shape[2] % relation_heads:
            raise ValueError(
                f"self_relation: the {name} width {x.shape[2]} is not divisible by relation_heads {relation_heads}"
            )
    if tuple(student_x.shape[:2]) != tuple(teacher_x.shape[:2]):
        raise ValueError(
            f"self_relation: student {tuple(student_x.shape)} and teacher {tuple(teacher_x.shape)} "
            "differ in (batch, length) (only the widths may differ)"
        )
    batch, seq = student_x.shape[0], student_x.shape[1]
    real = _real(mask, batch, seq)
    s, t = (
        x.reshape(batch, seq, relation_heads, x.shape[2] // relation_heads).permute(0, 2, 1, 3)
        for x in (student_x, teacher_x.detach())
    )  # (B, heads, S, d)
    return _relation_kl(s, t, real)


# ---------------------------------------------------------------- helpers
def _check_heads(op: str, what: str, s: flow.Tensor, t: flow.Tensor) -> None:
    """Both (B, heads, S, *) with the same batch, heads and length."""
    for name, x in (("student", s), ("teacher", t)):
        if len(x.shape) != 4:
            raise ValueError(f"{op}: {name} {what} must be (batch, heads, length, *), got {tuple(x.shape)}")
    if s.shape[1] != t.shape[1]:
        raise ValueError(
            f"{op}: the student has {s.shape[1]} heads, the teacher {t.shape[1]}: MiniLM compares "
            "head by head, so the numbers must match (self_relation's relation heads need not)"
        )
    if (s.shape[0], s.shape[2]) != (t.shape[0], t.shape[2]):
        raise ValueError(
            f"{op}: student {what} {tuple(s.shape)} and teacher {what} {tuple(t.shape)} differ in (batch, length)"
        )


def _relation_kl(s: flow.Tensor, t: flow.Tensor, real: flow.Tensor | None) -> flow.Tensor:
    """`_kl_mean` of the scaled dot-product relations x xᵀ / sqrt(d) of s (B, h, S, d_s) and t (B, h, S, d_t),
    padding keys given -10000 when `real` (B, S) is given (a (B, 1, 1, S) broadcast add: cheaper on OneFlow 0.9's
    CPU than building it into the matmul)."""
    rs = flow.matmul(s, s, transpose_b=True, alpha=s.shape[-1] ** -0.5)  # (B, h, S, S)
    rt = flow.matmul(t, t, transpose_b=True, alpha=t.shape[-1] ** -0.5)
    if real is not None:
        bias = ((real - 1.0) * PADDING_BIAS).reshape(real.shape[0], 1, 1, real.shape[1])
        rs, rt = rs + bias, rt + bias
    return _kl_mean(rs, rt, real)


def _kl_mean(s: flow.Tensor, t: flow.Tensor, real: flow.Tensor | None) -> flow.Tensor:
    """KL(softmax(t) || softmax(s)) over the last axis of (B, h, S, S) scores, averaged over (B, h, S) or, given
    `real` (B, S), over heads and real queries. t is detached.

    Per query KL = Σ_k p_k (t_k - s_k) + lse(s) - lse(t), p = softmax(t) (Σ_k p_k = 1): keys summed by a matmul
    with a ones column, lse as `_logsumexp` (OneFlow 0.9's CPU log_softmax is off by up to ~4e-6); padding keys
    have p_k = 0 exactly and add nothing. Heads are summed before the query mask applies (no broadcast over S²)."""
    batch, heads, seq, _ = s.shape
    ones = _ones(t[:, :1, :, :1])  # (B, 1, S, 1)
    p = F.softmax(t, dim=-1)
    lse_t = flow.amax(t, dim=-1, keepdim=True) - flow.log(flow.amax(p, dim=-1, keepdim=True))
    per_query = flow.matmul(p * (t - s), ones) + _logsumexp(s, ones) - lse_t  # (B, h, S, 1)
    if real is None:
        return per_query.mean()
    return (per_query.reshape(batch, heads, seq).sum(dim=1) * real).sum() / (real.sum() * heads)
