"""What every algorithm shares: the run description, the data folders, and `run_training`.

An algorithm is a declaration: which models it pairs and which losses its step module returns.
`run_training` does the rest the same way for all of them: checks the inputs, writes the model
directory's config.json and vocab.txt, trains with the one Trainer, evaluates the saved best,
writes results, and cleans up for serving when asked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from distil.data import ofrecord
from distil.data.dataset import open_split
from distil.data.tasks import TaskSpec, get_task
from distil.errors import UsageError
from distil.fileio import file_sha256, write_json_atomic
from distil.models import io
from distil.ops import hard_label_loss
from distil.runtime import import_oneflow
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
    result_dir: Optional[Path] = None      # None or "": results go into the model directory
    serve_for_online: bool = False
    overwrite: bool = False
    device: str = "cpu"
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)  # algorithm-specific flags


@dataclasses.dataclass
class Built:
    """What an algorithm's `build` returns: the model to train and save, and how one step computes its losses."""

    model: flow.nn.Module
    model_config: Dict[str, Any]
    step_module: flow.nn.Module
    vocab_file: Path
    extra_state: Dict[str, Any] = dataclasses.field(default_factory=dict)
    step_inputs: Optional[Callable[[int, int], Tuple]] = None
    eager: bool = False            # True: steps run eagerly (Theseus samples a different network each step)


class SupervisedStep(flow.nn.Module):
    """A model trained on gold labels alone (the teacher's fine-tuning)."""

    def __init__(self, model: flow.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Dict[str, flow.Tensor]) -> Dict[str, flow.Tensor]:
        logits = self.model(batch["input_ids"], batch["segment_ids"], batch["input_mask"])["logits"]
        return {"hard_label_loss": hard_label_loss(logits, batch["label_ids"])}


def table(rows: Dict[str, Tuple[float, int, float]],
          default: Tuple[float, int, float] = (2e-5, 5, 0.0001)) -> Dict[str, Tuple[float, int, float]]:
    """A per-task (learning rate, epochs, weight decay) table: the original's rows, MNLI's row elsewhere.

    The original scripts give MNLI and WNLI (2e-5, 5, 0.0001) for every algorithm; tasks they
    leave out (QNLI, STS-B, SNLI for students) take the same row.
    """
    from distil.data.tasks import TASKS

    return {name: rows.get(name, default) for name in TASKS if name != "diagnostic"}


def format_number(value: float) -> str:
    """Weight decay and loss weights as the original's model ids spell them: 0.0001, 0.8, 10."""
    return f"{value:g}"


def format_lr(value: float) -> str:
    """Learning rates as the original's model ids spell them: 2e-5, 1e-4, 2.5e-5."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


class Algorithm:
    """Subclasses set `name`, their per-task table and id prefix, and implement `build`."""

    name = "base"
    eval_script = ""               # the scripts/ command that evaluates this algorithm's models
    # (learning rate, epochs, weight decay) per task, from the original's run_train_*.sh
    task_settings: Dict[str, Tuple[float, int, float]] = {}

    def build(self, run: RunConfig, task: TaskSpec, train_meta: Dict[str, Any]) -> Built:
        raise NotImplementedError

    def data_suffix(self, run: RunConfig) -> str:
        """The data folder is <TASK><suffix> (the BiLSTM student reads <TASK>_lstm_32)."""
        return ""

    def train_split(self, run: RunConfig) -> str:
        """The split to train on (TinyBERT can train on the augmented one)."""
        return "train"

    def run(self, run: RunConfig) -> Dict[str, Any]:
        """Train one model; multi-stage algorithms (TinyBERT two-stage, Theseus) chain several runs."""
        return run_training(self, run)

    def defaults(self, task: TaskSpec) -> Tuple[float, int, float]:
        if task.name not in self.task_settings:
            raise UsageError(f"{self.name} has no default settings for {task.name} (tasks with defaults: "
                             f"{', '.join(self.task_settings)}); give --learning_rate, --epochs, --weight_decay")
        return self.task_settings[task.name]

    def model_id(self, task: TaskSpec, settings: TrainSettings, options: Dict[str, Any]) -> str:
        """The original's id scheme: <prefix>_epoch-E_lr-LR_wd-WD[_kd_alpha-A][_kd_beta-B]."""
        return f"{self.id_prefix(task, options)}_epoch-{settings.epochs}_lr-{format_lr(settings.learning_rate)}" \
               f"_wd-{format_number(settings.weight_decay)}"

    def id_prefix(self, task: TaskSpec, options: Dict[str, Any]) -> str:
        return self.name

    def default_dir(self, models_root: Path, task: TaskSpec, model_id: str) -> Path:
        return models_root / "student_model" / task.name / model_id


