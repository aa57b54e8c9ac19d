"""Reading converted splits the OneFlow way: `OFRecordReader` + `OFRecordRawDecoder`, eager or in nn.Graph.

A split is opened once (`open_split`: meta.json checked against its part files) and the `Split` is passed
down to every reader of the run, with its N-rank shards made once too. The reader loops over its files
forever; `EvalStream` turns that stream into evaluation passes that see every example exactly once
(original: the last batch wrapped around, duplicating dev examples). Files are checked in Python first,
because OneFlow aborts the whole process on a missing part file or a length mismatch instead of raising.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import struct
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from distil.data import buckets, ofrecord
from distil.errors import UsageError
from distil.fileio import file_sha256, replace_dir
from distil.runtime import import_oneflow

flow = import_oneflow()

_DTYPES = {"int32": flow.int32, "int64": flow.int64, "float32": flow.float32}
MAX_SHUFFLE_BUFFER = 20000


def _count_frames(path: Path) -> int:
    """Walk the length prefixes of a part file; raise if a record is cut short."""
    size, count, offset = path.stat().st_size, 0, 0
    with open(path, "rb") as f:
        while offset < size:
            head = f.read(8)
            (length,) = struct.unpack("<q", head) if len(head) == 8 else (-1,)
            if length < 0 or offset + 8 + length > size:
                raise UsageError(f"{path}: truncated or corrupt record at byte {offset} "
                                 f"(file has {size} bytes); re-run scripts/glue_process.sh")
            offset += 8 + length
            f.seek(offset)
            count += 1
    return count


def _check_first_record(path: Path, features: Dict[str, Dict]) -> None:
    """The decoder shapes come from meta.json: make sure the records really have them."""
    from oneflow.core.record import record_pb2

    body = next(ofrecord.iter_frames(path), None)
    if body is None:
        return
    record = record_pb2.OFRecord()
    try:
        record.ParseFromString(body)
    except Exception as e:  # protobuf raises its own DecodeError type
        raise UsageError(f"{path}: first record is not a valid OFRecord ({e})") from None
    for name, spec in features.items():
        if name not in record.feature:
            raise UsageError(f"{path}: records have no feature '{name}' that meta.json lists "
                             f"(they have: {', '.join(sorted(record.feature))})")
        feature = record.feature[name]
        kind = feature.WhichOneof("kind")
        length = len(getattr(feature, kind).value) if kind else 0
        if length != int(np.prod(spec["shape"])):
            raise UsageError(f"{path}: feature '{name}' has {length} values but meta.json says shape "
                             f"{spec['shape']}")


@dataclasses.dataclass(frozen=True)
class Split:
    """A converted split whose meta.json has been checked against its part files: what every reader of it
    needs (counts, features, parts, lengths), read once."""

    dir: Path
    meta: Dict
    _shards: Dict[int, "Split"] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def num_examples(self) -> int:
        return int(self.meta["num_examples"])

    @property
    def features(self) -> Dict[str, Dict]:
        return self.meta["features"]

    def seq_length(self, view: str = "") -> int:
        """Positions per example of the `view` ("" or "teacher_") model inputs."""
        return int(self.features[f"{view}input_ids"]["shape"][-1])

    def sharded(self, placement) -> "Split":
        """The split a rank reads: itself, or with N ranks its N shards (written by rank 0 once, then opened
        once per process)."""
        if placement is None or not placement.distributed:
            return self
        n = placement.world_size
        if n not in self._shards:
            if self.num_examples < n:
                raise UsageError(f"{self.dir}: {self.num_examples} examples cannot be shared by {n} processes")
            if placement.writer:
                write_shards(self.dir, n)
            placement.barrier()
            self._shards[n] = open_split(self.dir / f"{SHARDS_PREFIX}{n}")
        return self._shards[n]


SplitLike = Union[Split, str, Path]


def open_split(split_dir: Union[str, Path], verify_checksums: bool = True) -> Split:
    """Read a split's meta.json and check its part files against it before OneFlow touches them."""
    split_dir = Path(split_dir)
    meta = ofrecord.read_meta(split_dir)
    parts = meta["parts"]
    if not parts or meta["num_examples"] != sum(p["records"] for p in parts):
        raise UsageError(f"{split_dir / ofrecord.META_FILE}: num_examples {meta['num_examples']} does not "
                         f"match its parts ({sum(p['records'] for p in parts)} records)")
    for part in parts:
        path = split_dir / part["name"]
        if not path.is_file():
            raise UsageError(f"{path}: part file listed in meta.json is missing")
        if "bytes" in part and path.stat().st_size != part["bytes"]:
            raise UsageError(f"{path}: {path.stat().st_size} bytes but meta.json says {part['bytes']} "
                             "(truncated or replaced); re-run scripts/glue_process.sh")
        found = _count_frames(path)
        if found != part["records"]:
            raise UsageError(f"{path}: holds {found} records but meta.json says {part['records']}")
        if verify_checksums and "sha256" in part and file_sha256(path) != part["sha256"]:
            raise UsageError(f"{path}: checksum differs from meta.json (corrupt file); "
                             "re-run scripts/glue_process.sh")
    if meta["num_examples"] > 0:
        _check_first_record(split_dir / parts[0]["name"], meta["features"])
    return Split(split_dir, meta)


