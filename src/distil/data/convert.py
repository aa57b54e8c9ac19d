"""GLUE TSV -> OFRecord conversion for BERT (WordPiece, seq 128) and Distilled-BiLSTM (words, seq 32).

Follows the original `glue_process.py` / `glue_process_lstm.py` (features, truncation, padding),
without their defects: outputs are replaced atomically (never appended), the LSTM vocabulary
counts the whole train set, test splits have unlabeled readers, and every LSTM record also
carries the teacher's BERT view so shuffling can never misalign the two.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Counter, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm

from distil import __version__
from distil.data import buckets, ofrecord
from distil.data.tasks import Example, TaskSpec, get_task, read_examples
from distil.data.tokenization import BasicTokenizer, FullTokenizer, load_vocab
from distil.errors import UsageError
from distil.fileio import file_sha256, replace_dir, write_json_atomic

log = logging.getLogger(__name__)

UNK, PAD = "<UNK>", "<PAD>"
DEFAULT_VOCAB = Path(__file__).with_name("vocab") / "bert-base-uncased.txt"  # Google's uncased BERT vocab
REQUIRED_SPLITS = ("train", "eval", "eval_mismatched")
CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Everything a conversion needs; `lstm_seq_length=0` skips the Distilled-BiLSTM variant."""

    glue_dir: Path
    output_dir: Path
    vocab_file: Path
    max_seq_length: int = 128
    do_lower_case: bool = True
    lstm_seq_length: int = 32
    lstm_vocab_size: int = 10000
    records_per_part: int = 16384
    workers: int = 0  # 0: one per CPU core
    strict: bool = False              # a malformed training row is an error, not a skipped row
    skip_bad_eval_rows: bool = False  # dev/test rows: skipped (with a warning) instead of an error

    def lstm_folder(self, task: TaskSpec) -> str:
        return f"{task.name}_lstm_{self.lstm_seq_length}"


# ---------------------------------------------------------------- features of one example


def truncate_pair(tokens_a: List[str], tokens_b: List[str], max_length: int) -> None:
    """Pop from the end of the longer list until both fit (Google BERT's `_truncate_seq_pair`)."""
    while len(tokens_a) + len(tokens_b) > max_length:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()


def bert_inputs(tokens_a: List[str], tokens_b: Optional[List[str]], tokenizer: FullTokenizer,
                max_len: int) -> Tuple[List[int], List[int], List[int]]:
    """[CLS] a [SEP] (b [SEP]) as ids, mask and segments, right-padded with 0 to `max_len`."""
    if tokens_b is None:
        tokens_a = tokens_a[: max_len - 2]
        tokens_b = []
    else:
        truncate_pair(tokens_a, tokens_b, max_len - 3)
    tokens = ["[CLS]", *tokens_a, "[SEP]"]
    segments = [0] * len(tokens)
    if tokens_b:
        tokens += [*tokens_b, "[SEP]"]
        segments += [1] * (len(tokens_b) + 1)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    pad = max_len - len(ids)
    return ids + [0] * pad, [1] * len(ids) + [0] * pad, segments + [0] * pad


def lstm_inputs(words_a: List[str], words_b: Optional[List[str]], vocab: Dict[str, int],
                max_len: int) -> Tuple[List[int], List[int], List[int]]:
    """Word ids of a (then b), mask and segments (0 for a, 1 for b), padded with <PAD> to `max_len`.

    original: a pair was joined with a <PAD> token as separator and segment_ids were all 1;
    ours: the segment ids mark the two sentences, so a model can encode each one on its own.
    """
    words_b = list(words_b or [])
    words_a = list(words_a)
    truncate_pair(words_a, words_b, max_len)
    unk, pad = vocab[UNK], vocab[PAD]
    ids = [vocab.get(w, unk) for w in words_a + words_b]
    n = len(ids)
    return (ids + [pad] * (max_len - n), [1] * n + [0] * (max_len - n),
            [0] * len(words_a) + [1] * len(words_b) + [0] * (max_len - n))


# ---------------------------------------------------------------- worker processes

_worker: Dict[str, object] = {}


def _init_worker(config: ConvertConfig, lstm_vocab: Optional[Dict[str, int]], label_dtype: str) -> None:
    _worker.update(tokenizer=FullTokenizer(str(config.vocab_file), config.do_lower_case),
                   config=config, lstm_vocab=lstm_vocab, label_dtype=label_dtype)


def _count_words(chunk: Sequence[Tuple[str, Optional[str], float]]) -> Counter[str]:
    basic: BasicTokenizer = _worker["tokenizer"].basic_tokenizer  # type: ignore[union-attr]
    counts: Counter[str] = collections.Counter()
    for text_a, text_b, _ in chunk:
        counts.update(basic.tokenize(text_a))
        if text_b is not None:
            counts.update(basic.tokenize(text_b))
    return counts


