"""The Distilled-BiLSTM student: output contract, padding invariance, the LSTM equations, nn.Graph."""

from __future__ import annotations

import numpy as np
import pytest

from distil.models.lstm import BiLstmForSequenceClassification, LstmConfig, sentence_masks
from distil.runtime import import_oneflow

flow = import_oneflow()

VOCAB, EMB, HIDDEN, FC, BATCH, SEQ = 50, 8, 6, 10, 5, 9
PAD = VOCAB - 1


def tiny_config(**overrides) -> LstmConfig:
    values = dict(
        vocab_size=VOCAB,
        pad_token_id=PAD,
        embedding_size=EMB,
        hidden_size=HIDDEN,
        fc_size=FC,
        dropout_prob=0.1,
        num_labels=2,
    )
    values.update(overrides)
    return LstmConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> BiLstmForSequenceClassification:
    flow.manual_seed(seed)
    model = BiLstmForSequenceClassification(tiny_config(**overrides))
    model.eval()
    return model


def pack(examples, seq: int = SEQ):
    """[(words_a, words_b)] -> int32 (ids, segments, mask) padded to `seq`, as the converter packs them."""
    ids, segments, mask = [], [], []
    for a, b in examples:
        n = len(a) + len(b)
        ids.append(list(a) + list(b) + [PAD] * (seq - n))
        segments.append([0] * len(a) + [1] * len(b) + [0] * (seq - n))
        mask.append([1] * n + [0] * (seq - n))
    return tuple(flow.tensor(np.array(x, dtype=np.int32)) for x in (ids, segments, mask))


def logits_of(model, examples, seq: int = SEQ) -> np.ndarray:
    with flow.no_grad():
        return model(*pack(examples, seq))["logits"].numpy()


def random_words(rng, n):
    return [int(w) for w in rng.integers(0, VOCAB - 1, size=n)]


# ----------------------------------------------------------------------------- config


def test_config_round_trip_and_defaults():
    config = tiny_config(pair_mode="joint", num_labels=3)
    again = LstmConfig.from_dict(dict(config.to_dict(), unused_field=1))
    assert again == config
    assert again.to_dict()["pair_mode"] == "joint"
    default = LstmConfig()
    assert (default.embedding_size, default.hidden_size, default.fc_size) == (300, 300, 400)
    assert (default.vocab_size, default.pad_token_id, default.pair_mode) == (10002, 10001, "separate")