def as_split(split: SplitLike, verify_checksums: bool = True) -> Split:
    """`split` itself, or the folder opened."""
    return split if isinstance(split, Split) else open_split(split, verify_checksums)


SHARDS_PREFIX = ".shards-"


def shard_sizes(num_examples: int, shards: int) -> List[int]:
    """Records per shard when example i goes to shard i mod `shards`."""
    return [len(range(r, num_examples, shards)) for r in range(shards)]


def write_shards(split_dir: Path, shards: int) -> Path:
    """<split>/.shards-N/: the split's records dealt round-robin into N part files (example i in part
    i mod N), so that N ranks each read one part and together see every example once per epoch.
    Written once, to a temporary name, then renamed; reused while the split's meta.json is unchanged."""
    target = split_dir / f"{SHARDS_PREFIX}{shards}"
    source_meta = (split_dir / ofrecord.META_FILE).read_text(encoding="utf-8")
    if (target / "source_meta.json").is_file() and (target / "source_meta.json").read_text(encoding="utf-8") == source_meta:
        return target
    meta = json.loads(source_meta)
    staged = split_dir / f".{SHARDS_PREFIX[1:]}{shards}.tmp-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        handles = [open(staged / ofrecord.part_name(r), "wb") for r in range(shards)]
        index = 0
        for part in meta["parts"]:
            for body in ofrecord.iter_frames(split_dir / part["name"]):
                handles[index % shards].write(ofrecord.frame(body))
                index += 1
        for handle in handles:
            handle.close()
        meta["parts"] = [{"name": ofrecord.part_name(r), "records": n,
                          "bytes": (staged / ofrecord.part_name(r)).stat().st_size,
                          "sha256": file_sha256(staged / ofrecord.part_name(r))}
                         for r, n in enumerate(shard_sizes(index, shards))]
        (staged / ofrecord.META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        (staged / "source_meta.json").write_text(source_meta, encoding="utf-8")
        replace_dir(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return target


class OFRecordDataset(flow.nn.Module):
    """One converted split as a module: each call returns the next batch as {feature: tensor}.

    Shapes, counts and part files come from meta.json. With `shuffle`, the reader shuffles in
    a buffer and reshuffles each epoch, seeded by `seed`; without it, records come in file
    order and wrap around at the end. Works eagerly and inside an `nn.Graph`. With a distributed
    `placement` (N ranks), `batch_size` is per rank, each rank reads its shard (examples r, r+N, ...)
    and a call returns the global batch of N·batch_size rows, split on dim 0.
    """

    def __init__(self, split: SplitLike, batch_size: int, shuffle: bool = False,
                 seed: Optional[int] = None, features: Optional[Sequence[str]] = None,
                 verify_checksums: bool = True, placement=None):
        super().__init__()
        self.split = as_split(split, verify_checksums).sharded(placement)
        self.split_dir, self.meta = self.split.dir, self.split.meta
        self.shards = placement.world_size if placement is not None and placement.distributed else 1
        self.batch_size = batch_size * self.shards
        if self.num_examples == 0:
            raise UsageError(f"{self.split_dir}: the split has no examples")
        names = list(features) if features is not None else list(self.meta["features"])
        unknown = [n for n in names if n not in self.meta["features"]]
        if unknown:
            raise UsageError(f"{self.split_dir}: no feature(s) {unknown}; it has {list(self.meta['features'])}")
        self.reader = flow.nn.OFRecordReader(
            str(self.split_dir), batch_size=self.batch_size, data_part_num=len(self.meta["parts"]),
            part_name_prefix=ofrecord.PART_PREFIX, part_name_suffix_length=ofrecord.PART_SUFFIX_LENGTH,
            random_shuffle=shuffle, shuffle_after_epoch=shuffle,
            shuffle_buffer_size=min(self.num_examples, MAX_SHUFFLE_BUFFER),
            random_seed=-1 if seed is None else seed, **(placement.reader() if placement is not None else {}))
        self.names = names
        self.decoders = flow.nn.ModuleList([
            flow.nn.OFRecordRawDecoder(n, shape=tuple(self.meta["features"][n]["shape"]),
                                       dtype=_DTYPES[self.meta["features"][n]["dtype"]]) for n in names])

    @property
    def num_examples(self) -> int:
        return self.split.num_examples

    def forward(self) -> Dict[str, "flow.Tensor"]:
        record = self.reader()
        return {name: decoder(record) for name, decoder in zip(self.names, self.decoders)}

    def skip(self, batches: int) -> None:
        """Read past `batches` batches (eagerly, without decoding them): with the same seed, the stream then goes
        on exactly where an earlier reader stopped after as many calls."""
        for _ in tqdm(range(batches), desc="skipping batches already trained on", unit="batch", leave=False,
                      disable=None if batches > 1000 else True):
            self.reader()


class EvalStream:
    """Evaluation passes over unshuffled, wrapping readers that see every example exactly once.

    One reader per shard (N ranks: shard r holds examples r, r+N, ...; one process: the whole
    split); a batch holds `batch_size` rows of each shard in turn. Any n_r consecutive records of
    shard r's stream hold each of its examples once, so a pass takes ceil(max n_r / B) batches,
    keeps the first n_r rows of each shard, and remembers where each shard's next pass starts (the
    rows after n_r are the start of its next lap). Results come back in file order.
    """

    def __init__(self, num_examples: int, batch_size: int, shards: int = 1):
        self.num_examples, self.batch_size, self.shards = num_examples, batch_size, shards
        self.sizes = shard_sizes(num_examples, shards)
        self.positions = [0] * shards  # stream offset of each shard's next pass, modulo its size

    def run(self, next_batch: Callable[[], Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        """Call `next_batch` ceil(max n_r / B) times; return each output's rows for all examples, in order."""
        b = self.batch_size
        steps = math.ceil(max(self.sizes) / b)
        collected: Dict[str, List[np.ndarray]] = {}
        for _ in range(steps):
            for name, value in next_batch().items():
                collected.setdefault(name, []).append(np.asarray(value))
        results = {}
        for name, batches in collected.items():
            out = np.empty((self.num_examples, *batches[0].shape[1:]), dtype=batches[0].dtype)
            for r, size in enumerate(self.sizes):
                rows = np.concatenate([batch[r * b:(r + 1) * b] for batch in batches])[:size]
                # row k of shard r's pass is its example (start + k) mod n_r: rotate back to shard order
                out[r::self.shards] = np.roll(rows, self.positions[r], axis=0)
            results[name] = out
        self.positions = [(p + steps * b) % size for p, size in zip(self.positions, self.sizes)]
        return results


class TrainStream:
    """The training batches of a run, placed: as the reader gives them (--length_buckets off) or regrouped
    by length (`regroup`).

    Regrouped, it reads CHUNK_BATCHES batches at a time (never across the end of an epoch), sorts their rows
    by real length, cuts them into as many batches of the same size, each cut to its bucket's length among
    `boundaries` (None, for eager steps: to its longest member), and serves them in an order shuffled by the run's seed
    and the chunk's first step, so the loss does not follow the lengths. An epoch holds exactly the rows the
    reader gives, only regrouped; with N ranks each rank regroups its own rows and a batch is cut to the
    longest length any rank needs. A chunk depends only on where the reader stands, so resuming at step s
    reads past the chunk's start and regroups that chunk again.
    """

    def __init__(self, data: OFRecordDataset, steps_per_epoch: int, seed: int, placement, regroup: bool = False,
                 boundaries: Optional[List[int]] = None):
        self.data, self.steps_per_epoch, self.seed, self.placement = data, steps_per_epoch, seed, placement
        self.regroups, self.boundaries = regroup, boundaries
        self.mask = next(name for name in data.names if name.endswith("input_mask"))
        shape = data.meta["features"][self.mask]["shape"]
        self.sequences = [name for name in data.names if data.meta["features"][name]["shape"] == shape]
        self.position = 0  # the step of the next chunk's first batch
        self.ready: List[Dict[str, np.ndarray]] = []

    def __call__(self) -> Dict[str, "flow.Tensor"]:
        if not self.regroups:
            return self.placement.batch(self.data())
        if not self.ready:
            self._read_chunk()
        return self.placement.batch({name: flow.tensor(value) for name, value in self.ready.pop(0).items()})

    def skip(self, steps: int) -> None:
        """Go on as a stream that has served `steps` batches."""
        if not self.regroups:
            self.data.skip(steps)
            return
        epoch, within = divmod(steps, self.steps_per_epoch)
        start = epoch * self.steps_per_epoch + within // buckets.CHUNK_BATCHES * buckets.CHUNK_BATCHES
        self.data.skip(start)
        self.position = start
        if steps > start:
            self._read_chunk()
            del self.ready[:steps - start]

    def _read_chunk(self) -> None:
        within = self.position % self.steps_per_epoch
        count = min(buckets.CHUNK_BATCHES, self.steps_per_epoch - within)
        reads = [self.data() for _ in range(count)]
        rows = {name: np.concatenate([_local(batch[name]) for batch in reads]) for name in self.data.names}
        lengths = rows[self.mask].sum(axis=1)
        groups = buckets.groups_by_length(lengths, len(lengths) // count)
        widths = self.placement.largest([buckets.width_of(lengths[group], self.boundaries)
                                         for group in groups])
        order = np.random.default_rng([self.seed, self.position]).permutation(count)
        self.ready = [buckets.cut(rows, groups[i], widths[i], self.sequences) for i in order]
        self.position += count


def _local(tensor: "flow.Tensor") -> np.ndarray:
    """This rank's rows of a batch the reader gave."""
    return (tensor.to_local() if tensor.is_global else tensor).numpy()