Encoded = List[Tuple[bytes, int]]


def _encode_chunk(chunk: Sequence[Tuple[str, Optional[str], float]]) -> Tuple[Encoded, Encoded]:
    """(framed record, real length) of each example of one chunk: BERT records, and (if an LSTM vocab is
    set) LSTM records, whose length is the word count."""
    tokenizer: FullTokenizer = _worker["tokenizer"]  # type: ignore[assignment]
    config: ConvertConfig = _worker["config"]  # type: ignore[assignment]
    lstm_vocab = _worker["lstm_vocab"]
    label_dtype: str = _worker["label_dtype"]  # type: ignore[assignment]
    basic, wordpiece = tokenizer.basic_tokenizer, tokenizer.wordpiece_tokenizer
    bert, lstm = [], []
    for text_a, text_b, label in chunk:
        words_a = basic.tokenize(text_a)
        words_b = basic.tokenize(text_b) if text_b is not None else None
        pieces_a = wordpiece.tokenize_words(words_a)
        pieces_b = wordpiece.tokenize_words(words_b) if words_b is not None else None
        ids, mask, segments = bert_inputs(pieces_a, pieces_b, tokenizer, config.max_seq_length)
        teacher = [ofrecord.encode_feature("int32", v) for v in (ids, mask, segments)]
        tail = [ofrecord.encode_feature(label_dtype, [label]), ofrecord.encode_feature("int32", [1])]
        bert.append((ofrecord.frame(_record(BERT_FEATURES, teacher + tail)), sum(mask)))
        if lstm_vocab is not None:
            words = lstm_inputs(words_a, words_b, lstm_vocab, config.lstm_seq_length)
            student = [ofrecord.encode_feature("int32", v) for v in words]
            lstm.append((ofrecord.frame(_record(LSTM_FEATURES, student + tail + teacher)), sum(words[1])))
    return bert, lstm


BERT_FEATURES = ("input_ids", "input_mask", "segment_ids", "label_ids", "is_real_example")
LSTM_FEATURES = BERT_FEATURES + ("teacher_input_ids", "teacher_input_mask", "teacher_segment_ids")


def _record(names: Sequence[str], encoded_features: Sequence[bytes]) -> bytes:
    """An OFRecord from already-encoded Feature messages (each teacher view is encoded once)."""
    return ofrecord.encode_record_from_features(zip(names, encoded_features))


def _chunks(examples: List[Tuple[str, Optional[str], float]]) -> Iterator[List[Tuple[str, Optional[str], float]]]:
    for start in range(0, len(examples), CHUNK):
        yield examples[start:start + CHUNK]


class _Pool:
    """multiprocessing.Pool when it pays (big splits, several cores), else the same work in-process."""

    def __init__(self, workers: int, num_examples: int, initargs: tuple):
        self.pool = None
        if workers > 1 and num_examples > 4 * CHUNK:
            # spawn, not fork: the caller may have imported OneFlow, whose threads do not survive fork
            ctx = multiprocessing.get_context("spawn")
            self.pool = ctx.Pool(workers, initializer=_init_worker, initargs=initargs)
        else:
            _init_worker(*initargs)

    def imap(self, fn, chunks: Iterable):
        return self.pool.imap(fn, chunks) if self.pool is not None else map(fn, chunks)

    def __enter__(self) -> "_Pool":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# ---------------------------------------------------------------- splits and tasks


def _split_files(task: TaskSpec, glue_dir: Path) -> Dict[str, Path]:
    """The splits to convert: train/eval must exist; unlabeled test files are optional."""
    found = {}
    for split, spec in task.splits.items():
        path = glue_dir / task.folder / spec.file
        if path.is_file():
            found[split] = path
        elif split == "train_aug":
            continue  # only present after scripts/run_data_augmentation.sh
        elif split in REQUIRED_SPLITS or len(task.splits) == 1:
            required = [s.file for name, s in task.splits.items() if name in REQUIRED_SPLITS or len(task.splits) == 1]
            raise UsageError(f"{task.name}: missing {split} split: {path} does not exist "
                             f"({task.name} needs {', '.join(required)} in {glue_dir / task.folder}; "
                             "test files are optional)")
        else:
            log.warning("%s: no %s, skipping the %s split", task.name, path, split)
    return found


