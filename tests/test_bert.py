"""BERT model: output contract, fast LayerNorm == the formula, padding invariance, eager == nn.Graph."""

from __future__ import annotations

import numpy as np
import pytest

from distil.models.bert import BertConfig, BertForSequenceClassification, LayerNorm, flow

CONFIG = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


def batch(b=13, s=7, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 99, (b, s)).astype(np.int32)
    lengths = rng.integers(2, s + 1, b)
    mask = (np.arange(s)[None, :] < lengths[:, None]).astype(np.int32)
    segments = ((np.arange(s)[None, :] >= lengths[:, None] // 2) & (mask == 1)).astype(np.int32)
    return ids * mask, segments, mask


def tensors(*arrays):
    return [flow.tensor(a) for a in arrays]


@pytest.mark.parametrize("num_labels", [2, 3, 1])
def test_output_contract(num_labels):
    model = BertForSequenceClassification(BertConfig(**CONFIG, num_labels=num_labels)).eval()
    out = model(*tensors(*batch()))
    assert set(out) == {"logits", "hidden_states", "attention_scores"}
    assert out["logits"].shape == (13, num_labels)
    assert [h.shape for h in out["hidden_states"]] == [(13, 7, 32)] * 3
    assert [a.shape for a in out["attention_scores"]] == [(13, 4, 7, 7)] * 2


@pytest.mark.parametrize("layers", [1, 3])
def test_logits_alone_equal_the_full_forwards(layers):
    flow.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**{**CONFIG, "num_hidden_layers": layers}, num_labels=3)).eval()
    with flow.no_grad():
        for parameter in model.parameters():  # no zero biases or unit LayerNorms
            parameter.add_(flow.randn(*parameter.shape) * 0.2)
        inputs = tensors(*batch())
        full, alone = model(*inputs)["logits"].numpy(), model.logits(*inputs).numpy()
    np.testing.assert_allclose(alone, full, rtol=0, atol=1e-6)
    assert np.ptp(full, axis=0).min() > 1e-2


def test_config_errors_name_the_numbers():
    with pytest.raises(
        ValueError, match=r"hidden size \(30\) is not a multiple of the number of attention heads \(4\)"
    ):
        BertConfig(**{**CONFIG, "hidden_size": 30})
    assert (
        BertConfig.from_dict({**CONFIG, "architectures": ["x"], "classifier_dropout": None}).classifier_dropout == 0.1
    )


def test_matmul_layernorm_equals_the_formula_and_the_stock_op():
    x = np.random.default_rng(1).normal(3.0, 2.0, (4, 5, 16)).astype(np.float32)
    norm = LayerNorm(16, 1e-12)
    norm.weight.data = flow.tensor(np.linspace(0.5, 1.5, 16, dtype=np.float32))
    norm.bias.data = flow.tensor(np.linspace(-1, 1, 16, dtype=np.float32))
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-12) * norm.weight.numpy() + norm.bias.numpy()
    got = norm(flow.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5)
    stock = flow.nn.functional.layer_norm(flow.tensor(x), (16,), eps=1e-12).numpy()
    np.testing.assert_allclose(got, stock * norm.weight.numpy() + norm.bias.numpy(), atol=2e-5)


def test_padding_does_not_change_real_tokens():
    model = BertForSequenceClassification(BertConfig(**CONFIG)).eval()
    ids, segments, mask = batch(b=1, s=5)
    mask[:] = 1
    short = model(*tensors(ids, segments, mask))
    padded = model(
        *tensors(np.pad(ids, ((0, 0), (0, 3))), np.pad(segments, ((0, 0), (0, 3))), np.pad(mask, ((0, 0), (0, 3))))
    )
    for a, b in zip(short["hidden_states"], padded["hidden_states"]):
        np.testing.assert_allclose(a.numpy(), b.numpy()[:, :5], atol=1e-5)
    np.testing.assert_allclose(short["logits"].numpy(), padded["logits"].numpy(), atol=1e-5)
    scores = padded["attention_scores"][0].numpy()
    assert (scores[..., 5:] < -9000).all() and (scores[..., :5] > -100).all()


class Forward(flow.nn.Graph):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def build(self, ids, segments, mask):
        return self.model(ids, segments, mask)


def test_graph_equals_eager_and_dropout_only_in_training():
    model = BertForSequenceClassification(BertConfig(**CONFIG)).eval()
    inputs = tensors(*batch())
    eager = model(*inputs)
    graph = Forward(model)(*inputs)
    np.testing.assert_allclose(graph["logits"].numpy(), eager["logits"].numpy(), atol=1e-5)
    for a, b in zip(graph["attention_scores"], eager["attention_scores"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    model.train()
    assert not np.allclose(model(*inputs)["logits"].numpy(), eager["logits"].numpy(), atol=1e-4)
