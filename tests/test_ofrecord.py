"""Our hand-written OFRecord encoder produces what OneFlow's own protobuf parses, framed as its reader expects."""

import struct

import numpy as np
import pytest

from distil.data import ofrecord
from distil.errors import UsageError


def test_encoded_record_parses_with_oneflow_protobuf(record_pb2):
    rng = np.random.default_rng(0)
    features = {
        "input_ids": ("int32", rng.integers(0, 30522, 128).tolist()),
        "big": ("int32", [0, 127, 128, 16383, 16384, 65535, 65536, 2**31 - 1]),
        "negative": ("int32", [-1, -(2**31), 5]),
        "wide": ("int64", [2**40, -(2**62), 0]),
        "label_ids": ("float32", [3.8]),
        "empty": ("int32", []),
        "numpy_ints": ("int32", list(np.arange(3, dtype=np.int64))),
    }
    parsed = record_pb2.OFRecord()
    parsed.ParseFromString(ofrecord.encode_record(features))
    assert set(parsed.feature) == set(features)
    for name, (dtype, values) in features.items():
        kind = {"int32": "int32_list", "int64": "int64_list", "float32": "float_list"}[dtype]
        got = list(getattr(parsed.feature[name], kind).value)
        expected = np.float32(values).tolist() if dtype == "float32" else [int(v) for v in values]
        assert got == expected, name


def test_frame_is_little_endian_int64_length():
    body = ofrecord.encode_record({"x": ("int32", [1, 2, 3])})
    framed = ofrecord.frame(body)
    assert framed[:8] == struct.pack("<q", len(body)) and framed[8:] == body


def test_unsupported_dtype_is_rejected():
    with pytest.raises(ValueError, match="unsupported feature dtype 'float16'"):
        ofrecord.encode_feature("float16", [1.0])


def test_part_writer_splits_records_in_order(tmp_path):
    records = [ofrecord.frame(ofrecord.encode_record({"i": ("int32", [i])})) for i in range(7)]
    writer = ofrecord.PartWriter(tmp_path, records_per_part=3)
    for r in records:
        writer.add(r)
    assert writer.close() == [3, 3, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000", "part-00001", "part-00002"]
    read_back = [body for i in range(3) for body in ofrecord.iter_frames(tmp_path / ofrecord.part_name(i))]
    assert [ofrecord.frame(b) for b in read_back] == records


def test_empty_split_still_gets_one_part(tmp_path):
    assert ofrecord.PartWriter(tmp_path, 5).close() == [0]
    assert (tmp_path / "part-00000").stat().st_size == 0


def test_iter_frames_reports_truncation(tmp_path):
    path = tmp_path / "part-00000"
    path.write_bytes(ofrecord.frame(b"abc") + ofrecord.frame(b"defgh")[:-2])
    frames = ofrecord.iter_frames(path)
    assert next(frames) == b"abc"
    with pytest.raises(UsageError, match=r"part-00000: truncated or corrupt record at byte 11"):
        next(frames)


def test_read_meta_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match=r"meta.json not found.*glue_process.sh"):
        ofrecord.read_meta(tmp_path)
    (tmp_path / "meta.json").write_text('{"num_examples": 3}')
    with pytest.raises(UsageError, match=r"meta.json: not a valid meta.json"):
        ofrecord.read_meta(tmp_path)
