"""The frozen teacher's outputs, computed once per training example and read back by every later epoch and
every resumed run.

A frozen teacher in eval mode returns the same outputs for the same example, yet a distillation step
spends most of its time in the teacher's forward pass. Where a recipe reads only per-example teacher
outputs (the logits of the soft-label operator), they are computed in one pass over the training split
and stored as a copy of that split whose records carry them as extra float features (`cached_logits`).
The same OFRecordReader then reads the cache instead of the split: every target stays aligned with its
example through shuffling and sharding, and the training graph never runs the teacher. With
`--teacher_cache onnxruntime`, a one-process CPU run makes that pass on onnxruntime (the teacher exported
for it), which uses every core. Both engines compute batches of examples of similar length cut to their
longest member (SplitPass) and give the outputs back in file order.

The cache lives in `<model dir>/teacher_cache/`, is written to a temporary folder and renamed, and holds
fingerprint.json: the SHA-256 of the teacher's weights, of the training split's meta.json (which lists its
part checksums and feature shapes, so the data and the sequence length) and the cached outputs. A cache
whose fingerprint differs, or whose files no longer match their meta.json, is rebuilt, never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from distil.data import ofrecord
from distil.data.dataset import OFRecordDataset, Split, SplitLike, as_split, open_split
from distil.errors import UsageError
from distil.fileio import file_sha256, replace_dir, write_json_atomic
from distil.models import io
from distil.runtime import import_oneflow
from distil.train.graph import MODEL_INPUTS, SplitPass
from distil.train.placement import Placement
from distil.train.step import CACHED_PREFIX, DistillStep, model_inputs

flow = import_oneflow()
log = logging.getLogger(__name__)

CACHE_DIR = "teacher_cache"
FINGERPRINT_FILE = "fingerprint.json"
FORMAT = "distil-teacher-cache/1"


def weights_digest(module: flow.nn.Module) -> str:
    """SHA-256 over every parameter and buffer of `module`: names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        array = np.ascontiguousarray(io.as_numpy(value))
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def fingerprint(step: DistillStep, train: Split, outputs: Sequence[str]) -> dict[str, str]:
    """What a cache's values depend on; any difference means the cache is stale."""
    meta = (train.dir / ofrecord.META_FILE).read_bytes()
    return {
        "format": FORMAT,
        "teacher_weights_sha256": weights_digest(step.teacher),
        "train_meta_sha256": hashlib.sha256(meta).hexdigest(),
        "teacher_inputs": step.teacher_view or "student's",
        "outputs": ",".join(outputs),
    }


def open_fresh(cache: Path, expected: dict[str, str]) -> Split | None:
    """The cache opened, if it exists, was made from these inputs, and its part files still match its meta.json."""
    path = cache / FINGERPRINT_FILE
    if not path.is_file() or json.loads(path.read_text(encoding="utf-8")) != expected:
        return None
    try:
        return open_split(cache)
    except UsageError as e:
        log.warning("teacher cache %s is damaged (%s); rebuilding it", cache, e)
        return None


def teacher_pass(
    step: DistillStep,
    train: Split,
    outputs: Sequence[str],
    placement: Placement,
    batch_size: int,
    work_dir: Path,
    on_onnxruntime: bool = False,
    cut: bool = True,
) -> dict[str, np.ndarray]:
    """{output: float32 array with one row per training example, in file order}: the teacher run once over
    the split, in OneFlow eagerly without autograd (lean whatever the teacher's size), each rank on its
    shard; or `on_onnxruntime`, exported and run by onnxruntime in this one CPU process. `cut`: batches of
    examples of similar length cut to their length (--length_buckets auto)."""
    names = tuple(f"{step.teacher_view}{name}" for name in MODEL_INPUTS)
    if on_onnxruntime:
        if not getattr(step.teacher, "exportable", True):  # e.g. a TeacherEnsemble: one ONNX file is one teacher
            raise UsageError(
                "--teacher_cache onnxruntime exports one teacher; with several teachers use --teacher_cache auto"
            )
        if placement.distributed or placement.device != "cpu" or tuple(outputs) != ("logits",):
            raise UsageError(
                f"--teacher_cache onnxruntime runs the teacher's logits in one CPU process; this run "
                f"has {placement.world_size} process(es) on {placement.device} and caches "
                f"{', '.join(outputs)}: use --teacher_cache auto"
            )
        data = OFRecordDataset(train, batch_size, features=names)
        with _progress(data, placement) as progress:
            return onnxruntime_pass(
                step.teacher, data, step.teacher_view, work_dir, placement, lambda: progress.update(1), cut
            )
    data = OFRecordDataset(train, batch_size, features=names, placement=placement)
    placement.module(step)

    def compute(teacher: flow.nn.Module, batch: dict[str, flow.Tensor]) -> dict[str, flow.Tensor]:
        result = step.outputs(teacher, model_inputs(batch, step.teacher_view))
        return {name: result[name] for name in outputs}

    with _progress(data, placement) as progress:
        values = SplitPass(compute, step.teacher, data, placement, cut=cut).run(lambda: progress.update(1))
    return {name: value.astype(np.float32) for name, value in values.items()}


@contextlib.contextmanager
def _progress(data: OFRecordDataset, placement: Placement) -> Iterator[tqdm]:
    progress = tqdm(
        total=math.ceil(data.num_examples / data.batch_size),
        desc="teacher cache",
        unit="batch",
        dynamic_ncols=True,
        disable=None if placement.writer else True,
    )
    try:
        yield progress
    finally:
        progress.close()


