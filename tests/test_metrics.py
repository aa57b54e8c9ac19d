"""Metrics equal their textbook values; the logged LR schedule equals the one OneFlow runs in the graph."""

import numpy as np
import pytest

from distil.train.metrics import accuracy, compute_metrics, f1, matthews_corrcoef, pearson, spearman
from distil.train.schedules import warmup_linear_factor, warmup_steps


def test_classification_metrics_by_hand():
    pred = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    gold = np.array([1, 0, 0, 1, 1, 0, 1, 0])
    # tp=3 fp=2 fn=1 tn=2
    assert accuracy(pred, gold) == 5 / 8
    assert f1(pred, gold) == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert matthews_corrcoef(pred, gold) == pytest.approx((3 * 2 - 2 * 1) / np.sqrt(5 * 4 * 3 * 4))
    assert matthews_corrcoef(np.ones(4, int), np.array([0, 1, 1, 0])) == 0.0  # constant prediction


def test_multiclass_mcc_matches_the_confusion_matrix_formula():
    gold = np.array([0, 1, 2, 2, 1, 0, 2, 1, 0, 2])
    pred = np.array([0, 2, 2, 2, 1, 0, 1, 1, 1, 2])
    c = np.zeros((3, 3))
    for g, p in zip(gold, pred):
        c[g, p] += 1
    t, p_, s, k = c.sum(1), c.sum(0), c.sum(), np.trace(c)
    expected = (k * s - t @ p_) / np.sqrt((s**2 - p_ @ p_) * (s**2 - t @ t))
    assert matthews_corrcoef(pred, gold) == pytest.approx(expected)
    assert matthews_corrcoef(gold, gold) == pytest.approx(1.0)


def test_correlations_with_ties():
    x = np.array([1.0, 2.0, 2.0, 4.0, 5.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    ranks_x, ranks_y = np.array([1, 2.5, 2.5, 4, 5]), np.array([2, 1, 4, 3, 5.0])
    assert spearman(x, y) == pytest.approx(np.corrcoef(ranks_x, ranks_y)[0, 1])


def test_compute_metrics_picks_argmax_or_regression():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5]])
    assert compute_metrics(("accuracy", "f1"), logits, np.array([[1], [0], [0]])) == {
        "accuracy": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
    }
    scores = np.array([[0.5], [2.0], [4.5]])
    out = compute_metrics(("pearson", "spearman"), scores, np.array([[1.0], [2.5], [4.0]], np.float32))
    assert out["spearman"] == pytest.approx(1.0) and out["mse"] == pytest.approx((0.25 + 0.25 + 0.25) / 3)


def test_lr_schedule_matches_oneflow_warmup_then_linear_decay():
    from distil.runtime import import_oneflow
    from distil.train.optim import build_optimizer

    flow = import_oneflow()
    total = 10
    assert warmup_steps(total, 0.3) == 3
    layer = flow.nn.Linear(2, 2)
    optimizer, schedule = build_optimizer(layer.named_parameters(), 1.0, 0.01, total, 0.3)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([warmup_linear_factor(s, total, 3) for s in range(total)])
    assert lrs[:4] == pytest.approx([0, 1 / 3, 2 / 3, 1]) and lrs[-1] == pytest.approx(1 / 7)


def test_weight_decay_skips_bias_and_layernorm():
    from distil.models.bert import BertConfig, BertForSequenceClassification
    from distil.train.optim import build_optimizer

    model = BertForSequenceClassification(
        BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    )
    optimizer, _ = build_optimizer(model.named_parameters(), 1e-3, 0.01, 10, graph=False)
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all("bias" not in names[id(p)] and "LayerNorm" not in names[id(p)] for p in decay.parameters)
    assert {names[id(p)] for p in no_decay.parameters} == {n for n in names.values() if "bias" in n or "LayerNorm" in n}
    assert optimizer.param_groups[0]["eps"] == 1e-6
    graph_optimizer, _ = build_optimizer(model.named_parameters(), 1e-3, 0.01, 10)
    (group,) = graph_optimizer.param_groups  # one group: the graph clips by one global norm
    assert group["clip_grad_max_norm"] == 1.0 and group["weight_decay"] == 0.01