@pytest.mark.parametrize(
    "field, value",
    [
        ("pair_mode", "stacked"),
        ("hidden_size", 0),
        ("dropout_prob", 1.5),
        ("pad_token_id", VOCAB),
        ("model_type", "bert"),
        ("num_labels", -1),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=str(value)) as error:
        LstmConfig.from_dict(dict(tiny_config().to_dict(), **{field: value}))
    assert field in str(error.value)


def test_initialisation():
    """Embeddings N(0, initializer_range) (the original's 0.25); LSTM weights U(±1/sqrt(H)) like PyTorch."""
    flow.manual_seed(0)
    model = BiLstmForSequenceClassification(tiny_config(vocab_size=400, initializer_range=0.25))
    table = model.word_embeddings.weight.numpy()
    assert abs(table.std() - 0.25) < 0.02 and abs(table.mean()) < 0.02
    bound = 1.0 / np.sqrt(HIDDEN)
    for p in (model.lstm.weight_ih, model.lstm.weight_hh, model.lstm.bias):
        values = p.numpy()
        assert np.abs(values).max() <= bound and values.std() > 0.4 * bound


# ----------------------------------------------------------------------------- output contract


@pytest.mark.parametrize("num_labels", [2, 3, 1])
@pytest.mark.parametrize("pair_mode", ["separate", "joint", "single"])
def test_output_contract(num_labels, pair_mode):
    model = tiny_model(num_labels=num_labels, pair_mode=pair_mode)
    rng = np.random.default_rng(1)
    examples = [(random_words(rng, 3), random_words(rng, 4)), (random_words(rng, 9), [])] + [
        (random_words(rng, 2), random_words(rng, 1))
    ] * (BATCH - 2)
    out = model(*pack(examples))
    assert set(out) == {"logits", "hidden_states", "attention_scores"}
    assert tuple(out["logits"].shape) == (BATCH, num_labels)
    assert out["logits"].dtype == flow.float32
    assert out["hidden_states"] == [] and out["attention_scores"] == []
    assert np.isfinite(out["logits"].numpy()).all()
    assert model.dense.in_features == (8 if pair_mode == "separate" else 2) * HIDDEN


# ----------------------------------------------------------------------------- padding invariance


@pytest.mark.parametrize("pair_mode", ["separate", "joint"])
def test_single_sentences_padding_invariant(pair_mode):
    model = tiny_model(pair_mode=pair_mode)
    rng = np.random.default_rng(2)
    examples = [(random_words(rng, n), []) for n in (1, 4, SEQ, 7, 2)]
    batched = logits_of(model, examples)
    for row, (a, b) in enumerate(examples):
        alone = logits_of(model, [(a, b)], seq=len(a))
        np.testing.assert_allclose(batched[row], alone[0], rtol=1e-5, atol=1e-6)
    # padding with other ids than <PAD> changes nothing either: the mask, not the id, decides
    ids, segments, mask = pack(examples)
    noisy = np.where(mask.numpy() == 1, ids.numpy(), rng.integers(0, VOCAB, size=ids.shape)).astype(np.int32)
    with flow.no_grad():
        again = model(flow.tensor(noisy), segments, mask)["logits"].numpy()
    np.testing.assert_allclose(again, batched, rtol=1e-5, atol=1e-6)


def test_pairs_padding_invariant_and_use_both_sentences():
    model = tiny_model(pair_mode="separate")
    rng = np.random.default_rng(3)
    lengths = ((3, 4), (1, 1), (5, 4), (2, 0), (6, 1))
    examples = [(random_words(rng, la), random_words(rng, lb)) for la, lb in lengths]
    batched = logits_of(model, examples)
    for row, example in enumerate(examples):
        alone = logits_of(model, [example], seq=len(example[0]) + len(example[1]))
        np.testing.assert_allclose(batched[row], alone[0], rtol=1e-5, atol=1e-6)
    changed_b = [(a, [(w + 1) % (VOCAB - 1) for w in b]) for a, b in examples]
    differs = np.abs(logits_of(model, changed_b) - batched).max(axis=1)
    assert (differs[[0, 1, 2, 4]] > 1e-4).all() and differs[3] == 0.0  # row 3 has no b to change


def test_separate_mode_encodes_each_sentence_on_its_own():
    """The pair (a, b) reads a's end states as if a ran alone: a swap of b's order changes only h_b."""
    model = tiny_model(pair_mode="separate")
    rng = np.random.default_rng(4)
    a, b = random_words(rng, 4), random_words(rng, 3)
    emb = model.word_embeddings
    ids, segments, mask = pack([(a, b), (a, []), (b, [])], seq=7)
    with flow.no_grad():
        encoded = model.lstm(emb(ids), sentence_masks(segments, mask, True)).numpy()  # (3, 2, 2H)
    np.testing.assert_allclose(encoded[0, 0], encoded[1, 0], rtol=1e-5, atol=1e-6)  # h_a of the pair = a alone
    np.testing.assert_allclose(encoded[0, 1], encoded[2, 0], rtol=1e-5, atol=1e-6)  # h_b of the pair = b alone
    assert np.all(encoded[1, 1] == 0.0)  # empty b: zero state


# ----------------------------------------------------------------------------- the LSTM equations


def numpy_lstm(x, w_ih, w_hh, bias):
    """Final state of one LSTM direction over x (L, E); gates i, f, g, o as documented in BiLstm."""
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    hidden = w_hh.shape[1]
    h, c = np.zeros(hidden), np.zeros(hidden)
    for x_t in x:
        z = w_ih @ x_t + w_hh @ h + bias
        i, f, g, o = (
            sigmoid(z[:hidden]),
            sigmoid(z[hidden : 2 * hidden]),
            np.tanh(z[2 * hidden : 3 * hidden]),
            sigmoid(z[3 * hidden :]),
        )
        c = f * c + i * g
        h = o * np.tanh(c)
    return h


def test_directions_match_numpy_lstm():
    model = tiny_model(pair_mode="separate")
    rng = np.random.default_rng(5)
    with flow.no_grad():  # larger weights than the init so that every gate matters
        for p in (model.lstm.weight_ih, model.lstm.weight_hh, model.lstm.bias):
            p.copy_(flow.tensor(rng.normal(0.0, 0.6, size=tuple(p.shape)).astype(np.float32)))
    a, b = random_words(rng, 5), random_words(rng, 3)
    ids, segments, mask = pack([(a, b), (b, [])], seq=SEQ)
    with flow.no_grad():
        encoded = model.lstm(model.word_embeddings(ids), sentence_masks(segments, mask, True)).numpy()
    table = model.word_embeddings.weight.numpy().astype(np.float64)
    w_ih, w_hh, bias = (
        p.numpy().astype(np.float64) for p in (model.lstm.weight_ih, model.lstm.weight_hh, model.lstm.bias)
    )
    for sentence, got in ((a, encoded[0, 0]), (b, encoded[0, 1]), (b, encoded[1, 0])):
        x = table[sentence]
        forward = numpy_lstm(x, w_ih[0], w_hh[0], bias[0])
        backward = numpy_lstm(x[::-1], w_ih[1], w_hh[1], bias[1])
        np.testing.assert_allclose(got, np.concatenate([forward, backward]), rtol=0, atol=1e-5)
    assert np.abs(encoded[0, 0, :HIDDEN] - encoded[0, 0, HIDDEN:]).max() > 1e-2  # the directions differ


def test_matches_oneflow_lstm_outputs_and_gradients():
    """Against flow.nn.LSTM with the same weights on an unpadded batch: states and weight gradients."""
    model = tiny_model(pair_mode="joint")
    stock = flow.nn.LSTM(EMB, HIDDEN, batch_first=True, bidirectional=True)
    with flow.no_grad():
        for d, suffix in enumerate(("", "_reverse")):
            getattr(stock, "weight_ih_l0" + suffix).copy_(model.lstm.weight_ih[d])
            getattr(stock, "weight_hh_l0" + suffix).copy_(model.lstm.weight_hh[d])
            getattr(stock, "bias_ih_l0" + suffix).copy_(model.lstm.bias[d])
            getattr(stock, "bias_hh_l0" + suffix).zero_()
    rng = np.random.default_rng(6)
    x = flow.tensor(rng.normal(size=(BATCH, SEQ, EMB)).astype(np.float32))
    target = flow.tensor(rng.normal(size=(BATCH, 2 * HIDDEN)).astype(np.float32))
    sentences = flow.ones(BATCH, 1, SEQ)
    ours = model.lstm(x, sentences)[:, 0]
    _, (h_n, _) = stock(x)
    theirs = flow.cat([h_n[0], h_n[1]], dim=-1)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    ((ours - target) ** 2).sum().backward()
    ((theirs - target) ** 2).sum().backward()
    for d, suffix in enumerate(("", "_reverse")):
        np.testing.assert_allclose(
            model.lstm.weight_ih.grad[d].numpy(),
            getattr(stock, "weight_ih_l0" + suffix).grad.numpy(),
            rtol=1e-4,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            model.lstm.weight_hh.grad[d].numpy(),
            getattr(stock, "weight_hh_l0" + suffix).grad.numpy(),
            rtol=1e-4,
            atol=1e-5,
        )


# ----------------------------------------------------------------------------- nn.Graph and training


class EvalGraph(flow.nn.Graph):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def build(self, input_ids, segment_ids, input_mask):
        return self.model(input_ids, segment_ids, input_mask)["logits"]


class TrainGraph(flow.nn.Graph):
    def __init__(self, model, optimizer):
        super().__init__()
        self.model = model
        self.loss_fn = flow.nn.CrossEntropyLoss()
        self.add_optimizer(optimizer)

    def build(self, input_ids, segment_ids, input_mask, labels):
        loss = self.loss_fn(self.model(input_ids, segment_ids, input_mask)["logits"], labels)
        loss.backward()
        return loss


def toy_batch(seed: int = 7):
    """Learnable: label 1 iff sentence a contains word 3."""
    rng = np.random.default_rng(seed)
    examples, labels = [], []
    for row in range(8):
        a = random_words(rng, int(rng.integers(2, 5)))
        a = [w if w != 3 else 4 for w in a]
        if row % 2:
            a[int(rng.integers(0, len(a)))] = 3
        examples.append((a, random_words(rng, int(rng.integers(0, 4)))))
        labels.append(row % 2)
    return pack(examples) + (flow.tensor(np.array(labels, dtype=np.int64)),)


@pytest.mark.parametrize("pair_mode", ["separate", "joint"])
def test_eager_equals_graph_eval(pair_mode):
    model = tiny_model(pair_mode=pair_mode)
    inputs = toy_batch()[:3]
    with flow.no_grad():
        eager = model(*inputs)["logits"].numpy()
    graph = EvalGraph(model)(*inputs).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-6)


