"""OFRecord files without OneFlow: encode records, write part files, walk their framing, meta.json.

A part file is a concatenation of `<int64 little-endian length><serialized oneflow.OFRecord>`
(oneflow/core/record/record.proto). Encoding by hand keeps conversion workers free of the
1-2 s / 400 MB OneFlow import and runs faster than the Python protobuf runtime; tests check
the bytes against OneFlow's own `record_pb2` and reader.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple, Union

from distil.errors import UsageError
from distil.fileio import file_sha256

PART_PREFIX = "part-"
PART_SUFFIX_LENGTH = 5
META_FILE = "meta.json"
DTYPES = ("int32", "int64", "float32")

# Feature message field tags (wire type 2): float_list = 2, int32_list = 4, int64_list = 5.
_FEATURE_TAG = {"float32": b"\x12", "int32": b"\x22", "int64": b"\x2a"}
_VARINT_TABLE_SIZE = 1 << 16


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int32/int64 are encoded as 64-bit two's complement."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Token ids, masks and labels are small non-negative numbers: look their encodings up.
_VARINTS = [_varint(v) for v in range(_VARINT_TABLE_SIZE)]


def _packed_ints(values: Sequence[int]) -> bytes:
    table = _VARINTS
    try:
        return b"".join([table[v] for v in values])
    except (IndexError, TypeError):  # negative, large or numpy integers: the general path
        return b"".join([_varint(int(v)) for v in values])


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def encode_feature(dtype: str, values: Sequence[Union[int, float]]) -> bytes:
    """Serialize one `oneflow.Feature` holding a packed int32/int64/float list."""
    if dtype == "float32":
        payload = struct.pack(f"<{len(values)}f", *values)
    elif dtype in ("int32", "int64"):
        payload = _packed_ints(values)
    else:
        raise ValueError(f"unsupported feature dtype {dtype!r}; expected one of {DTYPES}")
    return _length_delimited(_FEATURE_TAG[dtype], _length_delimited(b"\x0a", payload))


def encode_record(features: Mapping[str, Tuple[str, Sequence[Union[int, float]]]]) -> bytes:
    """Serialize an `oneflow.OFRecord` from {name: (dtype, values)}."""
    return encode_record_from_features((name, encode_feature(dtype, values))
                                       for name, (dtype, values) in features.items())


def encode_record_from_features(features: Iterable[Tuple[str, bytes]]) -> bytes:
    """Serialize an `oneflow.OFRecord` from (name, already-encoded Feature) pairs."""
    entries = []
    for name, feature in features:
        entry = _length_delimited(b"\x0a", name.encode("utf-8")) + _length_delimited(b"\x12", feature)
        entries.append(_length_delimited(b"\x0a", entry))
    return b"".join(entries)


def frame(record: bytes) -> bytes:
    """Prefix a serialized record with its int64 little-endian length, as OneFlow's reader expects."""
    return struct.pack("<q", len(record)) + record


def part_name(index: int) -> str:
    return f"{PART_PREFIX}{index:0{PART_SUFFIX_LENGTH}d}"


class PartWriter:
    """Writes framed records into part-00000, part-00001, ... in order, `records_per_part` each."""

    def __init__(self, split_dir: Path, records_per_part: int):
        self.dir, self.records_per_part = split_dir, records_per_part
        self.counts: List[int] = []
        self._handle = None

    def add(self, framed_record: bytes) -> None:
        if self._handle is None or self.counts[-1] == self.records_per_part:
            self._open_next()
        self._handle.write(framed_record)
        self.counts[-1] += 1

    def _open_next(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = open(self.dir / part_name(len(self.counts)), "wb")
        self.counts.append(0)

    def close(self) -> List[int]:
        """Finish the last part (an empty split still gets one empty part) and return the counts."""
        if self._handle is None:
            self._open_next()
        self._handle.close()
        return self.counts


def iter_frames(path: Path) -> Iterator[bytes]:
    """Yield the serialized records of one part file; a truncated file raises UsageError."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            head = f.read(8)
            if not head:
                return
            if len(head) < 8:
                raise UsageError(f"{path}: truncated record header at byte {offset}")
            (length,) = struct.unpack("<q", head)
            body = f.read(length) if length >= 0 else b""
            if length < 0 or len(body) != length:
                raise UsageError(f"{path}: truncated or corrupt record at byte {offset} "
                                 f"(length field says {length}, {len(body)} bytes follow)")
            offset += 8 + length
            yield body


def read_meta(split_dir: Union[str, Path]) -> Dict:
    """Read and sanity-check a split's meta.json (counts, shapes and part files come from here)."""
    path = Path(split_dir) / META_FILE
    if not path.is_file():
        raise UsageError(f"{path} not found: {split_dir} is not a converted split "
                         "(run scripts/glue_process.sh to create it)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        for key in ("num_examples", "parts", "features"):
            meta[key]
    except (ValueError, KeyError) as e:
        raise UsageError(f"{path}: not a valid meta.json ({e})") from None
    return meta


def check_vocab(vocab_file: Path, meta: Mapping, what: str) -> None:
    """The data (described by its meta.json) must have been tokenized with the model's vocabulary."""
    want = meta.get("vocab", {}).get("sha256")
    if want and file_sha256(vocab_file) != want:
        raise UsageError(f"the data in {meta.get('source')} was converted with {meta['vocab'].get('file')}, "
                         f"but {what} uses {vocab_file}; re-run glue_process.sh with VOCAB_FILE={vocab_file}")
