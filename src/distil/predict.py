"""Putting a trained model to work on new text: `python -m distil predict MODEL_DIR [INPUT ...]`.

An input is a GLUE TSV of the model's task (recognised by its header, or for CoLA by its four
columns; a label column is ignored), or plain text with one example per line (a sentence pair as two
tab-separated fields), or `-` for standard input. Examples are turned into features exactly as
`glue_process.sh` turned the training data (the model directory's own vocabulary, casing, sequence
length and format: BERT word pieces, or the BiLSTM's words), so `predict` on a dev TSV gives the
predictions `eval` scores. The output has one JSON line per example: its source and line number, the
label and the probability of every label (the score for STS-B). The engine is onnxruntime when the model
directory holds a model.onnx newer than its weights (`python -m distil export-onnx`), else OneFlow;
`--engine` forces one. OneFlow computes batches of examples of similar length, each cut to its longest
member (`--length_buckets auto`), and so does onnxruntime when the file's sequence axis is dynamic (a BERT
export; a BiLSTM's file keeps its length). With several processes (`--nproc_per_node`, OneFlow's
launcher) OneFlow computes each batch data-parallel and rank 0 writes the output.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from distil import launch
from distil.data import buckets
from distil.data.convert import bert_inputs, lstm_inputs
from distil.data.tasks import SplitSpec, TaskSpec, column_index, get_task
from distil.data.tokenization import FullTokenizer, load_vocab
from distil.errors import UsageError
from distil.fileio import text_lines
from distil.models import io

log = logging.getLogger(__name__)

STDIN = "-"


@dataclasses.dataclass(frozen=True)
class Line:
    """One example to classify; `line` is its 1-based line number in `source`."""

    source: str
    line: int
    text_a: str
    text_b: str | None


def _lines(source: str) -> Iterator[tuple]:
    """(line number, fields) of every non-empty line of a file or of stdin ('\\n' ends a line)."""
    for number, line in text_lines(source, sys.stdin.buffer if source == STDIN else None):
        if line.strip():
            yield number, line.split("\t")


def _tsv_layout(task: TaskSpec, first: list[str]) -> SplitSpec | None:
    """The task split whose layout the first row shows (a header naming its columns, or CoLA's 4 columns)."""
    for spec in (task.splits.get("eval"), task.splits.get("test")):
        if spec is None:
            continue
        named = [c for c in (spec.text_a, spec.text_b) if c is not None]
        if spec.header and all(isinstance(c, str) and c in first for c in named):
            return spec
        if not spec.header and len(first) > max(c for c in named if isinstance(c, int)) and len(first) > 2:
            return spec
    return None


def read_lines(source: str, task: TaskSpec) -> Iterator[Line]:
    """The examples of one input, checked field by field: a bad line stops with `source:line`."""
    if source != STDIN and not Path(source).is_file():
        raise UsageError(f"{source}: no such input file")
    rows = _lines(source)
    first = next(rows, None)
    if first is None:
        return
    spec = _tsv_layout(task, first[1])
    if spec is not None:
        header = first[1] if spec.header else None
        columns = [column_index(c, header, Path(source)) for c in (spec.text_a, spec.text_b) if c is not None]
        width = len(first[1])
        rows = rows if spec.header else iter([first, *rows])
        for number, fields in rows:
            if len(fields) != width:
                raise UsageError(
                    f"{source}:{number}: {len(fields)} tab-separated fields, but the {task.name} TSV "
                    f"layout of line {first[0]} has {width}"
                )
            yield Line(source, number, fields[columns[0]], fields[columns[1]] if len(columns) > 1 else None)
        return
    want = 2 if task.is_pair else 1
    for number, fields in iter([first, *rows]):
        if len(fields) != want:
            kind = "a sentence pair: two tab-separated fields" if task.is_pair else "one sentence, no tab"
            raise UsageError(
                f"{source}:{number}: {len(fields)} tab-separated fields; a {task.name} example is "
                f"{kind} (or give a {task.name} TSV with its header)"
            )
        yield Line(source, number, fields[0], fields[1] if task.is_pair else None)


class Featurizer:
    """Model inputs of raw text, as the model's training data was converted (convert.py)."""

    def __init__(self, model_dir: Path, config: dict[str, Any]):
        data = config.get("data") or {}
        self.format, self.seq_length = data.get("format", "bert"), data.get("seq_length")
        lower = data.get("do_lower_case", True)
        if not self.seq_length:
            raise UsageError(f"{model_dir / io.CONFIG_FILE}: no data.seq_length (was this model trained here?)")
        self.tokenizer = FullTokenizer(str(model_dir / io.VOCAB_FILE), lower)
        self.words = load_vocab(model_dir / io.VOCAB_FILE) if self.format == "lstm" else None

    def __call__(self, lines: Sequence[Line]) -> dict[str, np.ndarray]:
        rows = [self._one(line) for line in lines]
        return {
            name: np.array([row[i] for row in rows], dtype=np.int32)
            for i, name in enumerate(("input_ids", "input_mask", "segment_ids"))
        }

    def _one(self, line: Line):
        basic, wordpiece = self.tokenizer.basic_tokenizer, self.tokenizer.wordpiece_tokenizer
        words_a = basic.tokenize(line.text_a)
        words_b = basic.tokenize(line.text_b) if line.text_b is not None else None
        if self.words is not None:
            return lstm_inputs(words_a, words_b, self.words, self.seq_length)
        pieces_b = wordpiece.tokenize_words(words_b) if words_b is not None else None
        return bert_inputs(wordpiece.tokenize_words(words_a), pieces_b, self.tokenizer, self.seq_length)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def prediction(line: Line, logits: np.ndarray, task: TaskSpec) -> dict[str, Any]:
    """One output line: where the example came from, and the label with every label's probability."""
    where = {"source": line.source, "line": line.line}
    if task.is_regression:
        return {**where, "score": float(logits[0])}
    probabilities = _softmax(logits.astype(np.float64))
    return {
        **where,
        "label": task.labels[int(np.argmax(logits))],
        "probabilities": {label: float(p) for label, p in zip(task.labels, probabilities)},
    }


class OneFlowEngine:
    """The model directory's weights in OneFlow, run eagerly without autograd (as evaluation runs)."""

    name = "oneflow"
    cuts = True  # eager: any sequence length

    def __init__(self, model_dir: Path, device: str):
        from distil.runtime import import_oneflow
        from distil.train.placement import Placement

        self.flow = import_oneflow()
        self.placement = Placement(device)
        self.model = self.placement.module(io.load_model(model_dir)).eval()

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        from distil.train.graph import MODEL_INPUTS

        flow, rows = self.flow, len(features["input_ids"])
        with flow.no_grad():
            batch = self.placement.batch({k: flow.tensor(v) for k, v in self.own_rows(features).items()})
            logits = self.placement.gather(self.model.logits(*(batch[name] for name in MODEL_INPUTS)))
        return io.as_numpy(logits)[:rows]

    def own_rows(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This process's equal share of the rows (every process sees all of them; the last row is repeated to
        make the shares equal, and its copies are dropped from the gathered logits)."""
        world, rank = self.placement.world_size, self.placement.rank
        share = -(-len(features["input_ids"]) // world)
        return {
            k: np.concatenate([v, np.repeat(v[-1:], share * world - len(v), axis=0)])[rank * share : (rank + 1) * share]
            for k, v in features.items()
        }


class OnnxEngine:
    """An exported model.onnx run by onnxruntime (CPU), at the file's sequence length or, when that axis is
    dynamic, at any shorter one."""

    name = "onnxruntime"

    def __init__(self, path: Path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        from distil.onnx_export import INPUTS, OUTPUT

        return self.session.run([OUTPUT], {name: features[name] for name in INPUTS})[0]

    @property
    def cuts(self) -> bool:
        """Whether the file takes shorter sequences (a symbolic sequence axis) or only the exported length."""
        return not isinstance(self.session.get_inputs()[0].shape[1], int)


ENGINES = ("auto", "oneflow", "onnxruntime")
PRECISIONS = ("fp32", "int8")  # int8: the dynamically quantized file of `export-onnx --quantize int8`


def choose_engine(model_dir: Path, engine: str, onnx_file: Path | None, device: str, precision: str = "fp32"):
    """onnxruntime when asked, or (auto) when the ONNX file exists and is newer than the weights; else OneFlow.
    INT8 is only the quantized ONNX file: onnxruntime, and an error when it is missing or stale.

    An ONNX file older than the weights belongs to an earlier model: asked for, it is an error; under auto
    it is passed over with a warning."""
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got '{engine}'")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    int8 = precision == "int8"
    path = onnx_file or model_dir / (io.ONNX_INT8_FILE if int8 else io.ONNX_FILE)
    if int8 and engine == "oneflow":
        raise UsageError("--precision int8 runs the quantized ONNX file on onnxruntime, not with --engine oneflow")
    if not int8 and (engine == "oneflow" or (engine == "auto" and (launch.launched() or not path.is_file()))):
        return OneFlowEngine(model_dir, device)
    if not path.is_file():
        how = " --quantize int8" if int8 else ""
        raise UsageError(
            f"{'--precision int8' if int8 else '--engine onnxruntime'}: no {path} (export it: "
            f"python -m distil export-onnx {model_dir}{how})"
        )
    if path.stat().st_mtime < io.weights_mtime(model_dir):
        message = (
            f"{path} is older than {model_dir / io.WEIGHTS_DIR}/ (re-export: python -m distil export-onnx {model_dir})"
        )
        if engine == "onnxruntime" or int8:
            raise UsageError(message)
        log.warning("%s; using OneFlow", message)
        return OneFlowEngine(model_dir, device)
    return OnnxEngine(path)


def _write_lines(out: IO[str], results: Sequence[dict[str, Any]]) -> None:
    for result in results:
        out.write(json.dumps(result, ensure_ascii=False) + "\n")


CHUNK_BATCHES = 64  # batches sorted by length together (as group_by_length's mega-batches)


def logits_by_length(
    engine,
    features: dict[str, np.ndarray],
    batch_size: int,
    cut: bool,
    on_batch: Callable[[int], None],
    call_cost: int | None = None,
) -> np.ndarray:
    """The engine's logits of every row, in row order, from batches of rows of similar length (sorted, stably),
    each cut to its longest member when `cut` (the padding left out is work saved). Batches hold `batch_size`
    rows, or, given `call_cost` (an engine call's fixed cost in tokens), as many as `length_groups` chooses."""
    lengths = features["input_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable") if cut else np.arange(len(lengths))
    if cut and call_cost is not None:
        groups = length_groups(lengths[order], batch_size, call_cost)
    else:
        groups = [(start, min(start + batch_size, len(order))) for start in range(0, len(order), batch_size)]
    logits: np.ndarray | None = None
    for start, end in groups:
        rows = order[start:end]
        width = max(1, int(lengths[rows].max())) if cut else features["input_ids"].shape[1]
        batch = engine({name: np.ascontiguousarray(value[rows, :width]) for name, value in features.items()})
        if logits is None:
            logits = np.empty((len(order), *batch.shape[1:]), dtype=batch.dtype)
        logits[rows] = batch
        on_batch(len(rows))
    return logits


def length_groups(sorted_lengths: np.ndarray, batch_size: int, call_cost: int) -> list[tuple[int, int]]:
    """Split rows sorted by length into [start, end) runs of at most `batch_size` that minimise the tokens
    computed (rows x the run's longest length, padding included) plus `call_cost` tokens per engine call.

    Why: requests arrive in random lengths, so one batch cut to its longest member computes mostly padding;
    a few calls of similar lengths cost less as long as a call's fixed cost stays below the padding saved.
    Exact by dynamic programming over the sorted rows (a served batch holds a few dozen)."""
    n = len(sorted_lengths)
    best, cut_at = [0] * (n + 1), [0] * (n + 1)
    for end in range(1, n + 1):
        width = max(1, int(sorted_lengths[end - 1]))
        best[end], cut_at[end] = min(
            (best[start] + call_cost + (end - start) * width, start) for start in range(max(0, end - batch_size), end)
        )
    runs, end = [], n
    while end > 0:
        runs.append((cut_at[end], end))
        end = cut_at[end]
    return runs[::-1]


def predict(
    model_dir: Path,
    inputs: Sequence[str],
    output: Path | None,
    batch_size: int,
    device: str,
    engine: str = "auto",
    onnx_file: Path | None = None,
    length_buckets: str = "auto",
    precision: str = "fp32",
) -> dict:
    """Classify every example of `inputs`; JSON lines into `output` (atomically) or onto stdout, in input order.
    With `length_buckets` auto, examples are batched by length and each batch cut to its longest member."""
    if batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {batch_size}")
    cut = buckets.check_mode(length_buckets)
    config = io.read_config(model_dir)
    if not config.get("task"):
        raise UsageError(f"{model_dir} has no task (a pretrained model); fine-tune it first")
    io.weights_mtime(model_dir)  # (an error without weights)
    task = get_task(config["task"]["name"])
    featurize = Featurizer(model_dir, config)
    lines = [line for source in inputs or [STDIN] for line in read_lines(source, task)]
    if not lines:
        raise UsageError(f"{', '.join(inputs or [STDIN])}: no examples to classify (the input is empty)")
    engine = choose_engine(model_dir, engine, onnx_file, device, precision)
    cut = cut and engine.cuts
    writer = launch.rank() == 0  # with several processes, rank 0 writes
    staged = output.with_name(f".{output.name}.tmp-{os.getpid()}") if output and writer else None
    out = open(staged, "w", encoding="utf-8") if staged else sys.stdout if writer else open(os.devnull, "w")
    try:
        with tqdm(
            total=len(lines), desc="predict", unit="example", dynamic_ncols=True, disable=None if writer else True
        ) as progress:
            for start in range(0, len(lines), batch_size * CHUNK_BATCHES):
                chunk = lines[start : start + batch_size * CHUNK_BATCHES]
                logits = logits_by_length(engine, featurize(chunk), batch_size, cut, progress.update)
                _write_lines(out, [prediction(line, row, task) for line, row in zip(chunk, logits)])
        if staged:
            out.close()
            os.replace(staged, output)
    finally:
        if out is not sys.stdout:
            out.close()
        if staged:
            staged.unlink(missing_ok=True)
    summary = {
        "model_dir": str(model_dir),
        "task": task.name,
        "examples": len(lines),
        "engine": engine.name,
        "precision": precision,
        "length_buckets": "auto" if cut else "off",
        "output": str(output) if output else "stdout",
    }
    log.info("predicted %d examples with %s (%s)", len(lines), model_dir, engine.name)
    return summary
