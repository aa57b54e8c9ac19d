"""The loss zoo (distil.ops.zoo): every operator equals its formula written independently in NumPy (float64), eagerly
and inside nn.Graph; padded positions are left out (changing them or cutting them off changes nothing); layer maps
pick the layers they name; bad shapes raise clear errors; gradients match finite differences of the formulas and
reach the student only; and the values match TextBrewer's own torch functions (fixtures/loss_zoo_reference.npz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distil.ops.distill import flow
from distil.ops.zoo import att_ce, fsp, gram, hidden_cos, mmd, nst
from loss_checks import np_log_softmax, scramble_padded_rows, scramble_padded_scores

B, S, H, H6, HEADS, L_S, L_T = 3, 7, 8, 6, 2, 3, 4
LENGTHS = (5, 2, 4)  # the longest real length, 5, is shorter than S: cutting removes columns
MAP = [0, 1, 3, 4]  # student index -> teacher index; teacher layer 2 is left out
PAIRS = [((0, 1), (0, 2)), ((1, 3), (2, 4)), ((2, 2), (3, 3))]  # teacher layer 1 is left out
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "loss_zoo_reference.npz"
TOL = dict(rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- NumPy references (float64)
def keep(mask, b, seq):
    return np.ones(seq, bool) if mask is None else np.asarray(mask[b], bool)


def np_cos(s, t, mapping, mask):
    total = 0.0
    for i, j in enumerate(mapping):
        x, y = np.float64(s[i]), np.float64(t[j])
        cos = (x * y).sum(-1) / np.sqrt(((x * x).sum(-1) + 1e-12) * ((y * y).sum(-1) + 1e-12))  # (B, S)
        total += (1.0 - cos).mean() if mask is None else (1.0 - cos)[np.asarray(mask, bool)].mean()
    return total


def np_att_ce(s, t, mapping, mask):
    """Softmaxes over the real keys only and a mean over (batch, head, real query): padding dropped, not masked."""
    total = 0.0
    for i in range(1, len(s) + 1):
        x, y = np.float64(s[i - 1]), np.float64(t[mapping[i] - 1])
        ce, count = 0.0, 0
        for b in range(x.shape[0]):
            k = keep(mask, b, x.shape[-1])
            xb, yb = x[b][:, k][:, :, k], y[b][:, k][:, :, k]  # (heads, n, n)
            ce += -(np.exp(np_log_softmax(yb)) * np_log_softmax(xb)).sum()
            count += xb.shape[0] * xb.shape[1]
        total += ce / count
    return total


def np_nst(s, t, mapping, mask):
    total = 0.0
    for i, j in enumerate(mapping):
        squares, count = 0.0, 0
        for b in range(s[i].shape[0]):
            k = keep(mask, b, s[i].shape[1])
            x, y = np.float64(s[i][b][k]), np.float64(t[j][b][k])  # (n, H_s), (n, H_t)
            squares += ((x @ x.T / x.shape[1] - y @ y.T / y.shape[1]) ** 2).sum()
            count += k.sum() ** 2
        total += squares / count
    return total


def np_fsp_pair(sa, sb, ta, tb, mask):
    squares = 0.0
    for b in range(sa.shape[0]):
        k = keep(mask, b, sa.shape[1])
        n = k.sum()
        g_s = np.float64(sa[b][k]).T @ np.float64(sb[b][k]) / n
        g_t = np.float64(ta[b][k]).T @ np.float64(tb[b][k]) / n
        squares += ((g_s - g_t) ** 2).sum()
    return squares / (sa.shape[0] * sa.shape[2] * sb.shape[2])


def np_gram(s, t, mapping, mask):
    return sum(np_fsp_pair(s[i], s[i], t[j], t[j], mask) for i, j in enumerate(mapping))


def np_fsp(s, t, pairs, mask):
    return sum(np_fsp_pair(s[a], s[b], t[c], t[d], mask) for (a, b), (c, d) in pairs)


# ---------------------------------------------------------------- inputs
def make_inputs(seed=0):
    """Hidden states (B, S, H) per layer, embeddings first; pre-softmax scores (B, heads, S, S) with -10000 added
    at padding keys, as the model produces them; a float 0/1 mask of real lengths LENGTHS."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, S), np.float32)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1.0
    padding = (mask - 1.0)[:, None, None, :] * 10000.0

    def normal(*shape, scale=1.0):
        return (scale * rng.normal(size=shape)).astype(np.float32)

    return dict(
        sh=[normal(B, S, H) for _ in range(L_S + 1)],
        th=[normal(B, S, H) for _ in range(L_T + 1)],
        sh6=[normal(B, S, H6) for _ in range(L_S + 1)],
        sa=[normal(B, HEADS, S, S, scale=2.0) + padding for _ in range(L_S)],
        ta=[normal(B, HEADS, S, S, scale=2.0) + padding for _ in range(L_T)],
        mask=mask,
    )


