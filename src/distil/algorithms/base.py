"""What an algorithm declares: typed options, a per-task settings table, its stages, and per stage the
model pairing and loss terms (`build`). The training layer (`distil.train.run`) does everything else
the same way for all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distil.algorithms.options import Options
from distil.data.tasks import TASKS, TaskSpec, get_task
from distil.errors import UsageError
from distil.train.run import Built, RunConfig, Stage, data_dirs
from distil.train.settings import TrainSettings

__all__ = ["Algorithm", "Built", "RunConfig", "Stage", "format_lr", "format_number", "table"]


def table(
    rows: dict[str, tuple[float, int, float]], default: tuple[float, int, float] = (2e-5, 5, 0.0001)
) -> dict[str, tuple[float, int, float]]:
    """A per-task (learning rate, epochs, weight decay) table: the original's rows, MNLI's row elsewhere.

    The original scripts give MNLI and WNLI (2e-5, 5, 0.0001) for every algorithm; tasks they
    leave out (QNLI, STS-B, SNLI for students) take the same row.
    """
    return {name: rows.get(name, default) for name in TASKS if name != "diagnostic"}


def format_number(value: float) -> str:
    """Weight decay and loss weights as the original's model ids spell them: 0.0001, 0.8, 10."""
    return f"{value:g}"


def format_lr(value: float) -> str:
    """Learning rates as the original's model ids spell them: 2e-5, 1e-4, 2.5e-5."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


class Algorithm:
    """Subclasses set `name`, `options` (their dataclass), the per-task table and implement `build`."""

    name = "base"
    eval_script = ""  # the scripts/ command that evaluates this algorithm's models
    options: type[Options] = Options
    # (learning rate, epochs, weight decay) per task, from the original's run_train_*.sh
    task_settings: dict[str, tuple[float, int, float]] = {}

    def build(self, run: RunConfig, stage: Stage, task: TaskSpec, train_meta: dict[str, Any]) -> Built:
        raise NotImplementedError

    def task(self, name: str) -> TaskSpec:
        """The task trained: the GLUE task named (general distillation has its own)."""
        return get_task(name)

    def data(self, run: RunConfig, task: TaskSpec) -> tuple[Path, dict[str, Path]]:
        """(train split, {eval split name: dir}): <data_root>/<TASK><data_suffix>/ by default."""
        return data_dirs(run.data_root, task, self.data_suffix(run.options), self.train_split(run.options))

    def evaluator(self, built: Built, split, settings: TrainSettings, placement) -> Any | None:
        """What scores a stage on its dev split each epoch; None: the task's metrics on the model's logits."""
        return None

    def stages(self, run: RunConfig) -> list[Stage]:
        """One stage by default; TinyBERT two-stage and Theseus chain two, the first in a nested directory."""
        return [Stage("train", run.model_save_dir, run.settings)]

    def data_suffix(self, options: Options) -> str:
        """The data folder is <TASK><suffix> (the BiLSTM student reads <TASK>_lstm_32)."""
        return ""

    def train_split(self, options: Options) -> str:
        """The split to train on (TinyBERT can train on the augmented one)."""
        return "train"

    def defaults(self, task: TaskSpec) -> tuple[float, int, float]:
        if task.name not in self.task_settings:
            raise UsageError(
                f"{self.name} has no default settings for {task.name} (tasks with defaults: "
                f"{', '.join(self.task_settings)}); give --learning_rate, --epochs, --weight_decay"
            )
        return self.task_settings[task.name]

    def model_id(self, task: TaskSpec, settings: TrainSettings, options: Options) -> str:
        """The original's id scheme: <prefix>_epoch-E_lr-LR_wd-WD[_kd_alpha-A][_kd_beta-B]."""
        return (
            f"{self.id_prefix(task, options)}_epoch-{settings.epochs}_lr-{format_lr(settings.learning_rate)}"
            f"_wd-{format_number(settings.weight_decay)}{self.id_suffix(options)}"
        )

    def id_prefix(self, task: TaskSpec, options: Options) -> str:
        return self.name

    def id_suffix(self, options: Options) -> str:
        return ""

    def default_dir(self, models_root: Path, task: TaskSpec, model_id: str) -> Path:
        return models_root / "student_model" / task.name / model_id
