"""Raw text -> OFRecords for general distillation (original: examples/tinybert/pregenerate_training_data.py).

The original wrote epoch_{i}.json files that nothing read; ours writes `<output_dir>/{train,dev}/` in the same
split format as `convert.py` (part files, meta.json with vocab and length histogram), so `open_split` and
`OFRecordDataset` read them like any GLUE split, minus the labels. The corpus is one sentence per line with a
blank line between documents; consecutive sentences of a document are packed greedily into
`[CLS] pieces... [SEP]` sequences that never cross a document boundary.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Tuple

from tqdm import tqdm

from distil import __version__
from distil.data import ofrecord
from distil.data.convert import _features_meta, _SplitWriter
from distil.data.tokenization import FullTokenizer
from distil.errors import UsageError
from distil.fileio import file_sha256, replace_dir, text_lines

log = logging.getLogger(__name__)

FEATURES = ("input_ids", "input_mask", "segment_ids")
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")
MIN_SEQ_LENGTH = 8
RECORDS_PER_PART = 16384
_PROGRESS_STEP = 1 << 20  # bytes between two progress-bar updates: tqdm per line would cost more than reading


def pack_document(sentences: Iterable[List[int]], capacity: int) -> Iterator[List[int]]:
    """The contents (without [CLS]/[SEP]) of one document's sequences, `capacity` pieces at most each.

    Greedy, so that few positions are padding: a sentence joins the current sequence when it fits, else the
    current sequence is closed and the sentence starts the next one. A sentence longer than `capacity` is cut
    into pieces that each fill a sequence; its remainder starts the next sequence. The last, partial sequence
    is kept. Sentences are never reordered; nothing of another document is ever added.
    """
    current: List[int] = []
    for pieces in sentences:
        if not pieces:
            continue
        if len(current) + len(pieces) <= capacity:
            current += pieces
            continue
        if current:
            yield current
        while len(pieces) > capacity:
            yield pieces[:capacity]
            pieces = pieces[capacity:]
        current = list(pieces)
    if current:
        yield current


def dev_documents(documents: int, dev_fraction: float) -> int:
    """How many of the last documents go to dev: ~dev_fraction of them, at least one when there are two or more
    (train keeps at least one); none with a single document or dev_fraction 0, and then no dev split is written."""
    if documents < 2 or dev_fraction <= 0:
        return 0
    return min(documents - 1, max(1, round(documents * dev_fraction)))


def _progress_lines(path: Path, handle, desc: str) -> Iterator[bytes]:
    """The raw lines of an open binary file, advancing a progress bar over its bytes."""
    with tqdm(total=path.stat().st_size, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
              disable=None) as bar:
        pending = 0
        for raw in handle:
            pending += len(raw)
            if pending >= _PROGRESS_STEP:
                bar.update(pending)
                pending = 0
            yield raw
        bar.update(pending)


def _lines(path: Path, desc: str) -> Iterator[Tuple[int, str]]:
    """(line number, text) of the corpus, streamed, UTF-8 checked by `fileio.text_lines` (file, line, byte)."""
    with open(path, "rb") as handle:
        yield from text_lines(path, _progress_lines(path, handle, desc))  # type: ignore[arg-type]


def _count_documents(corpus: Path) -> Tuple[int, int]:
    """First pass: (documents, lines), so that the last documents can go to dev; rejects a text without any
    document break before anything is written."""
    documents = lines = 0
    in_document = saw_blank = False
    for lines, text in _lines(corpus, f"checking {corpus.name}"):
        if text.strip():
            documents += not in_document
            in_document = True
        else:
            in_document, saw_blank = False, True
    if lines == 0:
        raise UsageError(f"{corpus}: empty file; expected UTF-8 text, one sentence per line, a blank line "
                         "between documents")
    if documents == 0:
        raise UsageError(f"{corpus}:{lines}: only blank lines, no text")
    if not saw_blank and lines > 1:
        raise UsageError(f"{corpus}:{lines}: no blank line in {lines} lines; documents are separated by blank "
                         "lines (one sentence per line, an empty line between two documents), and a sequence "
                         "never crosses a document boundary")
    return documents, lines


class _Split:
    """One output split: its writer and the counts its meta.json reports."""

    def __init__(self, name: str, directory: Path, meta: Dict):
        self.name = name
        self.counts = {"documents": 0, "sentences": 0, "sequences": 0, "tokens": 0}
        self.lines = [0, 0]
        self.writer = _SplitWriter(directory, RECORDS_PER_PART, {**meta, "split": name})

    def close(self) -> Dict:
        self.writer.meta.update(self.counts, lines=self.lines)
        self.writer.close()
        return {**self.counts, "padding_share": self.writer.meta["lengths"]["padding_share"]}


class _Encoder:
    """Framed OFRecords of packed sequences; the mask and segment features are encoded once per length."""

    def __init__(self, vocab: Dict[str, int], seq_length: int):
        self.cls, self.sep, self.pad = vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]
        self.seq_length = seq_length
        self.masks = [ofrecord.encode_feature("int32", [1] * n + [0] * (seq_length - n))
                      for n in range(seq_length + 1)]
        self.segments = ofrecord.encode_feature("int32", [0] * seq_length)

    def __call__(self, pieces: List[int]) -> Tuple[bytes, int]:
        ids = [self.cls, *pieces, self.sep]
        n = len(ids)
        features = (ofrecord.encode_feature("int32", ids + [self.pad] * (self.seq_length - n)), self.masks[n],
                    self.segments)
        return ofrecord.frame(ofrecord.encode_record_from_features(zip(FEATURES, features))), n


def _check_arguments(corpus: Path, vocab_file: Path, output_dir: Path, max_seq_length: int, dev_fraction: float,
                     overwrite: bool) -> None:
    """Everything that can be refused before reading the corpus."""
    if max_seq_length < MIN_SEQ_LENGTH:
        raise UsageError(f"--max_seq_length {max_seq_length} is too small (at least {MIN_SEQ_LENGTH}: "
                         "[CLS], [SEP] and a few word pieces)")
    if not 0 <= dev_fraction < 1:
        raise UsageError(f"--dev_fraction {dev_fraction} must be in [0, 1)")
    if not corpus.is_file():
        raise UsageError(f"{corpus}: no such file (the corpus: UTF-8 text, one sentence per line, a blank line "
                         "between documents)")
    if not vocab_file.is_file():
        raise UsageError(f"{vocab_file}: no such vocab file")
    if output_dir.exists():
        if not output_dir.is_dir():
            raise UsageError(f"--output_dir {output_dir} exists and is not a folder")
        if any(output_dir.iterdir()) and not overwrite:
            raise UsageError(f"--output_dir {output_dir} exists and is not empty; pass --overwrite to replace it")
        for path in (corpus, vocab_file):
            if output_dir.resolve() in path.resolve().parents:
                raise UsageError(f"{path} is inside --output_dir {output_dir}, which would be replaced")


def pregenerate(corpus: Path, vocab_file: Path, output_dir: Path, max_seq_length: int = 128,
                do_lower_case: bool = True, dev_fraction: float = 0.01, overwrite: bool = False) -> Dict:
    """Write `output_dir/train/` and `output_dir/dev/` (the last ~dev_fraction of the documents; absent when
    no document goes there, e.g. with a single document) from a text corpus; return a JSON-able summary.

    Streams the corpus twice (counting documents, then packing them; one document in memory at a time) into a
    temporary sibling folder that is renamed into place only when complete. An existing, non-empty
    `output_dir` is replaced only with `overwrite`.
    """
    corpus, vocab_file, output_dir = Path(corpus), Path(vocab_file), Path(output_dir)
    start = time.perf_counter()
    _check_arguments(corpus, vocab_file, output_dir, max_seq_length, dev_fraction, overwrite)
    tokenizer = FullTokenizer(vocab_file, do_lower_case)
    vocab = tokenizer.vocab
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise UsageError(f"{vocab_file}: not a BERT vocabulary (no {', '.join(missing)} token)")
    documents, lines = _count_documents(corpus)
    dev_count = dev_documents(documents, dev_fraction)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        common = {"format": "pretraining", "source": str(corpus.resolve()), "labeled": False,
                  "created_by": f"distil {__version__}", "seq_length": max_seq_length,
                  "vocab": {"file": str(vocab_file.resolve()), "sha256": file_sha256(vocab_file),
                            "size": len(vocab), "do_lower_case": do_lower_case},
                  "features": _features_meta(FEATURES, max_seq_length, "int32"),
                  "dev_fraction": dev_fraction, "corpus_documents": documents}
        splits = _write_splits(corpus, tokenizer, staging, common, documents - dev_count, max_seq_length)
        if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:  # appeared while we worked
            raise UsageError(f"--output_dir {output_dir} exists and is not empty; pass --overwrite to replace it")
        replace_dir(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    totals = {key: sum(split[key] for split in splits.values()) for key in ("documents", "sentences", "sequences",
                                                                         "tokens")}
    summary = {"output_dir": str(output_dir), "source": str(corpus), "lines": lines, "max_seq_length": max_seq_length,
               **totals, "train": splits["train"], "dev": splits.get("dev"),
               "seconds": round(time.perf_counter() - start, 1)}
    log.info("%s: %d documents, %d sentences -> %d sequences of %d (%d train, %d dev); %.0f %% of train positions "
             "are padding", corpus, totals["documents"], totals["sentences"], totals["sequences"], max_seq_length,
             splits["train"]["sequences"], splits["dev"]["sequences"] if "dev" in splits else 0,
             100 * splits["train"]["padding_share"])
    return summary


def _write_splits(corpus: Path, tokenizer: FullTokenizer, staging: Path, common: Dict, train_documents: int,
                  max_seq_length: int) -> Dict[str, Dict]:
    """Second pass: pack each document, in order, into train; the documents after the first `train_documents`
    into dev. Returns each split's counts."""
    encode = _Encoder(tokenizer.vocab, max_seq_length)
    capacity = max_seq_length - 2
    splits = [_Split("train", staging / "train", common)]
    document: List[List[int]] = []  # word-piece ids of the current document's sentences
    started = 0  # documents begun so far
    last_text = 0  # line number of the last non-blank line

    def finish() -> None:
        split = splits[-1]
        for pieces in pack_document(document, capacity):
            split.writer.add(*encode(pieces))
            split.counts["sequences"] += 1
        split.counts["documents"] += 1
        split.lines[1] = last_text
        document.clear()

    in_document = False
    for number, text in _lines(corpus, f"pregenerating {corpus.name}"):
        if not text.strip():
            if in_document:
                finish()
            in_document = False
            continue
        if not in_document:
            in_document = True
            if started == train_documents:
                splits.append(_Split("dev", staging / "dev", common))
            started += 1
            if not splits[-1].lines[0]:
                splits[-1].lines[0] = number
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
        splits[-1].counts["sentences"] += 1
        splits[-1].counts["tokens"] += len(ids)
        document.append(ids)
        last_text = number
    if in_document:
        finish()
    if not sum(split.counts["tokens"] for split in splits):
        raise UsageError(f"{corpus}:{last_text}: no word pieces in the whole file (only control characters?)")
    return {split.name: split.close() for split in splits}
