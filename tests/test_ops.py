"""Distillation operators: values == NumPy formulas (eager and in a training nn.Graph), gradients reach the
student only, temperature/mode semantics, layer mappings and their errors, attention masking."""

from __future__ import annotations

import numpy as np
import pytest

from distil.ops.distill import att_distill, flow, layer_distill, layer_mapping, pkd_patient_loss, pred_distill

B, S, H, HEADS, C = 3, 5, 4, 2, 3


# ---------------------------------------------------------------- NumPy references
def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_soft_ce(s, t, temp=1.0):
    s, t = np.float64(s), np.float64(t)
    return float(np.mean(-np.exp(np_log_softmax(t / temp)) * np_log_softmax(s / temp)))


def np_kl(s, t, temp=1.0):
    s, t = np.float64(s), np.float64(t)
    log_p, log_q = np_log_softmax(t / temp), np_log_softmax(s / temp)
    return float((np.exp(log_p) * (log_p - log_q)).sum(-1).mean() * temp**2)


def np_mse(s, t):
    return float(np.mean((np.float64(s) - np.float64(t)) ** 2))


def np_layer(s, t, targets):
    return sum(np_mse(s[i], t[j]) for i, j in enumerate(targets))


def np_att(s, t, targets):
    zero = lambda x: np.where(x <= -100, 0.0, x)  # noqa: E731
    return sum(np_mse(zero(s[i - 1]), zero(t[targets[i] - 1])) for i in range(1, len(s) + 1))


def np_pkd(s, t, targets):
    """BERT-PKD's official patience_loss (normalized_patience=True): F.mse_loss over the (B, layers, H) stacks
    of L2-normalised [CLS] vectors of the intermediate student layers and their teacher layers."""

    def stack(reps, layers):
        cls = np.stack([np.float64(reps[i])[:, 0] for i in layers], axis=1)  # (B, L, H)
        return cls / np.linalg.norm(cls, axis=-1, keepdims=True)

    student_layers = range(1, len(s) - 1)
    return float(((stack(s, student_layers) - stack(t, [targets[i] for i in student_layers])) ** 2).mean())


# OneFlow 0.9's CPU log_softmax is off by up to ~5e-6 from float64 (a hand-written log-sum-exp: ~5e-7);
# the KL case multiplies that by T^2 = 4
TOL = dict(rtol=1e-5, atol=2e-5)


# ---------------------------------------------------------------- tensors produced by parameters
def padding_offset(shape):
    """-10000 on padding keys (the model's additive mask): example b keeps its first S-b keys."""
    offset = np.zeros(shape, np.float32)
    for b in range(shape[0]):
        offset[b, ..., shape[-1] - b :] = -10000.0
    return offset


class Source(flow.nn.Module):
    """A list of tensors, each Linear(x_k) + offset_k: the Linear weights are the parameters producing them."""

    def __init__(self, shapes, seed, masked=False):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.linears = flow.nn.ModuleList([flow.nn.Linear(3, shape[-1]) for shape in shapes])
        for k, shape in enumerate(shapes):
            self.linears[k].weight.data = flow.tensor(rng.normal(size=(shape[-1], 3)).astype(np.float32))
            self.linears[k].bias.data = flow.tensor(rng.normal(size=shape[-1]).astype(np.float32))
            self.register_buffer(f"x{k}", flow.tensor(rng.normal(size=shape[:-1] + (3,)).astype(np.float32)))
            offset = padding_offset(shape) if masked else np.zeros(shape, np.float32)
            self.register_buffer(f"offset{k}", flow.tensor(offset))

    def forward(self):
        return [lin(getattr(self, f"x{k}")) + getattr(self, f"offset{k}") for k, lin in enumerate(self.linears)]


def hidden(n_layers, width=H):
    return [(B, S, width)] * (n_layers + 1)


def scores(n_layers, heads=HEADS):
    return [(B, heads, S, S)] * n_layers


