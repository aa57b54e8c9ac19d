"""MiniLM's general-distillation losses (distil.ops.general): every operator equals its formula written independently
in NumPy (float64), eagerly and inside nn.Graph; padded positions are left out (changing them or cutting them off
changes nothing); a student equal to its teacher scores 0; widths may differ; bad shapes raise clear errors; and
gradients match finite differences of the formulas and reach the student only."""

from __future__ import annotations

import numpy as np
import pytest

from distil.ops.distill import flow
from distil.ops.general import attention_transfer, self_relation, value_relation
from loss_checks import np_log_softmax, scramble_padded_rows, scramble_padded_scores

B, S, HEADS = 3, 7, 2
LENGTHS = (5, 2, 7)  # one row without padding
CUT_LENGTHS = (5, 2, 4)  # the longest, 5, is shorter than S: cutting removes positions
D_S, D_T = 3, 5  # value widths per head
H_S, H_T = 8, 12  # concatenated widths for self_relation
TOL = dict(rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- NumPy references (float64)
def keep(mask, b):
    return np.ones(S, bool) if mask is None else np.asarray(mask[b], bool)


def np_mean_kl(student_rows, teacher_rows):
    """KL(softmax(t) || softmax(s)) summed over keys, averaged over all rows of all (row, key) blocks given."""
    total, count = 0.0, 0
    for s, t in zip(student_rows, teacher_rows):
        log_p, log_q = np_log_softmax(t), np_log_softmax(s)
        total += (np.exp(log_p) * (log_p - log_q)).sum()
        count += s.size // s.shape[-1]
    return total / count


def np_attention_transfer(s, t, mask):
    """Padding keys and queries dropped (not masked) per example; the -10000 keys count without a mask."""
    pairs = [
        (np.float64(s[b])[:, k][:, :, k], np.float64(t[b])[:, k][:, :, k])
        for b in range(s.shape[0])
        for k in [keep(mask, b)]
    ]
    return np_mean_kl(*zip(*pairs))


def np_relation(x):
    """softmax(x xᵀ / sqrt(d)) of one head's (n, d) rows; as logits (softmax is taken in np_mean_kl)."""
    return x @ x.T / np.sqrt(x.shape[1])


def np_value_relation(s, t, mask):
    pairs = [
        (np_relation(np.float64(s[b, h])[k]), np_relation(np.float64(t[b, h])[k]))
        for b in range(s.shape[0])
        for k in [keep(mask, b)]
        for h in range(s.shape[1])
    ]
    return np_mean_kl(*zip(*pairs))


def np_self_relation(s, t, heads, mask):
    def head(x, b, h, k):
        d = x.shape[2] // heads
        return np_relation(np.float64(x[b])[k][:, h * d : (h + 1) * d])

    pairs = [
        (head(s, b, h, k), head(t, b, h, k)) for b in range(s.shape[0]) for k in [keep(mask, b)] for h in range(heads)
    ]
    return np_mean_kl(*zip(*pairs))


# ---------------------------------------------------------------- inputs
def make_inputs(seed=0, lengths=LENGTHS):
    """Last-layer pre-softmax scores (B, heads, S, S) with -10000 added at padding keys as the model produces them,
    values (B, heads, S, d), concatenated queries/keys/values (B, S, H), a float 0/1 mask of real `lengths`."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, S), np.float32)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1.0
    padding = (mask - 1.0)[:, None, None, :] * 10000.0

    def normal(*shape, scale=1.0):
        return (scale * rng.normal(size=shape)).astype(np.float32)

    return dict(
        sa=normal(B, HEADS, S, S, scale=2.0) + padding,
        ta=normal(B, HEADS, S, S, scale=2.0) + padding,
        sv=normal(B, HEADS, S, D_S, scale=1.5),
        tv=normal(B, HEADS, S, D_T, scale=1.5),
        sx=normal(B, S, H_S, scale=1.5),
        tx=normal(B, S, H_T, scale=1.5),
        mask=mask,
        lengths=lengths,
    )


# name: (operator, NumPy reference, the student and teacher keys of make_inputs)
CASES = {
    "attention_transfer": (attention_transfer, np_attention_transfer, "sa", "ta"),
    "value_relation": (value_relation, np_value_relation, "sv", "tv"),
    **{
        f"self_relation_{r}": (
            (lambda s, t, m, r=r: self_relation(s, t, r, m)),
            (lambda s, t, m, r=r: np_self_relation(s, t, r, m)),
            "sx",
            "tx",
        )
        for r in (1, 2, 4)
    },
}


def run(name, x, masked=True):
    op, _, s_key, t_key = CASES[name]
    return op(flow.tensor(x[s_key]), flow.tensor(x[t_key]), flow.tensor(x["mask"]) if masked else None).item()


def reference(name, x, masked=True):
    _, ref, s_key, t_key = CASES[name]
    return ref(x[s_key], x[t_key], x["mask"] if masked else None)


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("name", list(CASES))
def test_value_matches_the_numpy_formula(name, masked):
    x = make_inputs()
    value = run(name, x, masked)
    assert value > 1e-2
    np.testing.assert_allclose(value, reference(name, x, masked), **TOL)


def test_value_relation_is_self_relation_over_the_concatenated_heads():
    x = make_inputs()
    concat = {k: x[k].transpose(0, 2, 1, 3).reshape(B, S, HEADS * x[k].shape[-1]) for k in ("sv", "tv")}
    for mask in (None, flow.tensor(x["mask"])):
        np.testing.assert_allclose(
            value_relation(flow.tensor(x["sv"]), flow.tensor(x["tv"]), mask).item(),
            self_relation(flow.tensor(concat["sv"]), flow.tensor(concat["tv"]), HEADS, mask).item(),
            **TOL,
        )


def perturb_padding(x, rng):
    """Random values at every padded position: value/query rows, score rows of padded queries, and padding keys
    (those stay -10000 + noise, the model's additive mask)."""
    y = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in x.items()}
    for b, n in enumerate(x["lengths"]):
        for key in ("sv", "tv"):
            scramble_padded_rows(y[key], b, n, rng, axis=2)
        for key in ("sx", "tx"):
            scramble_padded_rows(y[key], b, n, rng)
        for key in ("sa", "ta"):
            scramble_padded_scores(y[key], b, n, rng)
    return y


@pytest.mark.parametrize("name", list(CASES))
def test_padded_positions_do_not_count(name):
    x = make_inputs()
    y = perturb_padding(x, np.random.default_rng(1))
    np.testing.assert_allclose(run(name, y), run(name, x), **TOL)
    assert abs(run(name, y, masked=False) - run(name, x, masked=False)) > 1e-3  # the change was visible


@pytest.mark.parametrize("name", list(CASES))
def test_cutting_the_batch_to_its_longest_real_length_changes_nothing(name):
    x = make_inputs(lengths=CUT_LENGTHS)
    n = max(CUT_LENGTHS)
    cut = dict(
        x,
        mask=x["mask"][:, :n],
        sa=x["sa"][..., :n, :n],
        ta=x["ta"][..., :n, :n],
        sv=x["sv"][:, :, :n],
        tv=x["tv"][:, :, :n],
        sx=x["sx"][:, :n],
        tx=x["tx"][:, :n],
    )
    np.testing.assert_allclose(run(name, cut), run(name, x), **TOL)
    np.testing.assert_allclose(run(name, x), reference(name, x), **TOL)


@pytest.mark.parametrize("name", list(CASES))
def test_zero_when_the_student_is_the_teacher(name):
    x = make_inputs()
    s_key, t_key = CASES[name][2:]
    same = dict(x, **{s_key: x[t_key]})
    for masked in (True, False):
        assert abs(run(name, same, masked)) < 1e-6


def test_mask_may_be_integer():
    x = make_inputs()
    got = value_relation(flow.tensor(x["sv"]), flow.tensor(x["tv"]), flow.tensor(x["mask"].astype(np.int64)))
    np.testing.assert_allclose(got.item(), np_value_relation(x["sv"], x["tv"], x["mask"]), **TOL)


# ---------------------------------------------------------------- errors
def test_bad_shapes_raise_clear_errors():
    x = make_inputs()
    sa, ta, sv, tv, sx, tx = (flow.tensor(x[k]) for k in ("sa", "ta", "sv", "tv", "sx", "tx"))
    mask = flow.tensor(x["mask"])

    def zeros(*shape):
        return flow.tensor(np.zeros(shape, np.float32))

    with pytest.raises(
        ValueError, match="attention_transfer: the student has 2 heads, the teacher 4: MiniLM compares head by head"
    ):
        attention_transfer(sa, zeros(B, 4, S, S))
    with pytest.raises(
        ValueError,
        match=r"attention_transfer: teacher scores must be \(batch, heads, length, "
        r"length\), got \(3, 2, 7, 6\)",
    ):
        attention_transfer(sa, ta[..., :6])
    with pytest.raises(
        ValueError,
        match=r"attention_transfer: student scores must be \(batch, heads, length, \*\), "
        r"got \(3, 7, 7\)",
    ):
        attention_transfer(sa[:, 0], ta)
    with pytest.raises(ValueError, match=r"value_relation: the student has 2 heads, the teacher 3"):
        value_relation(sv, zeros(B, 3, S, D_T))
    with pytest.raises(
        ValueError,
        match=r"value_relation: student values \(3, 2, 7, 3\) and teacher values "
        r"\(3, 2, 6, 5\) differ in \(batch, length\)",
    ):
        value_relation(sv, tv[:, :, :6])
    with pytest.raises(ValueError, match=r"mask has shape \(3, 6\), the tensors it masks need .* \(3, 7\)"):
        value_relation(sv, tv, mask[:, :6])
    with pytest.raises(ValueError, match="self_relation: the teacher width 12 is not divisible by relation_heads 8"):
        self_relation(sx, tx, 8)
    with pytest.raises(ValueError, match="self_relation: the student width 8 is not divisible by relation_heads 3"):
        self_relation(sx, tx, 3)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="relation_heads must be a positive integer"):
            self_relation(sx, tx, bad)
    with pytest.raises(
        ValueError,
        match=r"self_relation: student \(3, 7, 8\) and teacher \(3, 6, 12\) differ in "
        r"\(batch, length\) \(only the widths may differ\)",
    ):
        self_relation(sx, tx[:, :6], 2)
    with pytest.raises(
        ValueError,
        match=r"self_relation: student tensor must be \(batch, length, width\), got "
        r"\(3, 2, 7, 3\)",
    ):
        self_relation(sv, tx, 1)


