"""Training parity with transformers + torch.optim.AdamW (fixtures: tests/fixtures/make_training_reference.py).

The same initial weights, the same batches in the same order (written as an OFRecord split and read
by the project's reader), the project's optimizer, schedule and training graph (or eager step):
with dropout off, the loss of each of 30 steps and the weights after them agree with PyTorch's;
with dropout on, the losses over 300 steps and the gradient noise dropout injects are PyTorch's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distil.data import ofrecord
from distil.data.dataset import OFRecordDataset
from distil.errors import UsageError
from distil.fileio import file_sha256
from distil.models import io
from distil.models.dropout import Dropout, seed_dropout
from distil.models.hf_format import read_hf
from distil.runtime import import_oneflow
from distil.train.settings import TrainSettings, micro_batch_count
from distil.train.step import DistillStep, hard_label
from distil.train.trainer import build_step_runner, seed_everything

flow = import_oneflow()

FIXTURES = Path(__file__).parent / "fixtures" / "train_parity"
GRAD_NORM_PARAMS = (
    "bert.embeddings.word_embeddings.weight",
    "bert.encoder.layer.0.output.dense.weight",
    "classifier.weight",
)
SETTINGS = TrainSettings(learning_rate=1e-3, weight_decay=0.01, warmup_proportion=0.1, batch_size=8, clip_grad=1.0)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURES / "reference.npz"))


@pytest.fixture(scope="module")
def batches():
    return dict(np.load(FIXTURES / "batches.npz"))


@pytest.fixture(scope="module")
def split(tmp_path_factory, batches) -> Path:
    """The fixture's batches, in order, as a converted split (one record per example)."""
    split_dir = tmp_path_factory.mktemp("parity") / "train"
    split_dir.mkdir()
    flat = {k: v.reshape(-1, v.shape[-1]) for k, v in batches.items()}
    writer = ofrecord.PartWriter(split_dir, records_per_part=1 << 20)
    for i in range(len(flat["input_ids"])):
        writer.add(ofrecord.frame(ofrecord.encode_record({k: ("int32", v[i].tolist()) for k, v in flat.items()})))
    (count,) = writer.close()
    part = split_dir / ofrecord.part_name(0)
    meta = {
        "format": "bert",
        "num_examples": count,
        "seq_length": flat["input_ids"].shape[1],
        "parts": [{"name": part.name, "records": count, "bytes": part.stat().st_size, "sha256": file_sha256(part)}],
        "features": {k: {"dtype": "int32", "shape": [v.shape[1]]} for k, v in flat.items()},
    }
    (split_dir / ofrecord.META_FILE).write_text(json.dumps(meta))
    return split_dir


def initial_model(dropout: float):
    pretrained = io.read_pretrained(FIXTURES / "model")
    config, state = pretrained.config, pretrained.state
    config = {
        **config,
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
        "classifier_dropout": dropout,
    }
    model = io.build_model(config)
    io.load_state(model, state, "parity fixture")
    return model.train()


def train(split: Path, steps: int, dropout: float, eager: bool, seed: int = 0, micro_batches: int = 1):
    model = initial_model(dropout)
    step_module = DistillStep(model, [hard_label()])
    seed_everything(step_module, seed)
    data = OFRecordDataset(split, SETTINGS.batch_size, shuffle=False)
    runner = build_step_runner(step_module, data.names, SETTINGS, steps, eager=eager, micro_batches=micro_batches)
    losses, lrs = [], []
    for _ in range(steps):
        if eager:
            lrs.append(runner.optimizer.param_groups[0]["lr"])
        losses.append(float(runner.step(data())["loss"].numpy().mean()))
    return model, np.array(losses), lrs


@pytest.mark.parametrize(
    "eager,micro_batches", [(False, 1), (False, 4), (True, 1)], ids=["graph", "graph-4-micro-batches", "eager"]
)
def test_thirty_steps_without_dropout_match_pytorch(split, reference, eager, micro_batches):
    model, losses, lrs = train(
        split, len(reference["nodrop_losses"]), dropout=0.0, eager=eager, micro_batches=micro_batches
    )
    np.testing.assert_allclose(losses, reference["nodrop_losses"], rtol=1e-4)
    if eager:
        np.testing.assert_allclose(lrs, reference["nodrop_lrs"], rtol=1e-6, atol=1e-12)
    worst = {}
    for name, value in model.state_dict().items():
        want = reference[f"nodrop/{name}"]
        worst[name] = float(np.abs(value.numpy() - want).max() / np.abs(want).max())
    assert max(worst.values()) <= 1e-4, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


def test_dropout_training_losses_are_pytorchs(split, reference):
    """300 steps with dropout 0.1: the loss curve stays inside the spread of three PyTorch seeds."""
    _, losses, _ = train(split, reference["dropout_losses"].shape[1], dropout=0.1, eager=False)
    torch_losses = reference["dropout_losses"]
    for window in (slice(0, 100), slice(100, 200), slice(200, 300)):
        ours, theirs = losses[window].mean(), torch_losses[:, window].mean(axis=1)
        spread = max(theirs.std(), 0.15 * theirs.mean())
        assert abs(ours - theirs.mean()) <= 3 * spread, (window, ours, theirs)


