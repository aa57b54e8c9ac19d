"""BERT-of-Theseus (Xu et al. 2020): compress a fine-tuned BERT by progressive module replacement.

Phase 1 (replacement): a successor BERT with `--successor_layers` layers (3; initialised from
teacher layers `--successor_init`, default 0,1,2 as the original's init_stu.py) shares the
teacher's frozen embeddings, pooler and classifier; each successor layer replaces a block of
12/3 = 4 frozen teacher layers with probability `--replacing_rate` (constant 0.5, as the
original, or the paper's linear curriculum min(1, k·t + b) with --replace_scheduler linear).
Phase 2: the successor alone is fine-tuned. Loss: cross-entropy on gold labels in both phases.
The saved model is the plain successor BERT. Original: theseus/ + run_train_theseus.sh.
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any, Dict, Optional

from distil.algorithms.base import Algorithm, Built, RunConfig, SupervisedStep, format_number, run_training, table
from distil.algorithms.bert_pkd import parse_layer_list, student_from_teacher
from distil.algorithms.students import load_teacher
from distil.data.tasks import TaskSpec
from distil.errors import UsageError
from distil.models import io
from distil.models.bert import additive_attention_mask
from distil.ops.losses import hard_label_loss
from distil.ops.theseus import TheseusEncoder, linear_replacing_rate
from distil.runtime import import_oneflow
from distil.train.settings import TrainSettings

flow = import_oneflow()

FROZEN = ("bert.embeddings.", "bert.pooler.", "classifier.")  # shared with the predecessor, never trained


def freeze_shared(model: flow.nn.Module) -> None:
    for name, parameter in model.named_parameters():
        if name.startswith(FROZEN):
            parameter.requires_grad = False


class TheseusStep(flow.nn.Module):
    """One replacement-training step: the successor's embeddings/head around a mixed encoder."""

    def __init__(self, successor: flow.nn.Module, teacher: flow.nn.Module):
        super().__init__()
        self.successor = successor
        self.encoder = TheseusEncoder(teacher.bert.encoder.layer, successor.bert.encoder.layer)

    def forward(self, batch: Dict[str, flow.Tensor], replacing_rate: float) -> Dict[str, flow.Tensor]:
        bert = self.successor.bert
        hidden = bert.embeddings(batch["input_ids"], batch["segment_ids"])
        hidden, _, _ = self.encoder(hidden, additive_attention_mask(batch["input_mask"]), replacing_rate)
        logits = self.successor.classifier(self.successor.dropout(bert.pooler(hidden)))
        return {"hard_label_loss": hard_label_loss(logits, batch["label_ids"])}


class Theseus(Algorithm):
    name = "theseus"
    eval_script = "run_eval_theseus.sh"
    # run_train_theseus.sh: lr 1e-5 and 5 epochs for every task; weight decay as below
    task_settings = {name: (1e-5, 5, wd) for name, wd in table({"CoLA": (0, 0, 0.01), "MRPC": (0, 0, 0.001)},
                                                                (0, 0, 0.0001)).items() for wd in [wd[2]]}

    def build(self, run: RunConfig, task: TaskSpec, train_meta: Dict[str, Any]) -> Built:
        if run.options.get("phase") == "successor":
            successor = io.load_model(run.options["student_model"]).train()
            freeze_shared(successor)
            return Built(successor, io.read_config(run.options["student_model"])["model"],
                         SupervisedStep(successor), run.options["student_model"] / io.VOCAB_FILE)
        teacher, teacher_config = load_teacher(run.options, task, train_meta)
        count = int(run.options.get("successor_layers", 3))
        layers = parse_layer_list(run.options.get("successor_init", ",".join(map(str, range(count)))),
                                  teacher_config["num_hidden_layers"])
        if len(layers) != count:
            raise UsageError(f"--successor_init lists {len(layers)} layers for {count} successor layers")
        successor, config = student_from_teacher(teacher, teacher_config, layers)
        freeze_shared(successor)
        step = TheseusStep(successor, teacher)
        return Built(successor, config, step, run.options["teacher_model"] / io.VOCAB_FILE, eager=True,
                     step_inputs=self._replacing_rate(run.options))

    @staticmethod
    def _replacing_rate(options: Dict[str, Any]):
        rate = float(options.get("replacing_rate", 0.5))
        if not 0 < rate <= 1:
            raise UsageError(f"--replacing_rate must be in (0, 1], got {rate}")
        scheduler = options.get("replace_scheduler", "constant")
        if scheduler == "constant":
            return lambda step, total: (rate,)
        if scheduler != "linear":
            raise UsageError(f"--replace_scheduler must be constant or linear, got '{scheduler}'")
        k: Optional[float] = options.get("scheduler_k")
        return lambda step, total: (linear_replacing_rate(step, k if k is not None else (1 - rate) / total, rate),)

    def run(self, run: RunConfig) -> Dict[str, Any]:
        if run.overwrite and run.model_save_dir.exists():
            shutil.rmtree(run.model_save_dir)
        replacement_dir = run.model_save_dir / "replacement_stage"
        run_training(self, dataclasses.replace(run, model_save_dir=replacement_dir, overwrite=False,
                                               serve_for_online=False, result_dir=None))
        successor_settings = dataclasses.replace(
            run.settings, epochs=int(run.options.get("successor_epochs") or run.settings.epochs),
            learning_rate=float(run.options.get("successor_learning_rate") or run.settings.learning_rate))
        return run_training(self, dataclasses.replace(
            run, overwrite=False, settings=successor_settings,
            options={**run.options, "phase": "successor", "student_model": replacement_dir}))

    def model_id(self, task: TaskSpec, settings: TrainSettings, options: Dict[str, Any]) -> str:
        return f"{super().model_id(task, settings, options)}_replace-{format_number(float(options.get('replacing_rate', 0.5)))}"

    def id_prefix(self, task: TaskSpec, options: Dict[str, Any]) -> str:
        return f"bert-theseus_{options.get('successor_layers', 3)}"
