"""The GLUE task registry: the one place that knows each task's files, columns, labels and metrics.

Follows the processors of the original `glue_process.py` (Google BERT's `run_classifier.py`),
plus the tasks it lacked (STS-B regression, SNLI, the diagnostic set) and unlabeled test readers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

from distil.errors import UsageError
from distil.fileio import text_lines

log = logging.getLogger(__name__)

Column = Union[int, str]  # an index for header-less files, a header name otherwise


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """How to read one TSV file of a task."""

    file: str                      # relative to the task's GLUE folder
    text_a: Column
    text_b: Optional[Column] = None
    label: Optional[Column] = None  # None: an unlabeled (test) split
    header: bool = True


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One GLUE task. `labels` is None for regression (STS-B), whose labels are floats."""

    name: str
    folder: str
    labels: Optional[Tuple[str, ...]]
    metrics: Tuple[str, ...]
    splits: Dict[str, SplitSpec]
    skip_labels: Tuple[str, ...] = ()  # gold labels that mark an example without consensus (SNLI "-")

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        """Whether examples are sentence pairs (MRPC, QQP, MNLI, ...) rather than single sentences."""
        return any(s.text_b is not None for s in self.splits.values())

    def label_id(self, label: str) -> Union[int, float]:
        """Map a TSV label to the number stored in `label_ids`; raises ValueError if unknown."""
        if self.labels is None:
            value = float(label)
            if not math.isfinite(value):
                raise ValueError(f"not a finite number: {label}")
            return value
        return self.labels.index(label)


NLI_LABELS = ("contradiction", "entailment", "neutral")
ENTAILMENT_LABELS = ("entailment", "not_entailment")
BINARY = ("0", "1")


def _pair(file: str, a: Column, b: Column, label: Optional[Column]) -> SplitSpec:
    return SplitSpec(file, a, b, label)


TASKS: Dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("CoLA", "CoLA", BINARY, ("mcc", "accuracy"), {
            # original: train/dev have no header; columns: source, label, original label, sentence
            "train": SplitSpec("train.tsv", 3, label=1, header=False),
            "eval": SplitSpec("dev.tsv", 3, label=1, header=False),
            "test": SplitSpec("test.tsv", "sentence"),
        }),
        TaskSpec("SST-2", "SST-2", BINARY, ("accuracy",), {
            "train": SplitSpec("train.tsv", "sentence", label="label"),
            "eval": SplitSpec("dev.tsv", "sentence", label="label"),
            "test": SplitSpec("test.tsv", "sentence"),
        }),
        TaskSpec("MRPC", "MRPC", BINARY, ("accuracy", "f1"), {
            "train": _pair("train.tsv", "#1 String", "#2 String", "Quality"),
            "eval": _pair("dev.tsv", "#1 String", "#2 String", "Quality"),
            "test": _pair("test.tsv", "#1 String", "#2 String", None),
        }),
        TaskSpec("QQP", "QQP", BINARY, ("accuracy", "f1"), {
            "train": _pair("train.tsv", "question1", "question2", "is_duplicate"),
            "eval": _pair("dev.tsv", "question1", "question2", "is_duplicate"),
            "test": _pair("test.tsv", "question1", "question2", None),
        }),
        TaskSpec("STS-B", "STS-B", None, ("pearson", "spearman"), {
            "train": _pair("train.tsv", "sentence1", "sentence2", "score"),
            "eval": _pair("dev.tsv", "sentence1", "sentence2", "score"),
            "test": _pair("test.tsv", "sentence1", "sentence2", None),
        }),
        TaskSpec("MNLI", "MNLI", NLI_LABELS, ("accuracy",), {
            "train": _pair("train.tsv", "sentence1", "sentence2", "gold_label"),
            "eval": _pair("dev_matched.tsv", "sentence1", "sentence2", "gold_label"),
            "eval_mismatched": _pair("dev_mismatched.tsv", "sentence1", "sentence2", "gold_label"),
            "test": _pair("test_matched.tsv", "sentence1", "sentence2", None),
            "test_mismatched": _pair("test_mismatched.tsv", "sentence1", "sentence2", None),
        }),
        TaskSpec("QNLI", "QNLI", ENTAILMENT_LABELS, ("accuracy",), {
            "train": _pair("train.tsv", "question", "sentence", "label"),
            "eval": _pair("dev.tsv", "question", "sentence", "label"),
            "test": _pair("test.tsv", "question", "sentence", None),
        }),
        TaskSpec("RTE", "RTE", ENTAILMENT_LABELS, ("accuracy",), {
            "train": _pair("train.tsv", "sentence1", "sentence2", "label"),
            "eval": _pair("dev.tsv", "sentence1", "sentence2", "label"),
            "test": _pair("test.tsv", "sentence1", "sentence2", None),
        }),
        TaskSpec("WNLI", "WNLI", BINARY, ("accuracy",), {
            "train": _pair("train.tsv", "sentence1", "sentence2", "label"),
            "eval": _pair("dev.tsv", "sentence1", "sentence2", "label"),
            "test": _pair("test.tsv", "sentence1", "sentence2", None),
        }),
        TaskSpec("SNLI", "SNLI", NLI_LABELS, ("accuracy",), {
            "train": _pair("train.tsv", "sentence1", "sentence2", "gold_label"),
            "eval": _pair("dev.tsv", "sentence1", "sentence2", "gold_label"),
            "test": _pair("test.tsv", "sentence1", "sentence2", "gold_label"),
        }, skip_labels=("-",)),
        # The diagnostic set (AX) is an unlabeled MNLI-style test set.
        TaskSpec("diagnostic", "diagnostic", NLI_LABELS, ("accuracy",), {
            "test": _pair("diagnostic.tsv", "sentence1", "sentence2", None),
        }),
    ]
}