# name: (operator on lists, NumPy reference on lists, student shapes, teacher shapes, masked)
CASES = {
    "soft_ce": (
        lambda s, t: pred_distill(s[0], t[0], 2.0),
        lambda s, t: np_soft_ce(s[0], t[0], 2.0),
        [(B, C)],
        [(B, C)],
        False,
    ),
    "kl": (
        lambda s, t: pred_distill(s[0], t[0], 2.0, "kl"),
        lambda s, t: np_kl(s[0], t[0], 2.0),
        [(B, C)],
        [(B, C)],
        False,
    ),
    "mse": (
        lambda s, t: pred_distill(s[0], t[0], 2.0, "mse"),
        lambda s, t: np_mse(s[0], t[0]),
        [(B, C)],
        [(B, C)],
        False,
    ),
    "regression": (
        lambda s, t: pred_distill(s[0], t[0], 2.0),
        lambda s, t: np_mse(s[0], t[0]),
        [(B, 1)],
        [(B, 1)],
        False,
    ),
    "layer": (layer_distill, lambda s, t: np_layer(s, t, [0, 2, 4]), hidden(2), hidden(4), False),
    "att": (att_distill, lambda s, t: np_att(s, t, [0, 2, 4]), scores(2), scores(4), True),
    "pkd": (pkd_patient_loss, lambda s, t: np_pkd(s, t, [0, 2, 4, 6]), hidden(3), hidden(6), False),
}


def build(name):
    op, reference, student_shapes, teacher_shapes, masked = CASES[name]
    return op, reference, Source(student_shapes, 0, masked), Source(teacher_shapes, 1, masked)


def numpy_of(tensors):
    return [x.numpy() for x in tensors]


@pytest.mark.parametrize("name", list(CASES))
def test_eager_value_and_gradient_reaches_the_student_only(name):
    op, reference, student, teacher = build(name)
    s, t = student(), teacher()
    loss = op(s, t)
    assert loss.shape == () or loss.numel() == 1
    np.testing.assert_allclose(loss.item(), reference(numpy_of(s), numpy_of(t)), **TOL)
    loss.backward()
    assert any(p.grad is not None and np.abs(p.grad.numpy()).sum() > 0 for p in student.parameters())
    assert all(p.requires_grad and (p.grad is None or not np.any(p.grad.numpy())) for p in teacher.parameters())


class TrainGraph(flow.nn.Graph):
    """One SGD step on the student; the teacher's parameters still require grad (the operator detaches them)."""

    def __init__(self, student, teacher, op):
        super().__init__()
        self.student, self.teacher, self.op = student, teacher, op
        self.add_optimizer(flow.optim.SGD(student.parameters(), lr=0.1))

    def build(self):
        loss = self.op(self.student(), self.teacher())
        loss.backward()
        return loss


@pytest.mark.parametrize("name", list(CASES))
def test_value_inside_a_training_graph(name):
    op, reference, student, teacher = build(name)
    expected = reference(numpy_of(student()), numpy_of(teacher()))
    before = [p.numpy().copy() for p in student.parameters()]
    teacher_before = [p.numpy().copy() for p in teacher.parameters()]
    loss = TrainGraph(student, teacher, op)()
    np.testing.assert_allclose(loss.numpy(), expected, **TOL)
    assert any(not np.array_equal(b, p.numpy()) for b, p in zip(before, student.parameters()))
    assert all(np.array_equal(b, p.numpy()) for b, p in zip(teacher_before, teacher.parameters()))


# ---------------------------------------------------------------- pred_distill semantics
def logits(seed, shape=(4, 5), scale=3.0):
    return np.random.default_rng(seed).normal(0.0, scale, shape).astype(np.float32)


def test_soft_ce_divides_by_c_and_has_no_t_squared():
    s, t = logits(0), logits(1)
    got = pred_distill(flow.tensor(s), flow.tensor(t), temperature=2.0).item()
    p, log_q = np.exp(np_log_softmax(t / 2.0)), np_log_softmax(s / 2.0)
    per_example_ce = -(p * log_q).sum(-1)  # (B,)
    np.testing.assert_allclose(got, per_example_ce.mean() / 5, rtol=1e-5)
    assert pred_distill(flow.tensor(s), flow.tensor(t)).item() != pytest.approx(got, rel=1e-3)


def test_kl_has_the_t_squared_factor_and_is_zero_for_equal_logits():
    s, t = logits(2), logits(3)
    at_2 = pred_distill(flow.tensor(s), flow.tensor(t), temperature=2.0, mode="kl").item()
    log_p, log_q = np_log_softmax(t / 2.0), np_log_softmax(s / 2.0)
    np.testing.assert_allclose(at_2, 4.0 * (np.exp(log_p) * (log_p - log_q)).sum(-1).mean(), rtol=1e-5)
    assert pred_distill(flow.tensor(t), flow.tensor(t), 3.0, "kl").item() == pytest.approx(0.0, abs=1e-6)