def data_dirs(data_root: Path, task: TaskSpec, suffix: str = "", train_split: str = "train"
              ) -> Tuple[Path, Dict[str, Path]]:
    """(train split, {eval split name: dir}) under <data_root>/<TASK><suffix>/, with a clear error if absent."""
    folder = data_root / f"{task.name}{suffix}"
    evals = {name: folder / name for name in ("eval", "eval_mismatched") if name in task.splits}
    for split in (folder / train_split, *evals.values()):
        if not (split / ofrecord.META_FILE).is_file():
            raise UsageError(f"no converted data at {split} (run: bash scripts/glue_process.sh {task.name}"
                             f" with DATA_ROOT={data_root})")
    return folder / train_split, evals


def model_eval_dirs(config: Dict[str, Any], data_root: Path) -> Dict[str, Path]:
    """The dev split(s) a model directory's config points at: <data_root>/<its data folder>/eval…"""
    task = get_task(config["task"]["name"])
    folder = config.get("data", {}).get("folder", task.name)
    return data_dirs(data_root, task, folder[len(task.name):])[1]


def check_vocab(vocab_file: Path, meta: Dict[str, Any], what: str) -> None:
    """The data must have been tokenized with the model's vocabulary."""
    want = meta.get("vocab", {}).get("sha256")
    if want and file_sha256(vocab_file) != want:
        raise UsageError(f"the data in {meta.get('source')} was converted with {meta['vocab'].get('file')}, "
                         f"but {what} uses {vocab_file}; re-run glue_process.sh with VOCAB_FILE={vocab_file}")


def _already_trained(model_dir: Path) -> bool:
    state = read_run_state(model_dir)
    return (model_dir / io.WEIGHTS_DIR).is_dir() and (state is None or state.finished)


def write_results(results: Dict[str, Any], state: RunState, run: RunConfig, metric: str) -> Path:
    """results_eval.json, train_history.json and the loss/metric curve train_curve.png."""
    from distil.report import plot_history

    target = run.result_dir or run.model_save_dir
    target.mkdir(parents=True, exist_ok=True)
    history = {"epochs": state.history, "losses": state.losses}
    write_json_atomic(target / HISTORY_FILE, history)
    plot_history(history, metric, target / CURVE_FILE)
    write_json_atomic(target / RESULTS_FILE, results)
    return target / RESULTS_FILE


def _serializable(options: Dict[str, Any]) -> Dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}


