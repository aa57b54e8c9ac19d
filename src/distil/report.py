"""The results report: every model under some folders, side by side with the teacher (the original's results table).

Size, compression, inference throughput and speed-up are measured here, in one process on the
same dev split, so the speed-ups compare like with like; the task metric comes from a fresh
evaluation too and is checked against the model's results_eval.json.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distil.errors import UsageError
from distil.fileio import write_json_atomic

log = logging.getLogger(__name__)


def find_model_dirs(paths: Sequence[Path]) -> list[Path]:
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


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    model = config["model"]
    if model.get("model_type") == "bilstm":
        return {"layers": 1, "hidden": model["hidden_size"], "ffn": model["fc_size"]}
    return {"layers": model["num_hidden_layers"], "hidden": model["hidden_size"], "ffn": model["intermediate_size"]}


TIMED_PASSES = 3


def measure(
    model_dir: Path,
    data_root: Path,
    batch_size: int,
    device: str,
    length_buckets: str = "auto",
    passes: int = TIMED_PASSES,
) -> dict[str, Any]:
    """One model's row before the teacher-relative columns: sizes, a fresh dev evaluation (which also warms
    up), then the median throughput of `passes` more passes, as the benchmarks time (one pass of a busy
    machine once made a student look 3x slower than it is)."""
    from distil.data.dataset import open_split
    from distil.data.tasks import get_task
    from distil.models import io
    from distil.train.graph import Evaluator
    from distil.train.placement import Placement
    from distil.train.run import model_eval_dirs
    from distil.train.trainer import model_size

    config = io.read_config(model_dir)
    task = get_task(config["task"]["name"])
    split = open_split(model_eval_dirs(config, data_root)["eval"])
    model, placement = io.load_model(model_dir), Placement(device)
    evaluator = Evaluator(model, split, task.metrics, batch_size, placement, length_buckets)
    values, _, _ = evaluator.run()
    speeds = [evaluator.run()[2]["examples_per_second"] for _ in range(passes)]
    size = model_size(model, model_dir)
    del evaluator
    placement.release()
    metric = task.metrics[0]
    saved = model_dir / "results_eval.json"
    if saved.is_file() and abs(json.loads(saved.read_text())[metric] - values[metric]) > 1e-6:
        log.warning(
            "%s: %s %.4f now, %.4f in results_eval.json",
            model_dir,
            metric,
            values[metric],
            json.loads(saved.read_text())[metric],
        )
    return {
        "model": model_dir.name,
        "algorithm": config["algorithm"]["name"],
        "task": task.name,
        **_architecture(config),
        "parameters": size["parameters"],
        "size_mb": size["size_on_disk_mb"],
        "examples_per_second": round(statistics.median(speeds), 1),
        "timed_passes": passes,
        "metric": metric,
        "value": values[metric],
    }


def build_report(
    model_dirs: Sequence[Path], data_root: Path, batch_size: int = 32, device: str = "cpu", length_buckets: str = "auto"
) -> list[dict[str, Any]]:
    rows = [measure(d, data_root, batch_size, device, length_buckets) for d in model_dirs]
    teachers = [r for r in rows if r["algorithm"] == "teacher"]
    teacher: dict[str, Any] | None = teachers[0] if teachers else None
    for row in rows:
        if teacher is not None and row["task"] == teacher["task"]:
            row["compression"] = round(teacher["parameters"] / row["parameters"], 2)
            row["speedup"] = round(row["examples_per_second"] / teacher["examples_per_second"], 2)
            row["retained_percent"] = round(100 * row["value"] / teacher["value"], 1) if teacher["value"] else None
    order = ["teacher", "kd", "distilled_lstm", "bert_pkd", "tinybert", "theseus"]
    return sorted(rows, key=lambda r: (order.index(r["algorithm"]) if r["algorithm"] in order else 99, r["model"]))


def to_markdown(rows: list[dict[str, Any]]) -> str:
    header = [
        "model",
        "algorithm",
        "layers",
        "hidden",
        "FFN",
        "parameters",
        "size (MB)",
        "compression",
        "examples/s",
        "speed-up",
        "metric",
        "retained",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["model"],
            r["algorithm"],
            r["layers"],
            r["hidden"],
            r["ffn"],
            f"{r['parameters']:,}",
            f"{r['size_mb']:.2f}",
            _times(r.get("compression")),
            f"{r['examples_per_second']:.0f}",
            _times(r.get("speedup")),
            f"{r['metric']} {r['value']:.4f}",
            "" if r.get("retained_percent") is None else f"{r['retained_percent']:.1f} %",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


LABEL_OFFSETS = [(5, 4), (5, -12), (-8, 4), (-8, -12), (5, 16), (-8, 16), (5, -24), (-8, -24)]  # points


def place_labels(ax, points: Sequence[tuple[float, float]], labels: Sequence[str]) -> list:
    """Annotate each point with its label at the first offset where the label's box stays inside the axes and
    overlaps no label placed before it (two models with the same speed-up and metric must both stay
    readable): LABEL_OFFSETS around the point, then higher and higher above it."""
    ax.figure.canvas.draw()  # the axes' limits are final only once drawn
    renderer = ax.figure.canvas.get_renderer()
    offsets = LABEL_OFFSETS + [(5, 28 + 12 * k) for k in range(len(labels))]
    placed, boxes = [], []
    for (x, y), label in zip(points, labels):
        for dx, dy in offsets:
            note = ax.annotate(
                label,
                (x, y),
                textcoords="offset points",
                xytext=(dx, dy),
                fontsize=8,
                ha="left" if dx >= 0 else "right",
            )
            box = note.get_window_extent(renderer)
            inside = ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)
            if (inside and not any(box.overlaps(other) for other in boxes)) or (dx, dy) == offsets[-1]:
                break
            note.remove()
        placed.append(note)
        boxes.append(box)
    return placed


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Metric against speed-up, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points = [(r.get("speedup") or 1.0, r["value"]) for r in rows]
    for x, y in points:
        ax.scatter(x, y, s=40)
    ax.set_xlabel("inference speed-up over the teacher (×)")
    ax.set_ylabel(rows[0]["metric"])
    ax.set_title(f"{rows[0]['task']}: students vs teacher")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    place_labels(ax, points, [r["algorithm"] for r in rows])
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_report(rows: list[dict[str, Any]], output: Path) -> dict[str, str]:
    """<output>.md, <output>.json and <output>.png, each written atomically."""
    output.parent.mkdir(parents=True, exist_ok=True)
    markdown = output.with_suffix(".md")
    tmp = markdown.with_name(f".{markdown.name}.tmp")
    tmp.write_text(to_markdown(rows), encoding="utf-8")
    tmp.replace(markdown)
    write_json_atomic(output.with_suffix(".json"), rows)
    plot(rows, output.with_suffix(".png"))
    return {
        "markdown": str(markdown),
        "json": str(output.with_suffix(".json")),
        "chart": str(output.with_suffix(".png")),
    }
