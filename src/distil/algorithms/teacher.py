"""Teacher fine-tuning: a pretrained BERT plus a fresh task head, trained on gold labels.

Loss: mean cross-entropy (MSE for STS-B). Original: examples/teacher_bert/task_teacher.py
(its classifier always had 2 outputs; ours takes the task's label count).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distil.algorithms.base import Algorithm, Built, RunConfig, Stage
from distil.algorithms.options import TeacherOptions
from distil.data.ofrecord import check_vocab
from distil.data.tasks import TaskSpec
from distil.errors import UsageError
from distil.models import io
from distil.train.settings import TrainSettings
from distil.train.step import DistillStep, hard_label


class Teacher(Algorithm):
    name = "teacher"
    eval_script = "run_eval_teacher.sh"
    options = TeacherOptions
    # run_train_teacher.sh; STS-B and SNLI (not in the original) take MNLI's row
    task_settings = {
        "CoLA": (1e-5, 5, 0.01),
        "MRPC": (3e-5, 5, 0.001),
        "SST-2": (2e-5, 3, 0.0001),
        "QQP": (2e-5, 5, 0.0001),
        "MNLI": (2e-5, 5, 0.0001),
        "WNLI": (2e-5, 5, 0.0001),
        "RTE": (3e-5, 5, 0.0001),
        "QNLI": (2e-5, 5, 0.0001),
        "STS-B": (2e-5, 5, 0.0001),
        "SNLI": (2e-5, 5, 0.0001),
    }

    def id_prefix(self, task: TaskSpec, options: TeacherOptions) -> str:
        return task.name

    def default_dir(self, models_root: Path, task: TaskSpec, model_id: str) -> Path:
        return models_root / "finetuned_teacher" / model_id

    def build(self, run: RunConfig, stage: Stage, task: TaskSpec, train_meta: dict[str, Any]) -> Built:
        path = run.options.pretrained_model
        if not path:
            raise UsageError("--pretrained_model is required: a model directory or a Hugging Face BERT folder")
        pretrained = io.read_pretrained(path)
        check_vocab(pretrained.vocab_file, train_meta, f"the pretrained model {path}")
        if train_meta["seq_length"] > pretrained.config["max_position_embeddings"]:
            raise UsageError(
                f"the data has {train_meta['seq_length']} tokens per example but {path} "
                f"has only {pretrained.config['max_position_embeddings']} positions"
            )
        keep_head = pretrained.task == task.name and pretrained.config.get("num_labels") == task.num_labels
        model_config = {**pretrained.config, "num_labels": task.num_labels}
        model = io.build_model(model_config)
        # a pretraining checkpoint may lack the pooler; the task head is new unless it is this task's
        skip = io.absent_parts(pretrained.state) + (() if keep_head else ("classifier.",))
        io.load_state(model, pretrained.state, str(path), skip=skip)
        return Built(model, model_config, DistillStep(model, [hard_label()]), pretrained.vocab_file)


def default_teacher(models_root: Path, task: TaskSpec) -> Path:
    """The teacher run_train_teacher.sh saves with its default settings for `task` (original: a fixed path)."""
    learning_rate, epochs, weight_decay = Teacher().defaults(task)
    settings = TrainSettings(epochs=epochs, learning_rate=learning_rate, weight_decay=weight_decay)
    path = models_root / "finetuned_teacher" / Teacher().model_id(task, settings, TeacherOptions())
    if not path.is_dir():
        found = sorted(p.parent.name for p in (models_root / "finetuned_teacher").glob(f"{task.name}_*/config.json"))
        raise UsageError(
            f"no teacher at {path} (train one with bash scripts/run_train_teacher.sh {task.name}, "
            f"or set FT_BERT_BASE_DIR / --teacher_model"
            + (f"; {task.name} teachers found: {', '.join(found)})" if found else ")")
        )
    return path