# name: (operator on OneFlow lists, NumPy reference, the student and teacher keys of make_inputs)
CASES = {
    "hidden_cos": (lambda s, t, m: hidden_cos(s, t, MAP, m), lambda s, t, m: np_cos(s, t, MAP, m), "sh", "th"),
    "att_ce": (lambda s, t, m: att_ce(s, t, MAP, m), lambda s, t, m: np_att_ce(s, t, MAP, m), "sa", "ta"),
    "nst": (lambda s, t, m: nst(s, t, MAP, m), lambda s, t, m: np_nst(s, t, MAP, m), "sh", "th"),
    "nst_narrow_student": (lambda s, t, m: nst(s, t, MAP, m), lambda s, t, m: np_nst(s, t, MAP, m), "sh6", "th"),
    "gram": (lambda s, t, m: gram(s, t, MAP, m), lambda s, t, m: np_gram(s, t, MAP, m), "sh", "th"),
    "fsp": (lambda s, t, m: fsp(s, t, PAIRS, m), lambda s, t, m: np_fsp(s, t, PAIRS, m), "sh", "th"),
}


def tensors(arrays, requires_grad=False):
    return [flow.tensor(a, requires_grad=requires_grad) for a in arrays]


def run(name, x, masked=True):
    op, _, s_key, t_key = CASES[name]
    return op(tensors(x[s_key]), tensors(x[t_key]), flow.tensor(x["mask"]) if masked else None).item()


def reference(name, x, masked=True):
    _, ref, s_key, t_key = CASES[name]
    return ref(x[s_key], x[t_key], x["mask"] if masked else None)


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("name", list(CASES))
def test_value_matches_the_numpy_formula(name, masked):
    x = make_inputs()
    np.testing.assert_allclose(run(name, x, masked), reference(name, x, masked), **TOL)


def perturb_padding(x, rng):
    """Random values at every padded position: hidden rows, score rows of padded queries, and padding keys (those
    stay -10000 + noise, the model's additive mask)."""
    y = {k: [a.copy() for a in v] if isinstance(v, list) else v for k, v in x.items()}
    for b, n in enumerate(LENGTHS):
        for key in ("sh", "th", "sh6"):
            for a in y[key]:
                scramble_padded_rows(a, b, n, rng)
        for key in ("sa", "ta"):
            for a in y[key]:
                scramble_padded_scores(a, b, n, rng)
    return y


@pytest.mark.parametrize("name", list(CASES))
def test_padded_positions_do_not_count(name):
    x = make_inputs()
    y = perturb_padding(x, np.random.default_rng(1))
    np.testing.assert_allclose(run(name, y), run(name, x), **TOL)
    assert abs(run(name, y, masked=False) - run(name, x, masked=False)) > 1e-3  # the change was visible


@pytest.mark.parametrize("name", list(CASES))
def test_cutting_the_batch_to_its_longest_real_length_changes_nothing(name):
    x = make_inputs()
    n = max(LENGTHS)
    cut = {
        k: [a[..., :n, :n] if k in ("sa", "ta") else a[:, :n] for a in v] if isinstance(v, list) else v[:, :n]
        for k, v in x.items()
    }
    np.testing.assert_allclose(run(name, cut), run(name, x), **TOL)


def test_mmd_is_nst():
    assert mmd is nst


def test_mask_may_be_integer():
    x = make_inputs()
    got = hidden_cos(tensors(x["sh"]), tensors(x["th"]), MAP, flow.tensor(x["mask"].astype(np.int64))).item()
    np.testing.assert_allclose(got, np_cos(x["sh"], x["th"], MAP, x["mask"]), **TOL)