# ---------------------------------------------------------------- nn.Graph and gradients
class LossGraph(flow.nn.Graph):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def build(self, student, teacher, mask):
        return self.op(student, teacher, mask)


@pytest.mark.parametrize("name", ["attention_transfer", "value_relation", "self_relation_4"])
def test_same_value_inside_an_nn_graph(name):
    x = make_inputs()
    op, _, s_key, t_key = CASES[name]
    got = LossGraph(op)(flow.tensor(x[s_key]), flow.tensor(x[t_key]), flow.tensor(x["mask"]))
    np.testing.assert_allclose(got.numpy(), run(name, x), **TOL)
    np.testing.assert_allclose(got.numpy(), reference(name, x), **TOL)


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("name", ["attention_transfer", "value_relation", "self_relation_2", "self_relation_4"])
def test_gradient_matches_the_formula_and_reaches_the_student_only(name, masked):
    """<∂loss/∂student, v> equals a central difference of the float64 formula along a random direction v."""
    x = make_inputs()
    op, ref, s_key, t_key = CASES[name]
    mask = x["mask"] if masked else None
    student, teacher = flow.tensor(x[s_key], requires_grad=True), flow.tensor(x[t_key], requires_grad=True)
    op(student, teacher, None if mask is None else flow.tensor(mask)).backward()
    assert teacher.grad is None or not np.any(teacher.grad.numpy())
    v = np.random.default_rng(2).normal(size=x[s_key].shape)
    eps = 1e-4
    plus = ref(np.float64(x[s_key]) + eps * v, x[t_key], mask)
    minus = ref(np.float64(x[s_key]) - eps * v, x[t_key], mask)
    directional = float((student.grad.numpy() * v).sum())
    assert abs(directional) > 1e-3
    np.testing.assert_allclose(directional, (plus - minus) / (2 * eps), rtol=1e-4, atol=1e-6)