def test_soft_ce_is_stable_for_large_logits():
    s, t = logits(4, scale=1000.0), logits(5, scale=1000.0)
    got = pred_distill(flow.tensor(s), flow.tensor(t)).item()
    assert np.isfinite(got)
    np.testing.assert_allclose(got, np_soft_ce(s, t), rtol=1e-5)


def test_mse_ignores_temperature_and_regression_is_mse_in_every_mode():
    s, t = logits(6), logits(7)
    for temp in (1.0, 4.0):
        np.testing.assert_allclose(
            pred_distill(flow.tensor(s), flow.tensor(t), temp, "mse").item(), np_mse(s, t), rtol=1e-6
        )
    s1, t1 = logits(8, (4, 1)), logits(9, (4, 1))
    for mode in ("soft_ce", "kl", "mse"):
        np.testing.assert_allclose(
            pred_distill(flow.tensor(s1), flow.tensor(t1), 2.0, mode).item(), np_mse(s1, t1), rtol=1e-6
        )


def test_invalid_mode_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown pred_distill mode 'ce'; valid modes: soft_ce, kl, mse"):
        pred_distill(flow.tensor(logits(0)), flow.tensor(logits(1)), mode="ce")
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 3\)"):
        pred_distill(flow.tensor(logits(0)), flow.tensor(logits(1, (4, 3))))


# ---------------------------------------------------------------- mappings
def test_layer_mapping_values():
    assert layer_mapping(4, 12) == [0, 3, 6, 9, 12]
    assert layer_mapping(3, 12) == [0, 4, 8, 12]
    assert layer_mapping(3, 12, "last") == [0, 10, 11, 12]
    assert layer_mapping(6, 6) == list(range(7))
    assert layer_mapping(2, 4, (0, 1, np.int64(4))) == [0, 1, 4]


def test_layer_mapping_errors_name_the_numbers():
    with pytest.raises(ValueError, match="teacher has 12 layers, student 5: 12 is not divisible by 5"):
        layer_mapping(5, 12)
    with pytest.raises(ValueError, match=r"needs 4 teacher indices .*got 3"):
        layer_mapping(3, 12, [0, 4, 8])
    with pytest.raises(ValueError, match=r"entries \[13\] outside the teacher indices 0..12"):
        layer_mapping(2, 12, [0, 6, 13])
    with pytest.raises(ValueError, match=r"entries \[-1\]"):
        layer_mapping(2, 12, [-1, 6, 12])
    with pytest.raises(ValueError, match=r"entries \[1.5\]"):
        layer_mapping(2, 12, [0, 1.5, 12])
    with pytest.raises(ValueError, match="unknown layer mapping 'first'"):
        layer_mapping(2, 12, "first")
    with pytest.raises(ValueError, match=r"student 4 layers, teacher 2"):
        layer_mapping(4, 2, "last")


def rand_list(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for shape in shapes]


@pytest.mark.parametrize(
    "mapping, targets",
    [("uniform", [0, 3, 6, 9, 12]), ("last", [0, 9, 10, 11, 12]), ([0, 1, 5, 5, 12], [0, 1, 5, 5, 12])],
)
def test_layer_and_att_distill_follow_the_mapping(mapping, targets):
    s, t = rand_list(hidden(4, 2), 0), rand_list(hidden(12, 2), 1)
    got = layer_distill([flow.tensor(x) for x in s], [flow.tensor(x) for x in t], mapping).item()
    np.testing.assert_allclose(got, np_layer(s, t, targets), rtol=1e-5)
    sa, ta = rand_list(scores(4), 2), rand_list(scores(12), 3)
    got = att_distill([flow.tensor(x) for x in sa], [flow.tensor(x) for x in ta], mapping).item()
    np.testing.assert_allclose(got, np_att(sa, ta, targets), rtol=1e-5)