def run_training(algorithm: Algorithm, run: RunConfig) -> Dict[str, Any]:
    """Train one model end to end; returns the final metrics of the saved best model."""
    task = get_task(run.task)
    model_dir = run.model_save_dir
    if run.result_dir is not None:
        run.result_dir.mkdir(parents=True, exist_ok=True)  # fail now, not after training
    if _already_trained(model_dir) and not run.overwrite:
        log.warning("%s already holds a trained model; not training again (use --overwrite to retrain)", model_dir)
        results = (run.result_dir or model_dir) / RESULTS_FILE
        if results.is_file():
            return json.loads(results.read_text())
        return evaluate_model_dir(model_dir, run.data_root, run.result_dir, run.settings.eval_batch_size, run.device)
    suffix = algorithm.data_suffix(run)
    train_dir, eval_dirs = data_dirs(run.data_root, task, suffix, algorithm.train_split(run))
    for split in (train_dir, *eval_dirs.values()):  # bad data must fail before anything is written
        open_split(split)
    train_meta = ofrecord.read_meta(train_dir)
    built = algorithm.build(run, task, train_meta)
    if model_dir.exists() and run.overwrite:
        log.warning("--overwrite: removing the earlier run in %s", model_dir)
        shutil.rmtree(model_dir)
    io.write_config(model_dir, {
        "model": built.model_config,
        "task": {"name": task.name, "labels": task.labels, "num_labels": task.num_labels,
                 "metrics": list(task.metrics)},
        "data": {"format": train_meta.get("format", "bert"), "folder": f"{task.name}{suffix}",
                 "seq_length": train_meta.get("seq_length"), "do_lower_case": train_meta["vocab"].get("do_lower_case")},
        "algorithm": {"name": algorithm.name, "model_id": model_dir.name, "settings": dataclasses.asdict(run.settings),
                      "options": _serializable(run.options)},
    })
    io.copy_vocab(built.vocab_file, model_dir)
    extra_state = {"options": _serializable(run.options), **built.extra_state}  # a resume must not change them
    trainer = Trainer(built.model, built.step_module, run.settings, train_dir, eval_dirs, task.metrics,
                      model_dir, run.device, built.step_inputs, extra_state, built.eager)
    state = trainer.fit()
    results = {"task": task.name, "algorithm": algorithm.name, "model_id": model_dir.name,
               "best_epoch": state.best_epoch, **trainer.evaluate_best()}
    path = write_results(results, state, run, task.metrics[0])
    log.info("results of the saved best model (epoch %d) in %s", state.best_epoch, path)
    if run.serve_for_online:
        io.serve_for_online(model_dir)
    return results


def _check_model_exists(model_dir: Path, task: Optional[str]) -> None:
    """A missing model id gets the list of the ids of that task that do exist beside it."""
    if model_dir.is_dir():
        return
    configs = model_dir.parent.glob(f"*/{io.CONFIG_FILE}") if model_dir.parent.is_dir() else []
    ids = sorted(p.parent.name for p in configs
                 if task is None or (json.loads(p.read_text()).get("task") or {}).get("name") == get_task(task).name)
    raise UsageError(f"no model {model_dir.name} in {model_dir.parent}; "
                     + (f"models there: {', '.join(ids)}" if ids else "it holds no model"))


def evaluate_model_dir(model_dir: Path, data_root: Path, result_dir: Optional[Path], batch_size: int,
                       device: str, task_name: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate a saved model on its task's dev split(s) and write results_eval.json (original: run_eval_*.sh)."""
    _check_model_exists(model_dir, task_name)
    config = io.read_config(model_dir)
    if not config.get("task"):
        raise UsageError(f"{model_dir} has no task (a pretrained model); fine-tune it first")
    task = get_task(config["task"]["name"])
    if task_name is not None and get_task(task_name).name != task.name:
        raise UsageError(f"{model_dir} was trained for {task.name}, not {get_task(task_name).name}")
    eval_dirs = model_eval_dirs(config, data_root)
    meta = ofrecord.read_meta(eval_dirs["eval"])
    check_vocab(model_dir / io.VOCAB_FILE, meta, f"the model {model_dir}")
    model = io.load_model(model_dir)
    results = {"task": task.name, "algorithm": config["algorithm"]["name"], "model_id": model_dir.name,
               **evaluate(model, eval_dirs, task.metrics, batch_size, device, model_dir)}
    target = result_dir or model_dir
    target.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target / RESULTS_FILE, results)
    return results