def _skip_list(split: str, config: ConvertConfig, skipped: Dict[str, List[str]]) -> Optional[List[str]]:
    """Where a split records the rows it skips; None (malformed rows are errors) for dev/test and --strict."""
    training = split.startswith("train")
    if (training and config.strict) or (not training and not config.skip_bad_eval_rows):
        return None
    return skipped.setdefault(split, [])


def _label_value(task: TaskSpec, example: Example) -> float:
    return 0 if example.label is None else task.label_id(example.label)


def _features_meta(names: Sequence[str], seq: int, label_dtype: str, teacher_seq: int = 0) -> Dict:
    shapes = {"input_ids": seq, "input_mask": seq, "segment_ids": seq, "label_ids": 1, "is_real_example": 1,
              "teacher_input_ids": teacher_seq, "teacher_input_mask": teacher_seq,
              "teacher_segment_ids": teacher_seq}
    return {n: {"dtype": label_dtype if n == "label_ids" else "int32", "shape": [shapes[n]]} for n in names}


def build_lstm_vocab(counts: Counter[str], size: int) -> List[str]:
    """The `size` most frequent training words (ties broken alphabetically), then <UNK>, <PAD>.

    original: re-sorted inside the per-example loop, so counts were overwritten by indices;
    ours: counts over the whole train set first. With a full vocabulary <UNK>=10000, <PAD>=10001.
    """
    words = sorted(counts, key=lambda w: (-counts[w], w))[:size]
    return words + [UNK, PAD]


def length_summary(lengths: Counter[int], seq_length: int) -> Dict:
    """meta.json's `lengths`: how many examples have each real length (tokens before the padding), and
    the share of the `seq_length` positions that are padding."""
    histogram = sorted(lengths.items())
    total = sum(lengths.values())
    if not total:
        return {"histogram": [], "mean": 0, "p90": 0, "max": 0, "padding_share": 0}
    real = sum(length * count for length, count in histogram)
    seen, p90 = 0, histogram[-1][0]
    for length, count in histogram:
        seen += count
        if seen * 10 >= total * 9:
            p90 = length
            break
    return {"histogram": [list(pair) for pair in histogram], "mean": round(real / total, 2), "p90": p90,
            "max": histogram[-1][0], "padding_share": round(1 - real / (total * seq_length), 4)}


class _SplitWriter:
    """Streams framed records into one split folder and writes its meta.json (with the length histogram)
    when closed."""

    def __init__(self, split_dir: Path, records_per_part: int, meta: Dict):
        split_dir.mkdir(parents=True)
        self.dir, self.meta = split_dir, meta
        self.parts = ofrecord.PartWriter(split_dir, records_per_part)
        self.lengths: Counter[int] = collections.Counter()

    def add(self, framed_record: bytes, length: int) -> None:
        self.parts.add(framed_record)
        self.lengths[length] += 1

    def close(self) -> int:
        counts = self.parts.close()
        paths = [self.dir / ofrecord.part_name(i) for i in range(len(counts))]
        self.meta["parts"] = [{"name": p.name, "records": n, "bytes": p.stat().st_size,
                               "sha256": file_sha256(p)} for p, n in zip(paths, counts)]
        self.meta["num_examples"] = sum(counts)
        self.meta["lengths"] = length_summary(self.lengths, self.meta["seq_length"])
        write_json_atomic(self.dir / ofrecord.META_FILE, self.meta)
        return self.meta["num_examples"]


def convert_task(task_name: str, config: ConvertConfig) -> Dict[str, Dict[str, float]]:
    """Convert every split of one task; returns {output folder: {split: example count}}, {"<folder>_padding":
    {split: share of the positions that are padding}}, plus
    {"<TASK>_skipped_rows": {split: count}} when malformed rows were skipped (each split's meta.json
    also records `skipped_rows` and where they were)."""
    task = get_task(task_name)
    vocab = load_vocab(str(config.vocab_file))
    for token in ("[CLS]", "[SEP]", "[UNK]"):
        if token not in vocab:
            raise UsageError(f"{config.vocab_file}: not a BERT vocabulary (no {token} token)")
    files = _split_files(task, config.glue_dir)
    skipped: Dict[str, List[str]] = {}
    examples = {split: [(e.text_a, e.text_b, _label_value(task, e))
                        for e in read_examples(task, split, config.glue_dir, _skip_list(split, config, skipped))]
                for split in files}
    label_dtype = "float32" if task.is_regression else "int32"
    with_lstm = config.lstm_seq_length > 0 and "train" in examples
    workers = config.workers or os.cpu_count() or 1
    config.output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{task.name}-", dir=config.output_dir))
    try:
        lstm_words = _lstm_vocab(examples["train"], config, workers, label_dtype) if with_lstm else None
        if lstm_words is not None:
            (staging / "lstm").mkdir()
            (staging / "lstm" / "vocab.txt").write_text("\n".join(lstm_words) + "\n", encoding="utf-8")
        lstm_vocab = {w: i for i, w in enumerate(lstm_words)} if lstm_words else None
        summary = _convert_splits(task, examples, files, config, staging, lstm_vocab, workers, label_dtype,
                                  len(vocab), skipped)
        replace_dir(staging / "bert", config.output_dir / task.name)
        if lstm_vocab is not None:
            replace_dir(staging / "lstm", config.output_dir / config.lstm_folder(task))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if any(skipped.values()):
        summary[f"{task.name}_skipped_rows"] = {split: len(rows) for split, rows in skipped.items() if rows}
    return summary


