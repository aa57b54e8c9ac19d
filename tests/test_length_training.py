"""Training on length buckets (--length_buckets auto): every epoch holds the rows it holds at the full length,
regrouped by length and cut; every algorithm's loss and gradients at a batch's bucket length are those at
max_seq_length; the graphs of the bucket lengths share one AdamW state; a resumed stream goes on unchanged;
two processes step through the same bucket lengths."""

from __future__ import annotations

import collections
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import conftest
from conftest import PYTHON, free_port
from distil.data import buckets, ofrecord
from distil.data.convert import length_summary
from distil.data.dataset import OFRecordDataset, TrainStream
from distil.fileio import file_sha256
from distil.launch import LAUNCHER_VARIABLES
from distil.models import io
from distil.models.bert import BertConfig
from distil.models.lstm import LstmConfig
from distil.ops.theseus import TheseusStep
from distil.runtime import import_oneflow
from distil.train.placement import Placement
from distil.train.settings import TrainSettings
from distil.train.step import DistillStep, attention, hard_label, hidden_states, soft_labels
from distil.train.trainer import build_step_runner

flow = import_oneflow()

SEQ, BATCH, EXAMPLES = 32, 8, 100


def write_split(split_dir: Path, lengths: list[int], seq_length: int = SEQ) -> Path:
    """Example i: `lengths[i]` tokens of id i + 1, then padding; meta.json with its length histogram."""
    split_dir.mkdir(parents=True)
    writer = ofrecord.PartWriter(split_dir, records_per_part=1 << 20)
    for i, n in enumerate(lengths):
        pad = [0] * (seq_length - n)
        writer.add(
            ofrecord.frame(
                ofrecord.encode_record(
                    {
                        "input_ids": ("int32", [i + 1] * n + pad),
                        "input_mask": ("int32", [1] * n + pad),
                        "segment_ids": ("int32", [0] * seq_length),
                        "label_ids": ("int32", [i % 2]),
                    }
                )
            )
        )
    (count,) = writer.close()
    part = split_dir / ofrecord.part_name(0)
    shapes = {"input_ids": [seq_length], "input_mask": [seq_length], "segment_ids": [seq_length], "label_ids": [1]}
    meta = {
        "format": "bert",
        "num_examples": count,
        "seq_length": seq_length,
        "parts": [{"name": part.name, "records": count, "bytes": part.stat().st_size, "sha256": file_sha256(part)}],
        "features": {name: {"dtype": "int32", "shape": shape} for name, shape in shapes.items()},
        "lengths": length_summary(collections.Counter(lengths), seq_length),
    }
    (split_dir / ofrecord.META_FILE).write_text(json.dumps(meta))
    return split_dir


def skewed_lengths(count: int, seed: int = 0) -> list[int]:
    """Mostly short sentences and a few long ones, as real text."""
    rng = np.random.default_rng(seed)
    return [int(n) for n in np.minimum(SEQ, rng.geometric(0.12, count) + 2)]


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("lengths") / "train", skewed_lengths(EXAMPLES))


def stream(split_dir: Path, steps_per_epoch: int, regroup: bool, shuffle: bool = True) -> TrainStream:
    data = OFRecordDataset(split_dir, BATCH, shuffle=shuffle, seed=3)
    return TrainStream(
        data, steps_per_epoch, 7, Placement("cpu"), regroup, buckets.boundaries_for(data.meta, SEQ) if regroup else None
    )


def read(source: TrainStream, steps: int) -> list[dict[str, np.ndarray]]:
    return [{name: value.numpy() for name, value in source().items()} for _ in range(steps)]


def ids(batches: list[dict[str, np.ndarray]]) -> list[int]:
    return sorted(int(i) - 1 for batch in batches for i in batch["input_ids"][:, 0])