# ---------------------------------------------------------------- layer maps
@pytest.mark.parametrize("op", [hidden_cos, nst, gram])
def test_an_explicit_map_compares_the_layers_it_names(op):
    """A student that copies teacher layers 0, 1, 3, 4 scores 0 under that map; under [0, 1, 2, 4] only the
    student 2 <-> teacher 2 pair differs, and the loss is that pair's term alone."""
    x = make_inputs()
    student = [x["th"][j] for j in MAP]
    ref = {hidden_cos: np_cos, nst: np_nst, gram: np_gram}[op]
    for mask in (None, flow.tensor(x["mask"])):
        assert abs(op(tensors(student), tensors(x["th"]), MAP, mask).item()) < 1e-6
        other = op(tensors(student), tensors(x["th"]), [0, 1, 2, 4], mask).item()
        alone = ref([student[2]], [x["th"][2]], [0], None if mask is None else x["mask"])
        assert other > 1e-2
        np.testing.assert_allclose(other, alone, **TOL)
    np.testing.assert_allclose(
        op(tensors(x["sh"]), tensors(x["th"]), "last").item(),
        op(tensors(x["sh"]), tensors(x["th"]), [0, 2, 3, 4]).item(),
        **TOL,
    )


@pytest.mark.parametrize(
    "name, left_out, used", [("hidden_cos", 2, 3), ("att_ce", 1, 2), ("nst", 2, 4), ("gram", 2, 1), ("fsp", 1, 4)]
)
def test_only_the_named_teacher_layers_count(name, left_out, used):
    x = make_inputs()
    base = run(name, x)
    t_key = CASES[name][3]
    noise = np.random.default_rng(3).normal(size=x[t_key][0].shape).astype(np.float32)
    for layer, changes in ((left_out, False), (used, True)):
        y = dict(x, **{t_key: [a + noise if k == layer else a for k, a in enumerate(x[t_key])]})
        assert (abs(run(name, y) - base) > 1e-3) == changes, (layer, changes)


def test_att_ce_default_uniform_map():
    x = make_inputs()
    got = att_ce(tensors(x["sa"][:2]), tensors(x["ta"]), mask=flow.tensor(x["mask"])).item()
    np.testing.assert_allclose(got, np_att_ce(x["sa"][:2], x["ta"], [0, 2, 4], x["mask"]), **TOL)


# ---------------------------------------------------------------- errors
def test_bad_shapes_raise_clear_errors():
    x = make_inputs()
    sh, th, sh6, sa, ta = (tensors(x[k]) for k in ("sh", "th", "sh6", "sa", "ta"))
    mask = flow.tensor(x["mask"])
    for op in (hidden_cos, gram):
        with pytest.raises(
            ValueError,
            match=r"layer pair student 0 <-> teacher 0: shapes \(3, 7, 6\) and "
            r"\(3, 7, 8\) differ \(project the student",
        ):
            op(sh6, th, MAP)
    with pytest.raises(ValueError, match="student layer 1 has 2 heads, teacher layer 1 has 4"):
        att_ce(sa, [flow.tensor(np.zeros((B, 4, S, S), np.float32))] * L_T, MAP)
    with pytest.raises(ValueError, match=r"student layer 1 is mapped to the teacher embeddings \(0\)"):
        att_ce(sa, ta, [0, 0, 3, 4])
    with pytest.raises(
        ValueError,
        match=r"nst pair student 0 <-> teacher 0: \(batch, length\) \(3, 7\) and \(3, 6\) "
        r"differ \(only the widths may differ\)",
    ):
        nst(sh, [a[:, :6] for a in th], MAP)
    with pytest.raises(ValueError, match=r"fsp layer pair student 3 <-> teacher 4: shapes \(3, 7, 6\)"):
        fsp(sh[:3] + [sh6[3]], th, [((0, 3), (0, 4))])
    with pytest.raises(ValueError, match=r"the teacher part must be two layer indices in 0..4, got \(2, 5\)"):
        fsp(sh, th, [((0, 1), (2, 5))])
    with pytest.raises(ValueError, match=r"fsp pair \(\(0, 1\),\) is not \(\(s_a, s_b\), \(t_a, t_b\)\)"):
        fsp(sh, th, [((0, 1),)])
    with pytest.raises(ValueError, match=r"fsp pair \(0, 1\): the student part must be two layer indices in 0..3"):
        fsp(sh, th, [(0, 1)])
    with pytest.raises(ValueError, match="fsp needs a non-empty list"):
        fsp(sh, th, [])
    with pytest.raises(ValueError, match=r"mask has shape \(3, 6\), the tensors it masks need .* \(3, 7\)"):
        hidden_cos(sh, th, MAP, mask[:, :6])
    with pytest.raises(ValueError, match="4 is not divisible by 3; give an explicit mapping"):
        nst(sh, th)