def test_train_graph_learns_and_updates_both_directions():
    model = tiny_model(dropout_prob=0.0)
    model.train()
    before = {name: p.numpy().copy() for name, p in model.named_parameters()}
    graph = TrainGraph(model, flow.optim.AdamW(model.parameters(), lr=0.02))
    batch = toy_batch()
    losses = [float(graph(*batch).numpy()) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0], losses
    after = {name: p.numpy() for name, p in model.named_parameters()}
    for name in ("word_embeddings.weight", "dense.weight", "classifier.weight"):
        assert np.abs(after[name] - before[name]).max() > 1e-4, name
    for name in ("lstm.weight_ih", "lstm.weight_hh", "lstm.bias"):
        for direction in (0, 1):
            assert np.abs(after[name][direction] - before[name][direction]).max() > 1e-4, (name, direction)


def test_eager_gradients_reach_embedding_and_both_directions():
    model = tiny_model()
    model.train()
    *inputs, labels = toy_batch()
    flow.nn.functional.cross_entropy(model(*inputs)["logits"], labels).backward()
    assert np.abs(model.word_embeddings.weight.grad.numpy()).max() > 0
    for p in (model.lstm.weight_ih, model.lstm.weight_hh, model.lstm.bias):
        grad = p.grad.numpy()
        assert np.abs(grad[0]).max() > 0 and np.abs(grad[1]).max() > 0
    # words that occur only as padding get no gradient
    ids, _, mask = (t.numpy() for t in inputs[:3])
    unused = sorted(set(range(VOCAB)) - set(ids[mask == 1].tolist()))
    assert PAD in unused and np.all(model.word_embeddings.weight.grad.numpy()[unused] == 0)
