"""OneFlow's OFRecordReader reads converted splits byte-exactly, eagerly and in nn.Graph; bad files fail early."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distil.data.convert import ConvertConfig, convert_task
from distil.data.dataset import EvalStream, OFRecordDataset, flow
from distil.errors import UsageError
from glue_fixtures import decode_split, expected_bert, write_task


class ReaderGraph(flow.nn.Graph):
    """The reader alone inside an nn.Graph: one call, one batch."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def build(self):
        return self.dataset()


def to_numpy(batch):
    return {k: v.numpy() for k, v in batch.items()}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, vocab_file):
    """MRPC (pairs, 23 train / 11 dev) and STS-B (float labels) converted with small part files."""
    root = tmp_path_factory.mktemp("data")
    rows = {
        "MRPC": write_task(root / "glue", "MRPC", {"train.tsv": 23, "dev.tsv": 11, "test.tsv": 4}),
        "STS-B": write_task(root / "glue", "STS-B", {"train.tsv": 9, "dev.tsv": 5, "test.tsv": 3}),
    }
    for task in rows:
        convert_task(task, ConvertConfig(root / "glue", root / "out", vocab_file, workers=1, records_per_part=10))
    return root / "out", rows


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_round_trip_is_byte_exact(converted, hf_tokenizer, mode):
    out, rows = converted
    for task, split, file, batch in (("MRPC", "train", "train.tsv", 23), ("STS-B", "eval", "dev.tsv", 5)):
        dataset = OFRecordDataset(out / task / split, batch_size=batch)
        assert dataset.num_examples == batch and len(dataset.meta["parts"]) == (3 if batch == 23 else 1)
        got = to_numpy(ReaderGraph(dataset)() if mode == "graph" else dataset())
        expected = [expected_bert(hf_tokenizer, r["a"], r["b"], 128) for r in rows[task][file]]
        for i, name in enumerate(("input_ids", "input_mask", "segment_ids")):
            assert got[name].dtype == np.int32 and got[name].shape == (batch, 128)
            np.testing.assert_array_equal(got[name], np.array([e[i] for e in expected], dtype=np.int32))
        if task == "STS-B":
            assert got["label_ids"].dtype == np.float32
            np.testing.assert_array_equal(
                got["label_ids"][:, 0], np.float32([float(r["label"]) for r in rows[task][file]])
            )
        else:
            np.testing.assert_array_equal(got["label_ids"][:, 0], [int(r["label"]) for r in rows[task][file]])
        np.testing.assert_array_equal(got["is_real_example"], np.ones((batch, 1), np.int32))


def test_lstm_split_decodes_student_and_teacher_views(converted, record_pb2):
    out, _ = converted
    dataset = OFRecordDataset(out / "MRPC_lstm_32" / "eval", batch_size=11)
    got = to_numpy(dataset())
    assert got["input_ids"].shape == (11, 32) and got["teacher_input_ids"].shape == (11, 128)
    records = decode_split(out / "MRPC_lstm_32" / "eval", record_pb2)
    for name in dataset.names:
        np.testing.assert_array_equal(got[name], np.array([r[name] for r in records]).reshape(got[name].shape))


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_eval_passes_see_every_example_exactly_once_in_order(converted, mode):
    out, _ = converted
    full = to_numpy(OFRecordDataset(out / "MRPC" / "train", batch_size=23)())
    dataset = OFRecordDataset(out / "MRPC" / "train", batch_size=5, features=["input_ids", "label_ids"])
    step = ReaderGraph(dataset) if mode == "graph" else dataset
    stream = EvalStream(dataset.num_examples, dataset.batch_size)
    for _ in range(3):  # 5 batches of 5 per pass: the reader drifts by 2 records each pass
        result = stream.run(lambda: to_numpy(step()))
        assert set(result) == {"input_ids", "label_ids"}
        np.testing.assert_array_equal(result["input_ids"], full["input_ids"])
        np.testing.assert_array_equal(result["label_ids"], full["label_ids"])
    assert stream.positions == [(3 * 25) % 23]


@pytest.mark.parametrize("examples, shards, batch", [(23, 2, 5), (10, 3, 4), (7, 7, 1), (9, 2, 16)])
def test_sharded_eval_passes_see_every_example_once_in_file_order(examples, shards, batch):
    """N ranks, rank r reading examples r, r+N, ... and wrapping: each pass gives every example once, in order."""
    streams = [list(range(r, examples, shards)) for r in range(shards)]
    offsets = [0] * shards

    def next_batch():
        rows = []
        for r, stream in enumerate(streams):
            rows += [stream[(offsets[r] + k) % len(stream)] for k in range(batch)]
            offsets[r] += batch
        return {"ids": np.array(rows)}

    eval_stream = EvalStream(examples, batch, shards)
    for _ in range(4):
        assert eval_stream.run(next_batch)["ids"].tolist() == list(range(examples))


