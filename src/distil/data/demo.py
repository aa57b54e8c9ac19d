"""The demo task: a synthetic sentiment task in SST-2's format where negation and word order matter.

A sentence's label is its main clause's sentiment: "not"/"never" directly before the adjective
(or its intensifier) flips it, and in "A , but B" or "although A , B" the clause B decides,
so neither a bag of words nor one keyword solves it; 10 % of labels are flipped, as annotators
err, so no model reaches 100 %. Generated deterministically from a seed,
with the WordPiece vocabulary it needs (a few words exist only as pieces, e.g. un ##bear ##able).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Tuple

from distil.fileio import write_json_atomic

SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the soundtrack", "the director", "the cast",
            "the ending", "the story", "the script", "the dialogue", "the camera work"]
VERBS = ["was", "is", "seemed", "felt", "looked"]
INTENSIFIERS = ["really", "very", "quite", "truly", "rather", "so"]
POSITIVE = ["good", "great", "wonderful", "excellent", "brilliant", "charming", "moving", "delightful", "superb",
            "enjoyable", "heartwarming", "masterful"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "tedious", "weak", "clumsy", "painful", "forgettable",
            "unbearable", "overrated"]
NEGATORS = ["not", "never"]
FILLERS = ["honestly", "overall", "to me", "in the end", "at times", "frankly"]
# words the vocabulary holds only as word pieces, so the tokenizer's ## continuation is exercised
PIECES = {"heartwarming": ["heart", "##warm", "##ing"], "masterful": ["master", "##ful"],
          "unbearable": ["un", "##bear", "##able"], "overrated": ["over", "##rated"]}
LABEL_NOISE = 0.1
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "!", "'"]


def _clause(rng: random.Random) -> Tuple[str, int]:
    """One '<subject> <verb> [not] [intensifier] <adjective>' clause and its sentiment (1 positive)."""
    positive = rng.random() < 0.5
    words = [rng.choice(SUBJECTS), rng.choice(VERBS)]
    negated = rng.random() < 0.4
    if negated:
        words.append(rng.choice(NEGATORS))
    if rng.random() < 0.5:
        words.append(rng.choice(INTENSIFIERS))
    words.append(rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words), int(positive != negated)


def make_example(rng: random.Random) -> Tuple[str, int]:
    """A sentence and its label; the main (last) clause decides."""
    first, label = _clause(rng)
    kind = rng.random()
    if kind < 0.35:
        sentence = first
    else:
        second, label = _clause(rng)
        sentence = f"{first} , but {second}" if kind < 0.75 else f"although {first} , {second}"
    if rng.random() < 0.3:
        sentence = f"{rng.choice(FILLERS)} , {sentence}"
    if rng.random() < LABEL_NOISE:
        label = 1 - label
    return sentence + rng.choice([" .", " !", ""]), label


def build_vocab() -> List[str]:
    words = {w for phrase in SUBJECTS + VERBS + INTENSIFIERS + POSITIVE + NEGATIVE + NEGATORS + FILLERS
             for w in phrase.split()} | {"but", "although"}
    whole = sorted(w for w in words if w not in PIECES)
    pieces = sorted({p for parts in PIECES.values() for p in parts})
    return SPECIAL + whole + pieces


def write_demo_task(root: Path, train: int = 3000, dev: int = 600, seed: int = 13) -> Dict[str, object]:
    """Write <root>/glue_data/SST-2/{train,dev}.tsv and <root>/vocab.txt unless they already exist."""
    folder = root / "glue_data" / "SST-2"
    vocab = root / "vocab.txt"
    if (folder / "dev.tsv").is_file() and vocab.is_file():
        return {"glue_dir": str(root / "glue_data"), "vocab_file": str(vocab), "reused": True}
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for name, count in (("train.tsv", train), ("dev.tsv", dev)):
        rows = [make_example(rng) for _ in range(count)]
        tmp = folder / f".{name}.tmp"
        tmp.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows), encoding="utf-8")
        tmp.replace(folder / name)
    tmp = root / ".vocab.txt.tmp"
    tmp.write_text("\n".join(build_vocab()) + "\n", encoding="utf-8")
    tmp.replace(vocab)
    summary = {"glue_dir": str(root / "glue_data"), "vocab_file": str(vocab), "train": train, "eval": dev,
               "seed": seed, "reused": False}
    write_json_atomic(root / "demo_task.json", summary)
    return summary
