"""Teacher fine-tuning: a pretrained BERT plus a fresh task head, trained on gold labels.

Loss: mean cross-entropy (MSE for STS-B). Original: examples/teacher_bert/task_teacher.py
(its classifier always had 2 outputs; ours takes the task's label count).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from distil.algorithms.base import Algorithm, Built, RunConfig, SupervisedStep, check_vocab
from distil.data.tasks import TaskSpec
from distil.errors import UsageError
from distil.models import io


class Teacher(Algorithm):
    name = "teacher"
    eval_script = "run_eval_teacher.sh"
    # run_train_teacher.sh; STS-B and SNLI (not in the original) take MNLI's row
    task_settings = {"CoLA": (1e-5, 5, 0.01), "MRPC": (3e-5, 5, 0.001), "SST-2": (2e-5, 3, 0.0001),
                     "QQP": (2e-5, 5, 0.0001), "MNLI": (2e-5, 5, 0.0001), "WNLI": (2e-5, 5, 0.0001),
                     "RTE": (3e-5, 5, 0.0001), "QNLI": (2e-5, 5, 0.0001), "STS-B": (2e-5, 5, 0.0001),
                     "SNLI": (2e-5, 5, 0.0001)}

    def id_prefix(self, task: TaskSpec, options: Dict[str, Any]) -> str:
        return task.name

    def default_dir(self, models_root: Path, task: TaskSpec, model_id: str) -> Path:
        return models_root / "finetuned_teacher" / model_id

    def build(self, run: RunConfig, task: TaskSpec, train_meta: Dict[str, Any]) -> Built:
        pretrained = run.options.get("pretrained_model")
        if not pretrained:
            raise UsageError("--pretrained_model is required: a model directory or a Hugging Face BERT folder")
        model_config, state, vocab_file, pretrained_task = io.read_pretrained(Path(pretrained))
        check_vocab(vocab_file, train_meta, f"the pretrained model {pretrained}")
        if train_meta["seq_length"] > model_config["max_position_embeddings"]:
            raise UsageError(f"the data has {train_meta['seq_length']} tokens per example but {pretrained} "
                             f"has only {model_config['max_position_embeddings']} positions")
        keep_head = pretrained_task == task.name and model_config.get("num_labels") == task.num_labels
        model_config = {**model_config, "num_labels": task.num_labels}
        model = io.build_model(model_config)
        # a pretraining checkpoint may lack the pooler; the task head is new unless it is this task's
        skip = io.absent_parts(state) + (() if keep_head else ("classifier.",))
        io.load_state(model, state, str(pretrained), skip=skip)
        return Built(model=model, model_config=model_config, step_module=SupervisedStep(model),
                     vocab_file=vocab_file)
