"""Running an algorithm: its stages end to end, and evaluating a saved model directory.

For every stage the same sequence: check the inputs (data, options) before anything is written,
write the model directory's config.json and vocab.txt, train with the one Trainer, evaluate the
saved best, write results_eval.json / train_history.json / train_curve.png, and strip the model
for serving when asked. An algorithm only declares (`distil.algorithms.base.Algorithm`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distil import crash
from distil.data import ofrecord
from distil.data.dataset import Split, open_split
from distil.data.tasks import TaskSpec, get_task
from distil.errors import UsageError
from distil.fileio import write_json_atomic
from distil.models import io
from distil.runtime import import_oneflow
from distil.train.placement import Placement
from distil.train.settings import TrainSettings
from distil.train.trainer import RunState, Trainer, evaluate, read_run_state

flow = import_oneflow()
log = logging.getLogger(__name__)

RESULTS_FILE, HISTORY_FILE, CURVE_FILE = "results_eval.json", "train_history.json", "train_curve.png"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run as the command line describes it."""

    task: str
    data_root: Path
    model_save_dir: Path
    settings: TrainSettings
    options: Any  # the algorithm's Options dataclass
    result_dir: Path | None = None  # None: results go into the model directory
    serve_for_online: bool = False
    export_onnx: bool = False  # write model.onnx beside the final weights
    overwrite: bool = False
    device: str = "cpu"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training of a run. Multi-stage algorithms train a first stage in a nested directory and start
    the final one from it (`init`); results, `--result_dir` and SERVE_FOR_ONLINE concern the final stage."""

    name: str
    model_dir: Path
    settings: TrainSettings
    init: Path | None = None
    final: bool = True


@dataclasses.dataclass
class Built:
    """What an algorithm's `build` returns: the model to train and save, and how one step computes its losses."""

    model: flow.nn.Module
    model_config: dict[str, Any]
    step_module: flow.nn.Module
    vocab_file: Path
    step_inputs: Callable[[int, int], tuple] | None = None
    eager: bool = False  # True: steps run eagerly (Theseus samples a different network each step)


def data_dirs(
    data_root: Path, task: TaskSpec, suffix: str = "", train_split: str = "train"
) -> tuple[Path, dict[str, Path]]:
    """(train split, {eval split name: dir}) under <data_root>/<TASK><suffix>/, with a clear error if absent."""
    folder = data_root / f"{task.name}{suffix}"
    evals = {name: folder / name for name in ("eval", "eval_mismatched") if name in task.splits}
    for split in (folder / train_split, *evals.values()):
        if not (split / ofrecord.META_FILE).is_file():
            raise UsageError(
                f"no converted data at {split} (run: bash scripts/glue_process.sh {task.name}"
                f" with DATA_ROOT={data_root})"
            )
    return folder / train_split, evals


def model_eval_dirs(config: dict[str, Any], data_root: Path) -> dict[str, Path]:
    """The dev split(s) a model directory's config points at: <data_root>/<its data folder>/eval…"""
    task = get_task(config["task"]["name"])
    folder = config.get("data", {}).get("folder", task.name)
    return data_dirs(data_root, task, folder[len(task.name) :])[1]


def open_eval_splits(model_dir: Path, config: dict[str, Any], data_root: Path) -> dict[str, Split]:
    """The dev split(s) of a fine-tuned model directory under `data_root`, checked against its vocabulary."""
    eval_splits = {name: open_split(path) for name, path in model_eval_dirs(config, data_root).items()}
    ofrecord.check_vocab(model_dir / io.VOCAB_FILE, eval_splits["eval"].meta, f"the model {model_dir}")
    return eval_splits


def _already_trained(model_dir: Path) -> bool:
    state = read_run_state(model_dir)
    return (model_dir / io.WEIGHTS_DIR).is_dir() and (state is None or state.finished)