def onnxruntime_pass(
    teacher: flow.nn.Module,
    data: OFRecordDataset,
    view: str,
    work_dir: Path,
    placement: Placement,
    on_batch: Callable[[], None],
    cut: bool = True,
) -> dict[str, np.ndarray]:
    """{"logits": one row per example of `data`, in file order}, from the teacher exported to a temporary ONNX
    file in `work_dir` (checked against OneFlow within 1e-4 by the export) and run by onnxruntime; with the
    file's dynamic sequence axis (BERT), SplitPass sorts the examples by length and cuts each batch to its
    longest member, as it does for OneFlow.

    onnxruntime runs BERT-base about 3x faster than OneFlow 0.9 on a 2-core CPU (two BLAS threads against
    one), but the export costs time and memory (BERT-base: 40-55 s and a 5.3-5.7 GB peak), so this is a
    choice (--teacher_cache onnxruntime) for long passes on machines with memory to spare."""
    from distil.onnx_export import export_model
    from distil.predict import OnnxEngine

    seq_length = data.split.seq_length(view)
    with tempfile.TemporaryDirectory(prefix=".teacher-onnx-", dir=work_dir) as tmp:
        path = Path(tmp) / "teacher.onnx"
        export_model(teacher, seq_length, path, "the teacher")
        engine = OnnxEngine(path)
        log.info(
            "teacher cache: the teacher's pass runs on onnxruntime (exported to a temporary %s; batches %s)",
            path.name,
            "cut to their length" if cut and engine.cuts else f"at the full {seq_length} positions",
        )

        def compute(_: flow.nn.Module, batch: dict[str, flow.Tensor]) -> dict[str, flow.Tensor]:
            return {"logits": flow.tensor(engine({name: batch[f"{view}{name}"].numpy() for name in MODEL_INPUTS}))}

        values = SplitPass(compute, teacher, data, placement, cut=cut and engine.cuts).run(on_batch)
    return {"logits": values["logits"].astype(np.float32)}


def write_cache(train: Split, cache: Path, values: dict[str, np.ndarray], expected: dict[str, str]) -> None:
    """The training split's part files record by record, each record with its example's cached outputs
    appended, then meta.json and fingerprint.json; written under a temporary name and renamed."""
    staged = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    meta = train.meta
    try:
        index, parts = 0, []
        for part in meta["parts"]:
            with open(staged / part["name"], "wb") as out:
                for body in ofrecord.iter_frames(train.dir / part["name"]):
                    extra = ofrecord.encode_record(
                        {
                            f"{CACHED_PREFIX}{name}": ("float32", array[index].ravel().tolist())
                            for name, array in values.items()
                        }
                    )
                    out.write(ofrecord.frame(body + extra))  # a protobuf map's entries may simply be appended
                    index += 1
            parts.append(
                {
                    "name": part["name"],
                    "records": part["records"],
                    "bytes": (staged / part["name"]).stat().st_size,
                    "sha256": file_sha256(staged / part["name"]),
                }
            )
        features = {
            **meta["features"],
            **{
                f"{CACHED_PREFIX}{name}": {"shape": list(array.shape[1:]), "dtype": "float32"}
                for name, array in values.items()
            },
        }
        write_json_atomic(
            staged / ofrecord.META_FILE,
            {**meta, "features": features, "parts": parts, "teacher_cache_of": str(train.dir)},
        )
        write_json_atomic(staged / FINGERPRINT_FILE, expected)
        replace_dir(staged, cache)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def prepare(
    step: flow.nn.Module,
    train_split: SplitLike,
    model_dir: Path,
    placement: Placement,
    mode: str,
    batch_size: int,
    cut: bool = True,
) -> Split:
    """The split a run trains on: `train_split`, or the teacher cache beside train_state/ when `mode` is
    "auto" or "onnxruntime" (the pass's engine) and the recipe's teacher outputs can be cached (built now if
    absent or stale; a cache made by either engine serves both).

    With a cache, `step` reads the teacher's outputs from the batch from now on.
    """
    train = as_split(train_split)
    outputs = step.cacheable_outputs() if isinstance(step, DistillStep) else ()
    if mode == "off" or not outputs:
        if isinstance(step, DistillStep) and step.needs_teacher and mode != "off":
            log.info(
                "teacher cache: not used (%s need per-token teacher states, too large to store)",
                ", ".join(t.name for t in step.terms if t.operator not in ("hard_label", "pred_distill")),
            )
        return train
    cache = model_dir / CACHE_DIR
    expected = fingerprint(step, train, outputs)
    placement.write(lambda: [shutil.rmtree(p, ignore_errors=True) for p in model_dir.glob(f".{CACHE_DIR}.tmp-*")])
    cached = open_fresh(cache, expected)
    if cached is not None:
        log.info("teacher cache: reusing %s (same teacher weights, data and outputs)", cache)
    else:
        values = teacher_pass(step, train, outputs, placement, batch_size, model_dir, mode == "onnxruntime", cut)
        placement.write(lambda: write_cache(train, cache, values, expected))
        log.info(
            "teacher cache: %d examples x %s in %s (%.1f MB); the teacher does not run in training steps",
            len(next(iter(values.values()))),
            "+".join(outputs),
            cache,
            sum(p.stat().st_size for p in cache.iterdir()) / 2**20,
        )
        cached = open_split(cache, verify_checksums=False)  # written just now, each part's checksum with it
    step.read_teacher_from_batch(outputs)
    return cached