def test_shards_deal_records_round_robin_and_are_reused(converted, tmp_path):
    import shutil

    from distil.data.dataset import open_split, write_shards

    out, _ = converted
    split = tmp_path / "train"
    shutil.copytree(out / "MRPC" / "train", split)
    full = to_numpy(OFRecordDataset(split, batch_size=23)())["input_ids"]
    target = write_shards(split, 3)
    meta = open_split(target).meta  # sizes, byte counts and checksums all consistent
    assert [p["records"] for p in meta["parts"]] == [8, 8, 7] and meta["num_examples"] == 23
    from oneflow.core.record import record_pb2

    from distil.data import ofrecord

    for r in range(3):
        ids = []
        for body in ofrecord.iter_frames(target / ofrecord.part_name(r)):
            record = record_pb2.OFRecord()
            record.ParseFromString(body)
            ids.append(list(record.feature["input_ids"].int32_list.value))
        assert np.array_equal(np.array(ids), full[r::3])
    stamp = (target / "meta.json").stat().st_mtime_ns
    assert write_shards(split, 3) == target and (target / "meta.json").stat().st_mtime_ns == stamp


def test_training_reader_reshuffles_reproducibly(converted):
    out, _ = converted
    split = out / "MRPC" / "train"
    file_order = to_numpy(OFRecordDataset(split, batch_size=23)())["input_ids"]
    index = {row.tobytes(): i for i, row in enumerate(file_order)}

    def order(seed, batches):
        dataset = OFRecordDataset(split, batch_size=23, shuffle=True, seed=seed)
        return [[index[row.tobytes()] for row in dataset()["input_ids"].numpy()] for _ in range(batches)]

    first, again, other = order(7, 3), order(7, 3), order(8, 3)
    assert first == again and first != other
    assert first[0] != list(range(23)) and first[0] != first[1]
    assert set(first[0] + first[1] + first[2]) == set(range(23))


def _copy_split(converted, tmp_path) -> Path:
    split = tmp_path / "split"
    shutil.copytree(converted[0] / "MRPC" / "train", split)
    return split


def test_truncated_part_file_is_a_clear_error(converted, tmp_path):
    split = _copy_split(converted, tmp_path)
    part = split / "part-00001"
    part.write_bytes(part.read_bytes()[:-100])
    with pytest.raises(UsageError, match=r"part-00001: \d+ bytes but meta.json says \d+ \(truncated"):
        OFRecordDataset(split, batch_size=4)


def test_corrupt_bytes_of_the_right_size_fail_the_checksum(converted, tmp_path):
    split = _copy_split(converted, tmp_path)
    part = split / "part-00000"
    data = bytearray(part.read_bytes())
    data[500] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(UsageError, match=r"part-00000: checksum differs from meta.json"):
        OFRecordDataset(split, batch_size=4)


def test_records_cut_mid_frame_are_found_even_without_sizes(converted, tmp_path):
    split = _copy_split(converted, tmp_path)
    meta = json.loads((split / "meta.json").read_text())
    for part in meta["parts"]:
        del part["bytes"], part["sha256"]
    (split / "meta.json").write_text(json.dumps(meta))
    part = split / "part-00002"
    part.write_bytes(part.read_bytes()[:-7])
    with pytest.raises(UsageError, match=r"part-00002: truncated or corrupt record at byte \d+"):
        OFRecordDataset(split, batch_size=4)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(num_examples=24), r"num_examples 24 does not match its parts \(23 records\)"),
        (
            lambda m: m["parts"][0].update(records=9) or m.update(num_examples=22),
            r"holds 10 records but meta.json says 9",
        ),
        (
            lambda m: m["features"]["input_ids"].update(shape=[64]),
            r"'input_ids' has 128 values but meta.json says shape",
        ),
        (lambda m: m["features"].update(extra={"dtype": "int32", "shape": [1]}), r"no feature 'extra' that meta.json"),
    ],
)
def test_meta_disagreeing_with_records_is_a_clear_error(converted, tmp_path, edit, message):
    split = _copy_split(converted, tmp_path)
    meta = json.loads((split / "meta.json").read_text())
    edit(meta)
    (split / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match=message):
        OFRecordDataset(split, batch_size=4)


def test_missing_part_and_unknown_feature(converted, tmp_path):
    split = _copy_split(converted, tmp_path)
    with pytest.raises(UsageError, match=r"no feature\(s\) \['token_ids'\]"):
        OFRecordDataset(split, batch_size=4, features=["token_ids"])
    (split / "part-00002").unlink()
    with pytest.raises(UsageError, match=r"part-00002: part file listed in meta.json is missing"):
        OFRecordDataset(split, batch_size=4)