def test_layer_distill_errors():
    t = [flow.tensor(x) for x in rand_list(hidden(12), 0)]
    with pytest.raises(ValueError, match="12 is not divisible by 5"):
        layer_distill([flow.tensor(x) for x in rand_list(hidden(5), 1)], t)
    with pytest.raises(ValueError, match=r"student 2 <-> teacher 6: shapes \(3, 5, 8\) and \(3, 5, 4\)"):
        wide = rand_list(hidden(4), 1)
        wide[2] = np.zeros((B, S, 8), np.float32)
        layer_distill([flow.tensor(x) for x in wide], t)
    with pytest.raises(ValueError, match="at least 2 layers"):
        pkd_patient_loss([flow.tensor(x) for x in rand_list(hidden(1), 1)], t)


def test_att_distill_errors():
    t = [flow.tensor(x) for x in rand_list(scores(4), 0)]
    with pytest.raises(ValueError, match="head by head: student layer 1 has 4 heads, teacher layer 2 has 2"):
        att_distill([flow.tensor(x) for x in rand_list(scores(2, heads=4), 1)], t)
    with pytest.raises(ValueError, match="student layer 2 is mapped to the teacher embeddings"):
        att_distill([flow.tensor(x) for x in rand_list(scores(2), 1)], t, [0, 1, 0])
    with pytest.raises(ValueError, match="4 is not divisible by 3"):
        att_distill([flow.tensor(x) for x in rand_list(scores(3), 1)], t)


def test_att_distill_ignores_the_masked_region_only():
    mask = padding_offset((B, HEADS, S, S)) < 0
    s = [x + padding_offset(x.shape) for x in rand_list(scores(2), 0)]
    t = [x + padding_offset(x.shape) for x in rand_list(scores(2), 1)]

    def loss(student, teacher):
        return att_distill([flow.tensor(x) for x in student], [flow.tensor(x) for x in teacher]).item()

    base = loss(s, t)
    np.testing.assert_allclose(base, np_att(s, t, [0, 1, 2]), rtol=1e-5)
    moved_s = [np.where(mask, -100.0, x).astype(np.float32) for x in s]  # -100 counts as masked
    moved_t = [np.where(mask, x * 0.3, x).astype(np.float32) for x in t]
    assert loss(moved_s, moved_t) == pytest.approx(base, rel=1e-6)
    changed = [x.copy() for x in s]
    changed[1][0, 0, 0, 0] += 1.0  # key 0 is never padding
    assert abs(loss(changed, t) - base) > 1e-4


def test_with_a_mask_layer_and_att_distill_average_over_real_tokens_and_ignore_the_cut():
    """Given input_mask, the terms are means over real tokens (hidden) and real (query, key) pairs (attention):
    NumPy's masked means, and the same value on the tensors cut to the longest example's length."""
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], np.int32)  # longest: 4 of S = 5
    s, t = rand_list(hidden(2), 0), rand_list(hidden(4), 1)
    pairs = [(0, 0), (1, 2), (2, 4)]
    kept = np.float64(mask)[:, :, None]
    expected = sum(((np.float64(s[i]) - t[j]) ** 2 * kept).sum() / (kept.sum() * H) for i, j in pairs)
    keys_offset = np.float32((mask[:, None, None, :] - 1.0) * 10000.0)  # the model's additive mask, from input_mask
    sa = [x + keys_offset for x in rand_list(scores(2), 2)]
    ta = [x + keys_offset for x in rand_list(scores(4), 3)]
    zero = lambda x: np.where(x <= -100, 0.0, np.float64(x))  # noqa: E731
    both = np.float64(mask)[:, None, :, None] * mask[:, None, None, :]
    expected_att = sum(((zero(sa[i]) - zero(ta[2 * i + 1])) ** 2 * both).sum() / (both.sum() * HEADS) for i in range(2))
    for width in (S, 4):
        m = flow.tensor(mask[:, :width])
        got = layer_distill([flow.tensor(x[:, :width]) for x in s], [flow.tensor(x[:, :width]) for x in t], mask=m)
        np.testing.assert_allclose(got.item(), expected, rtol=1e-5)
        got = att_distill(
            [flow.tensor(x[:, :, :width, :width]) for x in sa],
            [flow.tensor(x[:, :, :width, :width]) for x in ta],
            mask=m,
        )
        np.testing.assert_allclose(got.item(), expected_att, rtol=1e-5)