# TinyBERT's augmented training set (scripts/run_data_augmentation.sh) has train.tsv's layout.
for _task in TASKS.values():
    if "train" in _task.splits:
        _task.splits["train_aug"] = dataclasses.replace(_task.splits["train"], file="train_aug.tsv")


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, case-insensitively (`sst-2`, `SST-2`, `AX` for the diagnostic set)."""
    key = {"ax": "diagnostic", "sts": "STS-B", "sst": "SST-2"}.get(name.lower(), name)
    for task in TASKS.values():
        if task.name.lower() == key.lower():
            return task
    raise UsageError(f"unknown task '{name}'; valid tasks: {', '.join(TASKS)}")


@dataclasses.dataclass(frozen=True)
class Example:
    """One TSV row: `line` is its 1-based line number in `file`, for error messages."""

    text_a: str
    text_b: Optional[str]
    label: Optional[str]
    line: int


def tsv_rows(path: Path) -> Iterator[Tuple[int, List[str]]]:
    """Yield (line number, fields) of a TSV file without quoting (GLUE text contains bare quotes).

    Only '\\n' ends a row: text may contain '\\r' or Unicode line separators; a line that is not UTF-8 is an
    error naming file and line.
    """
    for number, line in text_lines(path):
        if line:
            yield number, line.split("\t")


def column_index(column: Column, header: Optional[List[str]], path: Path) -> int:
    """A split's column (an index, or a header name) as an index into the row."""
    if isinstance(column, int):
        return column
    if header is None or column not in header:
        raise UsageError(f"{path}:1: header {header} has no column '{column}'")
    return header.index(column)


def read_examples(task: TaskSpec, split: str, glue_dir: Union[str, Path],
                  skipped: Optional[List[str]] = None) -> Iterator[Example]:
    """Read one split of a task from `<glue_dir>/<task folder>/<file>`, validating every row.

    A row with a different number of columns than the header (or than the first row, for
    header-less files) or an unknown label stops with `file:line` and the offending text; with
    a `skipped` list (the official QQP and SNLI files hold a few such rows) it is logged as a
    warning, its `file:line` appended to `skipped`, and reading goes on.
    """
    spec = task.splits[split]
    path = Path(glue_dir) / task.folder / spec.file
    if not path.is_file():
        raise UsageError(f"{task.name} {split}: missing file {path} (expected {spec.file} in {path.parent})")
    rows = tsv_rows(path)
    header = next(rows, (1, None))[1] if spec.header else None
    width = len(header) if header is not None else None
    cols = [column_index(c, header, path) if c is not None else None
            for c in (spec.text_a, spec.text_b, spec.label)]
    for number, fields in rows:
        if width is None:
            width = len(fields)
        problem = _row_problem(task, fields, width, cols)
        if problem is None:
            a, b, label = (fields[c] if c is not None else None for c in cols)
            if label is None or label not in task.skip_labels:
                yield Example(a, b, label, number)
            continue
        message = f"{path}:{number}: {problem}: {_clip(fields)}"
        if skipped is None:
            raise UsageError(message)
        log.warning("skipped a malformed row: %s", message)
        skipped.append(f"{path}:{number}")


def _row_problem(task: TaskSpec, fields: List[str], width: int, cols: List[Optional[int]]) -> Optional[str]:
    """Why a row cannot be read (wrong column count, unknown label), or None."""
    if len(fields) != width or max(c for c in cols if c is not None) >= width:
        return f"expected {width} tab-separated columns, found {len(fields)}"
    label = fields[cols[2]] if cols[2] is not None else None
    if label is None or label in task.skip_labels:
        return None
    try:
        task.label_id(label)
    except ValueError:
        valid = "a number" if task.labels is None else ", ".join(task.labels)
        return f"unknown label '{label}' for {task.name} (valid: {valid})"
    return None


def _clip(fields: List[str], limit: int = 200) -> str:
    text = "\t".join(fields)
    return repr(text if len(text) <= limit else text[:limit] + "...")