def test_an_epoch_holds_the_rows_of_the_full_length_run_regrouped_by_length_and_cut(split, monkeypatch):
    monkeypatch.setattr(buckets, "CHUNK_BATCHES", 4)  # 13 steps per epoch: chunks of 4, 4, 4 and 1 batches
    per_epoch = 13
    off, on = read(stream(split, per_epoch, False), 2 * per_epoch), read(stream(split, per_epoch, True), 2 * per_epoch)
    boundaries = buckets.boundaries_for(json.loads((split / ofrecord.META_FILE).read_text()), SEQ)
    assert len(boundaries) > 1 and boundaries[-1] == SEQ
    for epoch in range(2):
        steps = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        assert ids(on[steps]) == ids(off[steps])  # the same rows as at the full length, in each epoch
    # in file order, an epoch is every example once (and the next lap's first rows in its last batch)
    assert ids(read(stream(split, per_epoch, True, shuffle=False), per_epoch)) == sorted([*range(EXAMPLES), 0, 1, 2, 3])
    assert all(batch["input_ids"].shape == (BATCH, SEQ) for batch in off)
    lengths = skewed_lengths(EXAMPLES)
    for batch in on:
        width, rows = batch["input_ids"].shape[1], batch["input_ids"][:, 0] - 1
        real = [lengths[i] for i in rows]
        assert width == boundaries[buckets.bucket_of(boundaries, max(real))]  # cut to the longest member's bucket
        for row, i, n in zip(batch["input_ids"], rows, real):
            assert row.tolist() == [i + 1] * n + [0] * (width - n)
    assert sum(batch["input_ids"].size for batch in on) < 0.6 * sum(batch["input_ids"].size for batch in off)
    chunks = [(epoch * per_epoch + k, min(4, per_epoch - k)) for epoch in range(2) for k in range(0, per_epoch, 4)]
    for start, size in chunks:  # a chunk's batches: sorted groups, served in a shuffled order
        chunk = on[start : start + size]
        groups = sorted([sorted(lengths[i - 1] for i in batch["input_ids"][:, 0]) for batch in chunk])
        assert all(a[-1] <= b[0] for a, b in zip(groups, groups[1:]))
    widths = [batch["input_ids"].shape[1] for batch in on]
    assert widths[:4] != sorted(widths[:4]) or widths[4:8] != sorted(widths[4:8])  # the loss does not follow lengths


@pytest.mark.parametrize("start", [1, 4, 6, 13, 15])
def test_a_resumed_stream_serves_what_the_uninterrupted_one_serves(split, monkeypatch, start):
    monkeypatch.setattr(buckets, "CHUNK_BATCHES", 4)
    whole = read(stream(split, 13, True), 20)
    again = stream(split, 13, True)
    again.skip(start)
    for expected, got in zip(whole[start:], read(again, 20 - start)):
        assert set(got) == set(expected) and all(np.array_equal(got[k], expected[k]) for k in got)


# ---------------------------------------------------------------- the models on cut batches


