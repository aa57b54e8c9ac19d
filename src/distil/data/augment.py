"""TinyBERT data augmentation (Jiao et al. 2019): more training sentences by word substitution.

A port of the original platform's examples/tinybert/data_augmentation.py (itself TinyBERT's official
script). For each sentence, every basic token that is a plain lower-case word ([a-z]+) and not an NLTK
English stop word gets candidate replacements:
  * a single WordPiece: the masked LM's top-M tokens at that position, from
    `[CLS] <sentence, the word as [MASK]> [SEP] <sentence> [SEP]` (segments 0, 1), minus "##" pieces;
  * several WordPieces: its top-M GloVe cosine neighbours (none if GloVe lacks the word);
  * no candidate at all: the word itself.
Then N draws: at every candidate position, pick a random candidate and substitute it with probability
p; a result not seen yet becomes a new sentence (space-joined basic tokens).

Output: `<glue_dir>/<TASK>/train_aug.tsv` with train.tsv's header and columns: every training row
first as it is, then its variants, one text column changed per row (pair tasks: each text column
augmented on its own).

Deviations from the original, on purpose:
  * a variant equal to the (basic-tokenized) original is not written again, so p=0 gives exactly
    the training set; the original wrote it once more as lower-cased tokens;
  * pair tasks: the original row is written once, not once per text column, and the second
    column's variants keep the first column's original text (the original script left the first
    column at its last variant, by mutating the row);
  * rows are written as plain tab-separated text (the original's csv.writer quoted fields with '"',
    which GLUE readers, ours included, would keep as part of the text);
  * `--N` is honoured (the original replaced it with the per-task default); seeded and
    deterministic: every (row, column) draws from its own RNG seeded by (seed, line, column);
  * predicted special tokens ([UNK], [SEP], [unused0], ...) are dropped like "##" pieces;
  * the MLM runs batched (all masked positions of many sentences per call) and only the [MASK]
    position goes through the vocabulary projection.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from distil.data.tasks import TaskSpec, column_index, get_task, tsv_rows
from distil.data.tokenization import FullTokenizer
from distil.errors import UsageError

log = logging.getLogger("distil.augment")

# NLTK's English stop words, as listed in the original script (those with an apostrophe never pass
# the [a-z]+ test, kept for fidelity).
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him
his himself she she's her hers herself it it's its itself they them their theirs themselves this that that'll
these those am is are was were be been being have has had having do does did doing a an the and but if or
because as until while of at by for with about against between into through during before after above below
to from up down in out on off over under again further then once here there all any both each few more most
other some such no nor not only own same so than too very s t can will just don don't should should've now d
ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't
isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren
weren't won won't wouldn wouldn't 's 're
""".split())

# N (draws per sentence) of the original script, per task; other tasks default to 30 (its --N default).
DEFAULT_N = {"CoLA": 30, "MNLI": 10, "MRPC": 30, "SST-2": 20, "STS-B": 30, "QQP": 10, "QNLI": 20, "RTE": 30}
FALLBACK_N = 30
DEFAULT_M, DEFAULT_P = 15, 0.4
GLOVE_WORDS = 100_000          # the original reads only the first 100,000 GloVe lines
MAX_SEQ_LENGTH = 512
_WORD = re.compile("[a-z]+")


def is_replaceable(word: str) -> bool:
    """A basic token that may be replaced: only the letters a-z, and not a stop word."""
    return _WORD.fullmatch(word) is not None and word not in STOP_WORDS


def top_k(scores: np.ndarray, k: int) -> List[List[int]]:
    """Per row of `scores` (B, V): the indices of the k largest, best first (ties: lower index first).

    Exact and ~6x faster than an argpartition over a 30k vocabulary: the k-th largest of every 16th
    entry is a lower bound of the row's k-th largest, so only entries above it need sorting.
    """
    k = min(k, scores.shape[1])
    if k <= 0:
        return [[] for _ in scores]
    sample = scores[:, ::16] if scores.shape[1] >= 16 * k else scores
    bounds = np.partition(sample, -k, axis=1)[:, -k]
    result = []
    for row, bound in zip(scores, bounds):
        index = np.flatnonzero(row >= bound)
        result.append(index[np.lexsort((index, -row[index]))][:k].tolist())
    return result


