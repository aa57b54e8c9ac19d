"""Algorithms: each is a model pairing plus a loss recipe, run by `base.run_training`."""

from pathlib import Path

from distil.algorithms.base import Algorithm, RunConfig, run_training
from distil.algorithms.bert_pkd import BertPKD
from distil.algorithms.distilled_lstm import DistilledLstm
from distil.algorithms.kd import KD
from distil.algorithms.teacher import Teacher
from distil.algorithms.theseus import Theseus
from distil.algorithms.tinybert import TinyBert
from distil.data.tasks import TaskSpec
from distil.errors import UsageError
from distil.train.settings import TrainSettings

ALGORITHMS = {algorithm.name: algorithm for algorithm in (Teacher, KD, DistilledLstm, BertPKD, TinyBert, Theseus)}


def default_teacher(models_root: Path, task: TaskSpec) -> Path:
    """The teacher run_train_teacher.sh saves with its default settings for `task` (original: a fixed path)."""
    learning_rate, epochs, weight_decay = Teacher().defaults(task)
    settings = TrainSettings(epochs=epochs, learning_rate=learning_rate, weight_decay=weight_decay)
    path = models_root / "finetuned_teacher" / Teacher().model_id(task, settings, {})
    if not path.is_dir():
        found = sorted(p.parent.name for p in (models_root / "finetuned_teacher").glob(f"{task.name}_*/config.json"))
        raise UsageError(f"no teacher at {path} (train one with bash scripts/run_train_teacher.sh {task.name}, "
                         f"or set FT_BERT_BASE_DIR / --teacher_model"
                         + (f"; {task.name} teachers found: {', '.join(found)})" if found else ")"))
    return path


__all__ = ["ALGORITHMS", "Algorithm", "RunConfig", "default_teacher", "run_training"]