def test_dropout_gradient_noise_is_pytorchs(batches, reference):
    """At the initial weights of the tiny BERT, the mean per-draw gradient norm under dropout is PyTorch's.

    (This small random model is not sensitive to shared masks; the real-checkpoint test below is.)
    """
    model = initial_model(0.1)
    seed_dropout(model, 5)
    inputs = {
        **{k: batches[k][0] for k in ("input_ids", "segment_ids", "input_mask")},
        "labels": batches["label_ids"][0].reshape(-1),
    }
    draws = reference["dropout_grad_norms"].shape[1]
    assert_noise_matches(gradient_norms(model, inputs, draws).mean(axis=0), reference["dropout_grad_norms"])


def test_every_dropout_site_draws_its_own_mask_in_eager_and_graph():
    sites = flow.nn.ModuleList([Dropout(0.1) for _ in range(3)])
    seed_dropout(sites, 3)
    x = flow.ones(64, 96)

    class Graph(flow.nn.Graph):
        def __init__(self):
            super().__init__()
            self.sites = sites

        def build(self, x):
            return [site(x) for site in self.sites]

    for run in (lambda x: [site(x) for site in sites], Graph()):
        first, second = [[o.numpy() for o in run(x)] for _ in range(2)]
        assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
        assert not np.array_equal(first[0], second[0])  # a new mask every call
        kept = np.concatenate(first) != 0
        assert 0.88 < kept.mean() < 0.92
        np.testing.assert_allclose(np.concatenate(first)[kept], 1 / 0.9, rtol=1e-6)


def test_dropout_masks_follow_the_seed():
    def masks(seed):
        site = Dropout(0.5)
        seed_dropout(site, seed)
        return site(flow.ones(32, 32)).numpy()

    assert np.array_equal(masks(1), masks(1))
    assert not np.array_equal(masks(1), masks(2))
    assert np.array_equal(Dropout(0.5).eval()(flow.ones(4, 4)).numpy(), np.ones((4, 4)))


def minilm3(minilm_dir: Path, head: dict, dropout: float):
    """The first 3 layers of the real all-MiniLM-L6-v2 with the fixture's 2-label head."""
    config, state, _ = read_hf(minilm_dir)
    config = {
        **config,
        "num_hidden_layers": 3,
        "num_labels": 2,
        "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout,
        "classifier_dropout": dropout,
    }
    state = {k: v for k, v in state.items() if not k.startswith(tuple(f"bert.encoder.layer.{i}." for i in (3, 4, 5)))}
    state.update({k: head[k] for k in ("classifier.weight", "classifier.bias")})
    model = io.build_model(config)
    io.load_state(model, state, str(minilm_dir))
    return model.train()


def gradient_norms(model, inputs: dict, draws: int) -> np.ndarray:
    """[draws, 3]: gradient norms of the word embeddings, layer 0's FFN output and the classifier per draw."""
    args = [flow.tensor(inputs[k]) for k in ("input_ids", "segment_ids", "input_mask")]
    labels = flow.tensor(inputs["labels"]).to(flow.int64)
    params = dict(model.named_parameters())
    rows = []
    for _ in range(draws):
        flow.nn.functional.cross_entropy(model(*args)["logits"], labels).backward()
        rows.append([float(np.linalg.norm(params[n].grad.numpy())) for n in GRAD_NORM_PARAMS])
        for p in model.parameters():
            p.grad = None
    return np.array(rows)


def assert_noise_matches(ours: np.ndarray, reference: np.ndarray) -> None:
    """ours: mean norm per parameter; reference: [seeds, draws, params] from PyTorch. Within its seeds' range ±20 %."""
    theirs = reference.mean(axis=1)
    for i, name in enumerate(GRAD_NORM_PARAMS):
        assert 0.8 * theirs[:, i].min() <= ours[i] <= 1.25 * theirs[:, i].max(), (name, ours[i], theirs[:, i])


def test_dropout_gradient_noise_of_a_real_checkpoint_is_pytorchs(minilm_dir):
    """Where OneFlow's own nn.Dropout failed: on pretrained MiniLM layers its shared masks made the lower
    layers' gradients 0.1x (and, with hidden dropout alone, 40x) PyTorch's, and fine-tuning never learned."""
    ref = dict(np.load(FIXTURES / "minilm3_dropout.npz"))
    np.testing.assert_allclose(
        gradient_norms(minilm3(minilm_dir, ref, 0.0), ref, 1)[0], ref["nodrop_grad_norms"], rtol=2e-3
    )
    model = minilm3(minilm_dir, ref, 0.1)
    seed_dropout(model, 11)
    assert_noise_matches(gradient_norms(model, ref, ref["grad_norms"].shape[1]).mean(axis=0), ref["grad_norms"])


@pytest.mark.parametrize(
    "batch,seq,micro,expected",
    [
        (32, 128, 0, 4),
        (32, 64, 0, 2),
        (32, 32, 0, 1),
        (20, 128, 0, 4),
        (7, 128, 0, 1),
        (32, 128, 16, 2),
        (32, 32, 4, 8),
    ],
)
def test_a_step_is_cut_into_micro_batches_of_at_most_1024_tokens_unless_told(batch, seq, micro, expected):
    settings = TrainSettings(batch_size=batch, micro_batch_size=micro)
    assert micro_batch_count(settings, seq) == expected


def test_a_micro_batch_size_that_does_not_divide_the_batch_is_refused():
    with pytest.raises(UsageError, match=r"--micro_batch_size must divide --batch_size \(32\), got 5"):
        TrainSettings(batch_size=32, micro_batch_size=5)