# ---------------------------------------------------------------- GloVe neighbours


def _trailing_numbers(fields: List[str]) -> int:
    """How many of `fields` at the end are numbers (the vector size of a GloVe line, its word excluded)."""
    count = 0
    for field in reversed(fields):
        try:
            float(field)
        except ValueError:
            break
        count += 1
    return count


class GloveIndex:
    """L2-normalised GloVe vectors and their nearest neighbours by cosine similarity."""

    def __init__(self, words: List[str], vectors: np.ndarray):
        norms = np.linalg.norm(vectors, axis=1)
        self.valid = norms > 0                       # all-zero rows (e.g. "<unk>") are nobody's neighbour
        self._invalid = np.flatnonzero(~self.valid)
        self.vectors = (vectors / np.where(self.valid, norms, 1.0)[:, None]).astype(np.float32)
        self.words = words
        self.index: Dict[str, int] = {}
        for i, word in enumerate(words):
            self.index.setdefault(word, i)
        self._cache: Dict[Tuple[str, int], List[str]] = {}

    @classmethod
    def load(cls, path: Path, limit: int = GLOVE_WORDS) -> "GloveIndex":
        """The first `limit` lines of a GloVe text file ("word v1 v2 ..."; a word may contain spaces)."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"GloVe file {path} does not exist (--glove_embs / GLOVE_EMB; e.g. glove.840B.300d.txt "
                             "from https://nlp.stanford.edu/projects/glove/)")
        words: List[str] = []
        numbers: List[str] = []
        dim = None
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if len(words) >= limit:
                    break
                line = line.rstrip()
                if not line:
                    continue
                if dim is None:
                    dim = _trailing_numbers(line.split(" ")[1:])
                    if dim < 1:
                        raise UsageError(f"{path}:{number}: not a GloVe line (expected 'word v1 v2 ...')")
                parts = line.rsplit(" ", dim)
                if len(parts) != dim + 1:
                    raise UsageError(f"{path}:{number}: expected a word and {dim} numbers, found {len(parts) - 1}")
                words.append(parts[0])
                numbers.append(line[len(parts[0]) + 1:])
        if not words:
            raise UsageError(f"GloVe file {path} is empty")
        try:
            vectors = np.loadtxt(numbers, dtype=np.float32, ndmin=2)
        except ValueError as e:
            raise UsageError(f"{path}: not a GloVe text file ({e})") from None
        return cls(words, vectors)

    def neighbours(self, word: str, m: int) -> List[str]:
        """The `m` words closest to `word` (itself excluded), best first; [] if GloVe lacks it."""
        key = (word, m)
        if key not in self._cache:
            row = self.index.get(word)
            if row is None:
                self._cache[key] = []
            else:
                scores = self.vectors @ self.vectors[row]
                scores[self._invalid] = -np.inf
                scores[row] = -np.inf
                k = min(m, int(self.valid.sum()) - int(self.valid[row]))
                top = top_k(scores[None, :], k)[0] if k > 0 else []
                self._cache[key] = [self.words[i] for i in top]
        return self._cache[key]


# ---------------------------------------------------------------- the masked language model


_SHORT = 128  # sequences up to this length are batched by count alone


class MaskedLMPredictor:
    """Top-M tokens at the [MASK] of many sequences, in padded batches of up to `batch_size`."""

    def __init__(self, model, batch_size: int = 64, device: str = "cpu", pad_id: int = 0):
        from distil.runtime import import_oneflow

        self.flow = import_oneflow()
        from distil.train.placement import Placement

        self.placement = Placement(device)
        self.model = self.placement.module(model).eval()
        self.batch_size, self.device, self.pad_id = batch_size, self.placement.device, pad_id
        self.calls = self.sequences = 0

    def _batches(self, sequences: Sequence[Tuple[List[int], List[int], int]]) -> Iterator[List[int]]:
        """Indices sorted by length, in batches of at most batch_size sequences of up to 128 tokens.

        Longer sequences come in smaller batches, keeping batch x length^2 (the attention scores, which
        BertModel keeps for every layer) at most batch_size x 128^2: 512 tokens go 4 to a batch at 64.
        """
        batch: List[int] = []
        cells = self.batch_size * _SHORT * _SHORT
        for i in sorted(range(len(sequences)), key=lambda i: len(sequences[i][0])):
            length = max(len(sequences[i][0]), _SHORT)
            if batch and (len(batch) >= self.batch_size or (len(batch) + 1) * length * length > cells):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def top_ids(self, sequences: Sequence[Tuple[List[int], List[int], int]], m: int) -> List[List[int]]:
        """For each (token ids, segment ids, mask position): the `m` most likely token ids, best first."""
        flow = self.flow
        result: List[List[int]] = [[] for _ in sequences]
        for batch in self._batches(sequences):
            width = max(len(sequences[i][0]) for i in batch)
            ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
            segments = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            positions = np.empty(len(batch), dtype=np.int64)
            for row, i in enumerate(batch):
                token_ids, segment_ids, position = sequences[i]
                ids[row, :len(token_ids)] = token_ids
                segments[row, :len(segment_ids)] = segment_ids
                mask[row, :len(token_ids)] = 1
                positions[row] = position
            with flow.no_grad():
                logits = self.model.logits_at(*(flow.tensor(a, device=self.device)
                                                for a in (ids, segments, mask, positions))).numpy()
            self.calls += 1
            self.sequences += len(batch)
            for i, top in zip(batch, top_k(logits, m)):
                result[i] = top
        return result


# ---------------------------------------------------------------- the augmentor


def _skip_prediction(token: str) -> bool:
    """A predicted token that cannot stand for a word: a "##" continuation (the original's filter) or,
    beyond the original, a special token such as [UNK], [SEP] or [unused0]."""
    return token.startswith("##") or (token.startswith("[") and token.endswith("]") and len(token) > 2)


class Augmentor:
    """Candidate words per sentence (MLM or GloVe) and the N random variants of a sentence."""

    def __init__(self, predictor: MaskedLMPredictor, tokenizer: FullTokenizer, glove: GloveIndex,
                 M: int = DEFAULT_M, N: int = 20, p: float = DEFAULT_P, max_seq_length: int = MAX_SEQ_LENGTH,
                 cache_size: int = 50_000):
        self.predictor, self.tokenizer, self.glove = predictor, tokenizer, glove
        self.M, self.N, self.p, self.max_seq_length = M, N, p, max_seq_length
        missing = [t for t in ("[CLS]", "[SEP]", "[MASK]", "[UNK]") if t not in tokenizer.vocab]
        if missing:
            raise UsageError(f"the vocabulary has no {', '.join(missing)}")
        self.cls_id, self.sep_id, self.mask_id = (tokenizer.vocab[t] for t in ("[CLS]", "[SEP]", "[MASK]"))
        self._cache: "collections.OrderedDict[str, Dict[int, List[str]]]" = collections.OrderedDict()
        self.cache_size = cache_size

    def words(self, sentence: str) -> List[str]:
        return self.tokenizer.basic_tokenizer.tokenize(sentence)

    def candidates(self, sentences: Sequence[str]) -> List[Dict[int, List[str]]]:
        """For each sentence: {basic-token index: candidate words} of its replaceable words, in order."""
        out: List[Optional[Dict[int, List[str]]]] = [None] * len(sentences)
        jobs: List[Tuple[List[int], List[int], int]] = []
        owners: List[Tuple[int, int]] = []            # (sentence index, word index) of each MLM job
        todo: Dict[str, List[int]] = {}
        for s, sentence in enumerate(sentences):
            if sentence in self._cache:
                self._cache.move_to_end(sentence)
                out[s] = self._cache[sentence]
            elif sentence in todo:
                todo[sentence].append(s)
            else:
                todo[sentence] = [s]
        for sentence, where in todo.items():
            words = self.words(sentence)
            pieces = [self.tokenizer.wordpiece_tokenizer.tokenize_words([w]) for w in words]
            flat = [p for ps in pieces for p in ps]
            ids = self.tokenizer.convert_tokens_to_ids(flat)
            found: Dict[int, List[str]] = {}
            start = 0
            for w, word in enumerate(words):
                if is_replaceable(word):
                    if len(pieces[w]) == 1:
                        found[w] = []               # filled from the MLM below
                        position = start + 1        # after [CLS]
                        if position < self.max_seq_length:   # else truncated away: no MLM
                            first = [self.cls_id] + ids[:start] + [self.mask_id] + ids[start + 1:] + [self.sep_id]
                            second = ids + [self.sep_id]
                            tokens = (first + second)[:self.max_seq_length]
                            segments = ([0] * len(first) + [1] * len(second))[:self.max_seq_length]
                            jobs.append((tokens, segments, position))
                            owners.append((where[0], w))
                    else:
                        found[w] = list(self.glove.neighbours(word, self.M))
                start += len(pieces[w])
            for s in where:
                out[s] = found
        if jobs:
            inv = self.tokenizer.inv_vocab
            for (s, w), top in zip(owners, self.predictor.top_ids(jobs, self.M)):
                out[s][w].extend(t for t in (inv[i] for i in top) if not _skip_prediction(t))
        for sentence, where in todo.items():
            found = out[where[0]]
            words = None
            for w, cands in found.items():
                if not cands:                       # nothing found: the word itself
                    words = words or self.words(sentence)
                    cands.append(words[w])
            self._cache[sentence] = found
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out  # type: ignore[return-value]

    def variants(self, sentence: str, candidates: Dict[int, List[str]], rng: random.Random) -> List[str]:
        """The original sentence, then up to N new ones (space-joined basic tokens), without repeats."""
        words = self.words(sentence)
        seen = {" ".join(words)}
        result = [sentence]
        for _ in range(self.N):
            new = list(words)
            for w, cands in candidates.items():
                choice = rng.choice(cands)
                if rng.random() < self.p:
                    new[w] = choice
            text = " ".join(new)
            if text not in seen:
                seen.add(text)
                result.append(text)
        return result

    def augment(self, sentence: str, rng: random.Random) -> List[str]:
        return self.variants(sentence, self.candidates([sentence])[0], rng)


# ---------------------------------------------------------------- a task's train.tsv


def augment_file(augmentor: Augmentor, task: TaskSpec, train_file: Path, output: Path, seed: int = 0,
                 chunk_rows: int = 256, log_every: int = 1000) -> Dict:
    """Write train_file's rows and their variants to `output` (via a temporary name); return counts."""
    spec = task.splits["train"]
    started = time.time()
    with open(train_file, "rb") as f:
        bom = f.read(3) == b"\xef\xbb\xbf"
    rows = tsv_rows(train_file)
    header = next(rows, (1, None))[1] if spec.header else None
    columns = [column_index(c, header, train_file) for c in (spec.text_a, spec.text_b) if c is not None]
    width = len(header) if header is not None else None
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    rows_in = rows_out = 0
    try:
        with open(tmp, "w", encoding="utf-8-sig" if bom else "utf-8", newline="\n") as out:
            if header is not None:
                out.write("\t".join(header) + "\n")
            chunk: List[Tuple[int, List[str]]] = []

            def flush() -> int:
                written = 0
                texts = [fields[c] for _, fields in chunk for c in columns]
                found = iter(augmentor.candidates(texts))
                for number, fields in chunk:
                    out.write("\t".join(fields) + "\n")
                    written += 1
                    for c in columns:
                        rng = random.Random(f"{seed}/{number}/{c}")
                        for text in augmentor.variants(fields[c], next(found), rng)[1:]:
                            out.write("\t".join(fields[:c] + [text] + fields[c + 1:]) + "\n")
                            written += 1
                chunk.clear()
                return written

            for number, fields in rows:
                if width is None:
                    width = len(fields)
                if len(fields) != width or max(columns) >= width:
                    raise UsageError(f"{train_file}:{number}: expected {width} tab-separated columns, found "
                                     f"{len(fields)}")
                chunk.append((number, fields))
                rows_in += 1
                if len(chunk) >= chunk_rows:
                    rows_out += flush()
                if log_every and rows_in % log_every == 0:
                    elapsed = time.time() - started
                    log.info("%d rows -> %d (%.1f rows/s)", rows_in, rows_out, rows_in / max(elapsed, 1e-9))
            rows_out += flush()
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"rows_in": rows_in, "rows_out": rows_out}