def _lstm_vocab(train: List, config: ConvertConfig, workers: int, label_dtype: str) -> List[str]:
    counts: Counter[str] = collections.Counter()
    with _Pool(workers, len(train), (config, None, label_dtype)) as pool:
        for chunk_counts in pool.imap(_count_words, _chunks(train)):
            counts.update(chunk_counts)
    return build_lstm_vocab(counts, config.lstm_vocab_size)


def _convert_splits(task: TaskSpec, examples: Dict[str, List], files: Dict[str, Path], config: ConvertConfig,
                    staging: Path, lstm_vocab: Optional[Dict[str, int]], workers: int,
                    label_dtype: str, vocab_size: int, skipped: Dict[str, List[str]]) -> Dict[str, Dict[str, float]]:
    bert_name, lstm_name = task.name, config.lstm_folder(task)
    summary: Dict[str, Dict[str, float]] = {bert_name: {}, **({lstm_name: {}} if lstm_vocab else {})}
    vocab_info = {"file": str(config.vocab_file.resolve()), "sha256": file_sha256(config.vocab_file),
                  "size": vocab_size, "do_lower_case": config.do_lower_case}
    for split, rows in examples.items():
        start = time.perf_counter()
        common = {"task": task.name, "split": split, "source": str(files[split]),
                  "labeled": task.splits[split].label is not None, "labels": task.labels,
                  "num_labels": task.num_labels, "metrics": list(task.metrics), "created_by": f"distil {__version__}",
                  "skipped_rows": len(skipped.get(split, [])), "skipped_row_locations": skipped.get(split, [])[:100]}
        writers = [_SplitWriter(staging / "bert" / split, config.records_per_part, {
            "format": "bert", **common, "seq_length": config.max_seq_length, "vocab": vocab_info,
            "features": _features_meta(BERT_FEATURES, config.max_seq_length, label_dtype)})]
        if lstm_vocab is not None:
            writers.append(_SplitWriter(staging / "lstm" / split, config.records_per_part, {
                "format": "lstm", **common, "seq_length": config.lstm_seq_length,
                "vocab": {"file": "../vocab.txt", "sha256": file_sha256(staging / "lstm" / "vocab.txt"),
                          "size": len(lstm_vocab), "unk_id": lstm_vocab[UNK], "pad_id": lstm_vocab[PAD],
                          "do_lower_case": config.do_lower_case},
                "teacher_seq_length": config.max_seq_length, "teacher_vocab": vocab_info,
                "features": _features_meta(LSTM_FEATURES, config.lstm_seq_length, label_dtype,
                                           config.max_seq_length)}))
        with _Pool(workers, len(rows), (config, lstm_vocab, label_dtype)) as pool:
            chunks = pool.imap(_encode_chunk, _chunks(rows))
            for outputs in tqdm(chunks, total=-(-len(rows) // CHUNK), desc=f"{task.name} {split}",
                                unit="chunk", leave=False, disable=None):
                for writer, records in zip(writers, outputs):
                    for record, length in records:
                        writer.add(record, length)
        for name, writer in zip((bert_name, lstm_name), writers):
            summary[name][split] = writer.close()
            lengths = writer.meta["lengths"]
            summary.setdefault(f"{name}_padding", {})[split] = lengths["padding_share"]
            bucketed = buckets.describe(lengths["histogram"], buckets.choose_boundaries(
                lengths["histogram"], writer.meta["seq_length"]))
            log.info("%s %s: %d examples in %.1f s; %.0f %% of the %d positions are padding (real length: mean "
                     "%.0f, p90 %d, max %d), %.0f %% in batches cut to length buckets %s", name, split, len(rows),
                     time.perf_counter() - start, 100 * lengths["padding_share"], writer.meta["seq_length"],
                     lengths["mean"], lengths["p90"], lengths["max"], 100 * bucketed["padding_share"],
                     "/".join(map(str, bucketed["lengths"])))
    return summary
