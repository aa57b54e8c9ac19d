"""How fast is GLUE -> OFRecord conversion? An SST-2-sized task (67,349 train sentences) end to end.

Builds a synthetic GLUE-shaped SST-2 folder (sentences drawn from the vocabulary's whole words,
lengths like SST-2's), then times `convert_task` (BERT seq 128 + the LSTM variant) with one
worker process and with one per core. Prints one JSON object; nothing here is asserted.
Usage: PYTHONPATH=src python bench/bench_convert.py [--train 67349] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from distil.data.convert import DEFAULT_VOCAB, ConvertConfig, convert_task


def write_sst2(root: Path, n_train: int, n_dev: int, n_test: int, seed: int = 0) -> None:
    words = [
        w
        for w in DEFAULT_VOCAB.read_text(encoding="utf-8").split("\n")[1000:]
        if w.isalpha() and not w.startswith("##")
    ]
    rng = random.Random(seed)
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev), ("test.tsv", n_test)):
        sentences = [" ".join(rng.choices(words, k=max(1, int(rng.gammavariate(2.0, 5.0))))) for _ in range(n)]
        lines = (
            ["index\tsentence"] + [f"{i}\t{s}" for i, s in enumerate(sentences)]
            if name == "test.tsv"
            else ["sentence\tlabel"] + [f"{s} \t{rng.randint(0, 1)}" for s in sentences]
        )
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=67349)
    parser.add_argument("--dev", type=int, default=872)
    parser.add_argument("--test", type=int, default=1821)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {
        "question": "GLUE -> OFRecord conversion time, SST-2 sized (BERT 128 + LSTM 32)",
        "examples": {"train": args.train, "eval": args.dev, "test": args.test},
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        write_sst2(Path(tmp) / "glue", args.train, args.dev, args.test)
        for workers in sorted({1, os.cpu_count() or 1}):
            config = ConvertConfig(Path(tmp) / "glue", Path(tmp) / "out", DEFAULT_VOCAB, workers=workers)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                convert_task("SST-2", config)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            results[f"workers_{workers}"] = {
                "median_seconds": round(seconds, 2),
                "examples_per_second": round((args.train + args.dev + args.test) / seconds),
                "runs": [round(t, 2) for t in times],
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