# ---------------------------------------------------------------- the command


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """One augmentation run (`python -m distil augment`, scripts/run_data_augmentation.sh), checked on creation."""

    pretrained_model: Path        # HF BERT folder with its masked-LM head
    glove_embs: Path
    glue_dir: Path
    task_name: str
    N: Optional[int] = None       # draws per sentence; None: the original's per-task value
    M: int = DEFAULT_M
    p: float = DEFAULT_P
    seed: int = 42
    output: Optional[Path] = None  # None: <glue_dir>/<TASK>/train_aug.tsv
    max_seq_length: int = MAX_SEQ_LENGTH
    batch_size: int = 64
    glove_words: int = GLOVE_WORDS
    device: Optional[str] = None

    def __post_init__(self) -> None:
        if self.M < 1 or (self.N is not None and self.N < 0) or not 0.0 <= self.p <= 1.0 or self.batch_size < 1 \
                or self.glove_words < 1:
            raise UsageError("need --M >= 1, --N >= 0, 0 <= --p <= 1, --batch_size >= 1, --glove_words >= 1")
        if self.max_seq_length < 4:
            raise UsageError(f"--max_seq_length {self.max_seq_length} is too small")


def run(config: AugmentConfig) -> Dict:
    """Augment a task's train.tsv; returns counts and timings."""
    started = time.time()
    task = get_task(config.task_name)
    if "train" not in task.splits:
        raise UsageError(f"{task.name} has no train split")
    n = config.N if config.N is not None else DEFAULT_N.get(task.name, FALLBACK_N)
    train_file = Path(config.glue_dir) / task.folder / task.splits["train"].file
    if not train_file.is_file():
        raise UsageError(f"{task.name}: missing training file {train_file}")
    if not Path(config.glove_embs).is_file():
        raise UsageError(f"GloVe file {config.glove_embs} does not exist (--glove_embs / GLOVE_EMB)")
    model_dir = Path(config.pretrained_model)
    if not model_dir.is_dir():
        raise UsageError(f"pretrained model folder {model_dir} does not exist (--pretrained_model / PRETRAINED_MODEL)")
    vocab_file = model_dir / "vocab.txt"
    if not vocab_file.is_file():
        raise UsageError(f"{model_dir}: no vocab.txt")
    output = Path(config.output) if config.output else train_file.with_name("train_aug.tsv")
    if output.resolve() == train_file.resolve():
        raise UsageError(f"--output {output} would overwrite the training file")

    from distil.models.mlm import load_mlm
    model = load_mlm(model_dir)
    tokenizer = FullTokenizer(vocab_file, do_lower_case=True)
    if len(tokenizer.vocab) > model.config.vocab_size:
        raise UsageError(f"{vocab_file} has {len(tokenizer.vocab)} tokens but the model only "
                         f"{model.config.vocab_size}")
    loaded = time.time()
    glove = GloveIndex.load(config.glove_embs, config.glove_words)
    log.info("model and vocabulary loaded in %.1f s, %d GloVe vectors in %.1f s", loaded - started,
             len(glove.words), time.time() - loaded)
    predictor = MaskedLMPredictor(model, config.batch_size, config.device or "auto", tokenizer.vocab.get("[PAD]", 0))
    max_len = min(config.max_seq_length, model.config.max_position_embeddings)
    augmentor = Augmentor(predictor, tokenizer, glove, M=config.M, N=n, p=config.p, max_seq_length=max_len)
    counts = augment_file(augmentor, task, train_file, output, seed=config.seed)
    return {"task": task.name, "input": str(train_file), "output": str(output), **counts,
            "N": n, "M": config.M, "p": config.p, "seed": config.seed, "mlm_sequences": predictor.sequences,
            "mlm_calls": predictor.calls, "seconds": round(time.time() - started, 2)}