def bert(hidden: int, layers: int, seed: int) -> flow.nn.Module:
    flow.manual_seed(seed)
    config = BertConfig(
        vocab_size=120,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=SEQ,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return io.build_model({**config.to_dict(), "classifier_dropout": 0.0})


def lstm_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A BiLSTM record: the batch's words as its own view, and the same tokens as the teacher's (full) view."""
    return {**batch, **{f"teacher_{name}": batch[name] for name in ("input_ids", "input_mask", "segment_ids")}}


def step_module(name: str) -> flow.nn.Module:
    teacher = bert(32, 4, 1)
    for parameter in teacher.parameters():
        parameter.requires_grad = False
    if name == "kd":
        return DistillStep(bert(16, 2, 2), [hard_label(0.5), soft_labels(0.5, 2.0)], teacher)
    if name == "bert_pkd":
        return DistillStep(
            bert(32, 2, 2),
            [hard_label(0.5), soft_labels(0.5), hidden_states(1.0, project=False, operator="pkd_patient")],
            teacher,
        )
    if name == "tinybert":
        return DistillStep(
            bert(16, 2, 2), [attention(), hidden_states(1.0), soft_labels(1.0)], teacher, flow.nn.Linear(16, 32)
        )
    if name == "distilled_lstm":
        flow.manual_seed(2)
        student = io.build_model(
            {
                **LstmConfig(
                    vocab_size=120, pad_token_id=0, embedding_size=8, hidden_size=8, fc_size=8, dropout_prob=0.0
                ).__dict__
            }
        )
        return DistillStep(student, [hard_label(0.5), soft_labels(0.5, mode="mse")], teacher, teacher_view="teacher_")
    return TheseusStep(bert(32, 2, 2), teacher)


def loss_and_gradients(module: flow.nn.Module, batch: dict[str, np.ndarray], name: str):
    module.train()
    for parameter in module.parameters():
        parameter.grad = None
    flow.manual_seed(5)  # BERT-of-Theseus samples its modules: the same draw at both lengths
    tensors = {
        key: flow.tensor(value) for key, value in (lstm_batch(batch) if name == "distilled_lstm" else batch).items()
    }
    outputs = module(tensors, 0.5) if name == "theseus" else module(tensors)
    total = sum(outputs.values())
    total.backward()
    return float(total.numpy()), {
        k: p.grad.numpy().copy() for k, p in module.named_parameters() if p.requires_grad and p.grad is not None
    }


def padded_batch(lengths: list[int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.array([[1] * n + [0] * (SEQ - n) for n in lengths], np.int32)
    return {
        "input_ids": (rng.integers(5, 120, (len(lengths), SEQ)) * mask).astype(np.int32),
        "input_mask": mask,
        "segment_ids": np.zeros_like(mask),
        "label_ids": (np.arange(len(lengths)) % 2).astype(np.int32)[:, None],
    }


@pytest.mark.parametrize("name", ["kd", "bert_pkd", "tinybert", "distilled_lstm", "theseus"])
def test_every_algorithm_gives_the_same_loss_and_gradients_at_the_bucket_length(name):
    batch = padded_batch([3, 9, 14, 5, 16, 7], seed=0)
    module = step_module(name)
    full_loss, full = loss_and_gradients(module, batch, name)
    cut_loss, cut = loss_and_gradients(
        module, buckets.cut(batch, np.arange(6), 16, ("input_ids", "input_mask", "segment_ids")), name
    )
    assert cut_loss == pytest.approx(full_loss, abs=1e-5)
    assert set(cut) == set(full) and len(full) > 4
    for key, value in full.items():
        if key.endswith("position_embeddings.weight"):  # the cut batch has no positions 16..31, nor gradients there
            assert not value[16:].any()
            value = value[:16]
            cut[key] = cut[key][:16]
        np.testing.assert_allclose(cut[key], value, atol=1e-5, err_msg=key)


def train_on(batches: list[dict[str, np.ndarray]], settings: TrainSettings):
    step = DistillStep(bert(16, 2, 2), [hard_label()])
    graphs = build_step_runner(step, list(batches[0]), settings, len(batches))
    losses = [
        float(graphs.step({k: flow.tensor(v) for k, v in batch.items()})["loss"].numpy().mean()) for batch in batches
    ]
    return step.student, graphs, losses


def test_the_graphs_of_the_bucket_lengths_share_one_adamw_state_and_lr_schedule():
    settings = TrainSettings(learning_rate=1e-3, warmup_proportion=0.3, batch_size=4, clip_grad=1.0)
    plan = [
        (8, [3, 8, 5, 2]),
        (16, [12, 16, 9, 4]),
        (32, [30, 3, 20, 7]),
        (8, [6, 1, 8, 8]),
        (16, [11, 2, 13, 5]),
        (8, [4, 4, 4, 4]),
        (32, [25, 31, 2, 17]),
    ]
    full = [padded_batch(lengths, seed) for seed, (_, lengths) in enumerate(plan)]
    sequences = ("input_ids", "input_mask", "segment_ids")
    cut = [buckets.cut(batch, np.arange(4), width, sequences) for batch, (width, _) in zip(full, plan)]
    one, single, one_losses = train_on(full, settings)
    many, graphs, many_losses = train_on(cut, settings)
    assert single.lengths == [SEQ] and graphs.lengths == [8, 16, 32]
    np.testing.assert_allclose(many_losses, one_losses, rtol=1e-5)
    a, b = one.state_dict(), many.state_dict()
    for key in a:  # (attention key biases have a zero gradient: float noise there is all AdamW sees)
        if not key.endswith("key.bias"):
            np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-4, atol=1e-6, err_msg=key)
    states = [graph.state_dict() for graph in graphs.graphs.values()]
    moments = [k for k in states[0] if k.endswith(("-m", "-v"))]
    assert moments and "System-Train-TrainStep" in states[0]
    for state in states[1:]:  # one state: what the last step wrote is what every graph holds
        for key in [*moments, "System-Train-TrainStep"]:
            assert np.array_equal(state[key].numpy(), states[0][key].numpy()), key
    assert states[0]["System-Train-TrainStep"].numpy().tolist() == [len(plan)]


# ---------------------------------------------------------------- two processes

TWO_RANKS = """
import json, sys
from distil.runtime import import_oneflow
flow = import_oneflow()
from distil.data import buckets
from distil.data.dataset import OFRecordDataset, TrainStream
from distil.train.placement import Placement
buckets.CHUNK_BATCHES = 4
split, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
placement = Placement("cpu")
data = OFRecordDataset(split, 8, placement=placement)
source = TrainStream(data, steps, 7, placement, True, buckets.boundaries_for(data.meta, 32))
served = []
for _ in range(2 * steps):
    batch = source()
    rows = batch["input_ids"].to_global(sbp=flow.sbp.broadcast).to_local().numpy()
    served.append({"width": rows.shape[1], "ids": (rows[:, 0] - 1).tolist(),
                   "lengths": rows.astype(bool).sum(axis=1).tolist()})
with open(f"{out}.{placement.rank}", "w") as f:
    json.dump(served, f)
"""


@pytest.mark.slow
def test_two_processes_step_through_the_same_bucket_lengths_and_see_every_example_once_per_epoch(tmp_path):
    lengths = skewed_lengths(96, seed=1)  # 6 steps of 2 x 8 rows per epoch
    split_dir = write_split(tmp_path / "train", lengths)
    (tmp_path / "two_ranks.py").write_text(TWO_RANKS)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(PYTHONPATH=f"{conftest.STARTUP}:{conftest.ROOT / 'src'}", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "oneflow.distributed.launch",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            str(tmp_path / "two_ranks.py"),
            str(split_dir),
            "6",
            str(tmp_path / "served"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"served.{r}").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # one global batch per step, seen alike by both ranks
    boundaries = buckets.boundaries_for(json.loads((split_dir / ofrecord.META_FILE).read_text()), SEQ)
    for epoch in range(2):
        served = ranks[0][epoch * 6 : (epoch + 1) * 6]
        assert sorted(i for batch in served for i in batch["ids"]) == list(range(96))  # every example once
    for batch in ranks[0]:
        assert batch["width"] in boundaries and max(batch["lengths"]) <= batch["width"]
        assert batch["lengths"] == [lengths[i] for i in batch["ids"]]
    assert len({batch["width"] for batch in ranks[0]}) > 1


def test_the_bucket_graphs_together_hold_the_micro_batch_tokens_of_one_full_length_graph(caplog):
    """Every graph keeps the buffers of one micro-batch: with buckets 24/40/56/128 (248 positions) a
    micro-batch holds 1024 // 248 -> 4 rows at every length, where one graph at 128 takes 8."""
    settings = TrainSettings(batch_size=32)
    batch = buckets.cut(padded_batch([5] * 32, seed=0), np.arange(32), 24, ("input_ids", "input_mask", "segment_ids"))
    for lengths, rows in (([24, 40, 56, 128], 4), ([128], 8), ((), 32)):  # (): the graph's own length
        graphs = build_step_runner(
            DistillStep(bert(16, 2, 2), [hard_label()]), list(batch), settings, 4, lengths=lengths
        )
        with caplog.at_level("INFO", logger="distil.train.trainer"):
            graphs.step({k: flow.tensor(v) for k, v in batch.items()})
        assert f"batches of 24 positions: {32 // rows} micro-batch(es) of {rows} rows per process" in caplog.text
        caplog.clear()
