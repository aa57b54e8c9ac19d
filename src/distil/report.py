"""The results report: every model under some folders, side by side with the teacher (the original's results table).

Size, compression, inference throughput and speed-up are measured here, in one process on the
same dev split, so the speed-ups compare like with like; the task metric comes from a fresh
evaluation too and is checked against the model's results_eval.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from distil.errors import UsageError
from distil.fileio import write_json_atomic

log = logging.getLogger(__name__)

def find_model_dirs(paths: Sequence[Path]) -> List[Path]:
    """Trained task models (config.json with a task, and weights/) under `paths`, skipping training stages."""
    found = []
    for root in paths:
        if not root.exists():
            raise UsageError(f"{root} does not exist")
        for config in sorted([root / "config.json"] + list(root.rglob("*/config.json"))):
            folder = config.parent
            if not config.is_file() or folder.name.endswith("_stage") or not (folder / "weights").is_dir():
                continue
            if json.loads(config.read_text(encoding="utf-8")).get("task"):
                found.append(folder)
    if not found:
        raise UsageError(f"no trained model directories under {', '.join(map(str, paths))}")
    return found


def _architecture(config: Dict[str, Any]) -> Dict[str, Any]:
    model = config["model"]
    if model.get("model_type") == "bilstm":
        return {"layers": 1, "hidden": model["hidden_size"], "ffn": model["fc_size"]}
    return {"layers": model["num_hidden_layers"], "hidden": model["hidden_size"], "ffn": model["intermediate_size"]}


def measure(model_dir: Path, data_root: Path, batch_size: int, device: str) -> Dict[str, Any]:
    """One model's row before the teacher-relative columns: sizes and a fresh dev evaluation."""
    from distil.train.run import model_eval_dirs
    from distil.data.tasks import get_task
    from distil.models import io
    from distil.train.trainer import evaluate

    config = io.read_config(model_dir)
    task = get_task(config["task"]["name"])
    eval_dirs = model_eval_dirs(config, data_root)
    results = evaluate(io.load_model(model_dir), {"eval": eval_dirs["eval"]}, task.metrics, batch_size, device,
                       model_dir)
    metric = task.metrics[0]
    saved = model_dir / "results_eval.json"
    if saved.is_file() and abs(json.loads(saved.read_text())[metric] - results[metric]) > 1e-6:
        log.warning("%s: %s %.4f now, %.4f in results_eval.json", model_dir, metric, results[metric],
                    json.loads(saved.read_text())[metric])
    return {"model": model_dir.name, "algorithm": config["algorithm"]["name"], "task": task.name,
            **_architecture(config), "parameters": results["model"]["parameters"],
            "size_mb": results["model"]["size_on_disk_mb"], "examples_per_second": results["examples_per_second"],
            "metric": metric, "value": results[metric]}


def build_report(model_dirs: Sequence[Path], data_root: Path, batch_size: int = 32,
                 device: str = "cpu") -> List[Dict[str, Any]]:
    rows = [measure(d, data_root, batch_size, device) for d in model_dirs]
    teachers = [r for r in rows if r["algorithm"] == "teacher"]
    teacher: Optional[Dict[str, Any]] = teachers[0] if teachers else None
    for row in rows:
        if teacher is not None and row["task"] == teacher["task"]:
            row["compression"] = round(teacher["parameters"] / row["parameters"], 2)
            row["speedup"] = round(row["examples_per_second"] / teacher["examples_per_second"], 2)
            row["retained_percent"] = round(100 * row["value"] / teacher["value"], 1) if teacher["value"] else None
    order = ["teacher", "kd", "distilled_lstm", "bert_pkd", "tinybert", "theseus"]
    return sorted(rows, key=lambda r: (order.index(r["algorithm"]) if r["algorithm"] in order else 99, r["model"]))


def to_markdown(rows: List[Dict[str, Any]]) -> str:
    header = ["model", "algorithm", "layers", "hidden", "FFN", "parameters", "size (MB)", "compression",
              "examples/s", "speed-up", "metric", "retained"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["model"], r["algorithm"], r["layers"], r["hidden"], r["ffn"], f"{r['parameters']:,}",
                 f"{r['size_mb']:.2f}", _times(r.get("compression")), f"{r['examples_per_second']:.0f}",
                 _times(r.get("speedup")), f"{r['metric']} {r['value']:.4f}",
                 "" if r.get("retained_percent") is None else f"{r['retained_percent']:.1f} %"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _times(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}×"


def plot(rows: List[Dict[str, Any]], path: Path) -> None:
    """Metric against speed-up, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        x = r.get("speedup") or 1.0
        ax.scatter(x, r["value"], s=40)
        ax.annotate(r["algorithm"], (x, r["value"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("inference speed-up over the teacher (×)")
    ax.set_ylabel(rows[0]["metric"])
    ax.set_title(f"{rows[0]['task']}: students vs teacher")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_report(rows: List[Dict[str, Any]], output: Path) -> Dict[str, str]:
    """<output>.md, <output>.json and <output>.png, each written atomically."""
    output.parent.mkdir(parents=True, exist_ok=True)
    markdown = output.with_suffix(".md")
    tmp = markdown.with_name(f".{markdown.name}.tmp")
    tmp.write_text(to_markdown(rows), encoding="utf-8")
    tmp.replace(markdown)
    write_json_atomic(output.with_suffix(".json"), rows)
    plot(rows, output.with_suffix(".png"))
    return {"markdown": str(markdown), "json": str(output.with_suffix(".json")), "chart": str(output.with_suffix(".png"))}
