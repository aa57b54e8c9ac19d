"""Length buckets against full-length batches, side by side in one process (issue 23, first part: evaluation).

A BERT (default 4L-312, random weights, a 2-label head) evaluates the demo's SST-2-shaped dev split (its
sentences are short, as GLUE's are) with `--length_buckets off` and `auto`, alternating, `--repeats` passes
each; prints the seconds of every pass and the median ratio as one JSON object. The first pass of each mode
includes its graph compilations (one per bucket with `auto`).

Usage: PYTHONPATH=src .venv/bin/python bench/bench_buckets.py [--seq 128] [--dev 600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from distil.data.convert import ConvertConfig, convert_task  # noqa: E402
from distil.data.demo import write_demo_task  # noqa: E402
from distil.data.tokenization import load_vocab  # noqa: E402
from distil.models import io  # noqa: E402
from distil.models.bert import BertConfig  # noqa: E402
from distil.train.graph import Evaluator  # noqa: E402
from distil.train.placement import Placement  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dev", type=int, default=600, help="dev examples")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=312)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_buckets_") as tmp:
        work = Path(tmp)
        demo = write_demo_task(work / "demo", train=args.batch, dev=args.dev)
        convert_task("SST-2", ConvertConfig(work / "demo" / "glue_data", work / "data", Path(demo["vocab_file"]),
                                            max_seq_length=args.seq, lstm_seq_length=0, workers=1))
        config = {**BertConfig(vocab_size=len(load_vocab(demo["vocab_file"])), hidden_size=args.hidden,
                               num_hidden_layers=args.layers, num_attention_heads=12,
                               intermediate_size=4 * args.hidden).to_dict(), "num_labels": 2}
        model = io.build_model(config)
        split = work / "data" / "SST-2" / "eval"
        evaluators = {mode: Evaluator(model, split, ("accuracy",), args.batch, Placement("cpu"), mode)
                      for mode in ("off", "auto")}
        seconds: Dict[str, List[float]] = {mode: [] for mode in evaluators}
        for _ in range(args.repeats):
            for mode, evaluator in evaluators.items():
                start = time.perf_counter()
                evaluator.run()
                seconds[mode].append(round(time.perf_counter() - start, 3))
        passes = evaluators["auto"].passes
        print(json.dumps({"benchmark": "bench/bench_buckets.py", "flags": vars(args), "seconds_per_pass": seconds,
                          "buckets": passes.buckets, "graphs": sorted(passes.cut_graphs or {}),
                          "speedup_median": round(statistics.median(seconds["off"]) /
                                                  statistics.median(seconds["auto"]), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