# ---------------------------------------------------------------- nn.Graph and gradients
class LossGraph(flow.nn.Graph):
    """build returns the loss of (mask, *student tensors, *teacher tensors)."""

    def __init__(self, op, n_student):
        super().__init__()
        self.op, self.n_student = op, n_student

    def build(self, mask, *reps):
        return self.op(list(reps[: self.n_student]), list(reps[self.n_student :]), mask)


@pytest.mark.parametrize("name", ["hidden_cos", "att_ce", "nst_narrow_student", "gram", "fsp"])
def test_same_value_inside_an_nn_graph(name):
    x = make_inputs()
    op, _, s_key, t_key = CASES[name]
    got = LossGraph(op, len(x[s_key]))(flow.tensor(x["mask"]), *tensors(x[s_key]), *tensors(x[t_key]))
    np.testing.assert_allclose(got.numpy(), run(name, x), **TOL)
    np.testing.assert_allclose(got.numpy(), reference(name, x), **TOL)


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_the_formula_and_reaches_the_student_only(name):
    """<∂loss/∂student, v> equals a central difference of the float64 formula along a random direction v."""
    x = make_inputs()
    op, ref, s_key, t_key = CASES[name]
    student, teacher = tensors(x[s_key], requires_grad=True), tensors(x[t_key], requires_grad=True)
    op(student, teacher, flow.tensor(x["mask"])).backward()
    assert all(t.grad is None or not np.any(t.grad.numpy()) for t in teacher)
    rng = np.random.default_rng(2)
    v = [rng.normal(size=a.shape) for a in x[s_key]]
    eps = 1e-4
    plus = ref([np.float64(a) + eps * d for a, d in zip(x[s_key], v)], x[t_key], x["mask"])
    minus = ref([np.float64(a) - eps * d for a, d in zip(x[s_key], v)], x[t_key], x["mask"])
    directional = sum(float((s.grad.numpy() * d).sum()) for s, d in zip(student, v))
    np.testing.assert_allclose(directional, (plus - minus) / (2 * eps), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- TextBrewer's own functions
def test_values_match_textbrewer():
    """Expected values written by fixtures/make_loss_zoo_fixture.py from textbrewer.losses (float64 torch)."""
    ref = np.load(FIXTURE)
    sh, th, sh6, sa, ta = (
        [flow.tensor(a) for a in ref[k]] for k in ("student_h", "teacher_h", "student_h6", "student_att", "teacher_att")
    )
    mapping = [int(m) for m in ref["mapping"]]
    pairs = [((int(a), int(b)), (int(c), int(d))) for a, b, c, d in ref["fsp_pairs"]]
    seq, width = ref["student_h"].shape[2], ref["student_h"].shape[3]
    tol = dict(rtol=1e-5, atol=1e-6)
    for suffix, mask in (("", None), ("_masked", flow.tensor(ref["mask"]))):
        got = {
            "cos": hidden_cos(sh, th, mapping, mask),
            "att_ce": att_ce(sa, ta, mapping, mask),
            "nst": nst(sh, th, mapping, mask),
            "gram": gram(sh, th, mapping, mask),
            "fsp": fsp(sh, th, pairs, mask),
        }
        if mask is None:
            got["nst6"] = nst(sh6, th, mapping)
        for key, value in got.items():
            expected = float(ref[f"expected_{key}{suffix}"])
            if key == "nst" and mask is not None:
                expected *= (seq / width) ** 2  # TextBrewer's masked branch divides its Gram matrices by S, not H
            np.testing.assert_allclose(value.item(), expected, **tol, err_msg=key + suffix)
    np.testing.assert_allclose(
        nst(sh6, th, mapping, flow.tensor(ref["mask"])).item(), float(ref["expected_nst6_masked_rescaled"]), **tol
    )