def plot_history(history: dict[str, Any], metric: str, path: Path) -> None:
    """A run's loss terms (each by name) and total against steps, and the per-epoch dev metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(6.4, 4.0))
    names = sorted({k for entry in history["losses"] for k in entry if k.endswith("loss")} - {"loss"})
    steps = [entry["step"] for entry in history["losses"]]
    if steps:
        loss_axis.plot(steps, [entry["loss"] for entry in history["losses"]], color="black", label="loss (sum)")
        for name in names if len(names) > 1 else ():
            loss_axis.plot(steps, [entry.get(name) for entry in history["losses"]], label=name, linewidth=1)
        loss_axis.legend(fontsize=7, loc="upper right")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss")
    metric_axis = loss_axis.twinx()
    epochs = history["epochs"]
    metric_axis.plot([e["step"] for e in epochs], [e["metrics"][metric] for e in epochs], "o-", color="tab:orange")
    metric_axis.set_ylabel(f"dev {metric}", color="tab:orange")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def write_results(results: dict[str, Any], state: RunState, target: Path, metric: str) -> Path:
    """results_eval.json, train_history.json and the loss/metric curve train_curve.png."""
    target.mkdir(parents=True, exist_ok=True)
    history = {"epochs": state.history, "losses": state.losses}
    write_json_atomic(target / HISTORY_FILE, history)
    plot_history(history, metric, target / CURVE_FILE)
    write_json_atomic(target / RESULTS_FILE, results)
    return target / RESULTS_FILE


def train_algorithm(algorithm, run: RunConfig) -> dict[str, Any]:
    """Train every stage of `algorithm`; returns the final metrics of the saved best model."""
    results: dict[str, Any] = {}
    for index, stage in enumerate(algorithm.stages(run)):
        results = train_stage(algorithm, run, stage, clear=run.overwrite and index == 0)
    return results


def train_stage(algorithm, run: RunConfig, stage: Stage, clear: bool = False) -> dict[str, Any]:
    """Train one stage. `clear`: remove the run's model directory once the inputs have been checked."""
    task = algorithm.task(run.task)
    model_dir, result_dir = stage.model_dir, run.result_dir if stage.final else None
    if result_dir is not None:
        result_dir.mkdir(parents=True, exist_ok=True)  # fail now, not after training
    if _already_trained(model_dir) and not clear:
        if not stage.final:
            log.info("stage %s: already trained in %s; going on with the next stage", stage.name, model_dir)
            return {}
        log.warning("%s already holds a trained model; not training again (use --overwrite to retrain)", model_dir)
        results = (result_dir or model_dir) / RESULTS_FILE
        if results.is_file():
            return json.loads(results.read_text())
        return evaluate_model_dir(
            model_dir, run.data_root, result_dir, run.settings.eval_batch_size, run.device, fp16=run.settings.use_fp16
        )
    placement = Placement(run.device, fp16=stage.settings.use_fp16)
    suffix = algorithm.data_suffix(run.options)
    train_dir, eval_dirs = algorithm.data(run, task)
    train = open_split(train_dir)  # bad data must fail before anything is written
    eval_splits = {name: open_split(path) for name, path in eval_dirs.items()}
    train_meta = train.meta
    flow.manual_seed(stage.settings.seed)  # new weights (a task head, a student) are the same on every rank and run
    built = algorithm.build(run, stage, task, train_meta)
    options = run.options.as_json()
    config = {
        "model": built.model_config,
        "task": {
            "name": task.name,
            "labels": task.labels,
            "num_labels": task.num_labels,
            "metrics": list(task.metrics),
        },
        "data": {
            "format": train_meta.get("format", "bert"),
            "folder": f"{task.name}{suffix}",
            "seq_length": train_meta.get("seq_length"),
            "do_lower_case": train_meta["vocab"].get("do_lower_case"),
        },
        "algorithm": {
            "name": algorithm.name,
            "model_id": run.model_save_dir.name,
            "stage": stage.name,
            "settings": dataclasses.asdict(stage.settings),
            "options": options,
        },
    }

    vocab_file = built.vocab_file

    def start() -> None:
        if clear and run.model_save_dir.exists():
            log.warning("--overwrite: removing the earlier run in %s", run.model_save_dir)
            shutil.rmtree(run.model_save_dir)
        io.write_config(model_dir, config)
        io.copy_vocab(vocab_file, model_dir)

    placement.write(start)
    crash.note_run(run.model_save_dir, model_dir)  # where crash.log goes, and the train_state/ a restart resumes
    # a resume must not change them (the options, a global batch, a data order)
    extra_state = {"options": options, "stage": stage.name, "processes": placement.world_size}
    evaluator = algorithm.evaluator(built, eval_splits["eval"], stage.settings, placement)
    trainer = Trainer(
        built.model,
        built.step_module,
        stage.settings,
        train,
        eval_splits,
        task.metrics,
        model_dir,
        placement,
        built.step_inputs,
        extra_state,
        built.eager,
        evaluator,
    )
    state = trainer.fit()
    results = {
        "task": task.name,
        "algorithm": algorithm.name,
        "model_id": run.model_save_dir.name,
        "best_epoch": state.best_epoch,
        **trainer.evaluate_best(),
    }

    def finish() -> None:
        path = write_results(results, state, result_dir or model_dir, task.metrics[0])
        log.info("results of the saved best model (epoch %d) in %s", state.best_epoch, path)
        if run.serve_for_online and stage.final:
            io.serve_for_online(model_dir)
        if run.export_onnx and stage.final:
            from distil.onnx_export import export_onnx

            export_onnx(model_dir)

    placement.write(finish)
    del trainer, built
    placement.release()
    return results


def _check_model_exists(model_dir: Path, task: str | None) -> None:
    """A missing model id gets the list of the ids of that task that do exist beside it."""
    if model_dir.is_dir():
        return
    configs = model_dir.parent.glob(f"*/{io.CONFIG_FILE}") if model_dir.parent.is_dir() else []
    ids = sorted(
        p.parent.name
        for p in configs
        if task is None or (json.loads(p.read_text()).get("task") or {}).get("name") == get_task(task).name
    )
    raise UsageError(
        f"no model {model_dir.name} in {model_dir.parent}; "
        + (f"models there: {', '.join(ids)}" if ids else "it holds no model")
    )


def evaluate_model_dir(
    model_dir: Path,
    data_root: Path,
    result_dir: Path | None,
    batch_size: int,
    device: str,
    task_name: str | None = None,
    fp16: bool = False,
    length_buckets: str = "auto",
) -> dict[str, Any]:
    """Evaluate a saved model on its task's dev split(s) and write results_eval.json (original: run_eval_*.sh)."""
    _check_model_exists(model_dir, task_name)
    config = io.read_config(model_dir)
    if not config.get("task"):
        raise UsageError(f"{model_dir} has no task (a pretrained model); fine-tune it first")
    task = get_task(config["task"]["name"])
    if task_name is not None and get_task(task_name).name != task.name:
        raise UsageError(f"{model_dir} was trained for {task.name}, not {get_task(task_name).name}")
    eval_splits = open_eval_splits(model_dir, config, data_root)
    placement = Placement(device, fp16)
    model = io.load_model(model_dir)
    results = {
        "task": task.name,
        "algorithm": config["algorithm"]["name"],
        "model_id": model_dir.name,
        **evaluate(model, eval_splits, task.metrics, batch_size, placement, model_dir, length_buckets=length_buckets),
    }
    placement.release()
    target = result_dir or model_dir

    def write() -> None:
        target.mkdir(parents=True, exist_ok=True)
        write_json_atomic(target / RESULTS_FILE, results)

    placement.write(write)
    return results
