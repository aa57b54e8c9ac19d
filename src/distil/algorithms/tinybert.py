"""TinyBERT (Jiao et al. 2019): a 4-layer, 312-wide BERT learns the teacher's attention, hidden states and predictions.

Loss: att_distill (pre-softmax scores, masked positions zeroed) + layer_distill (embeddings and
hidden states through fit_dense 312 -> 768, student layer i against teacher layer 3i) +
pred_distill; no gold-label term. `--tinybert_mode one_stage` (default) optimises all three at
once, as the original scripts did; `two_stage` runs the paper's schedule: intermediate-layer
distillation for `--intermediate_epochs`, then prediction-layer distillation. The student starts
from `--student_model` (a general TinyBERT; a Hugging Face one converts with convert-hf) when
given, and `--aug_train` trains on the augmented set of scripts/run_data_augmentation.sh.
Original: examples/tinybert/task_student_tinybert.py.
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any, Dict

from distil.algorithms.base import Algorithm, Built, RunConfig, run_training, table
from distil.algorithms.kd import TINY_STUDENT
from distil.algorithms.students import (build_bert_student, check_layer_mapping, fit_dense, load_teacher,
                                        model_inputs)
from distil.data.tasks import TaskSpec
from distil.errors import UsageError
from distil.ops import att_distill, layer_distill, pred_distill
from distil.runtime import import_oneflow

flow = import_oneflow()

MODES = ("one_stage", "two_stage")


class TinyBertStep(flow.nn.Module):
    def __init__(self, student, teacher, projection, stage: str, temperature: float, mode: str):
        super().__init__()
        self.student, self.teacher, self.fit_dense = student, teacher, projection
        self.stage, self.temperature, self.mode = stage, temperature, mode

    def forward(self, batch: Dict[str, flow.Tensor]) -> Dict[str, flow.Tensor]:
        out, teacher_out = self.student(*model_inputs(batch)), self.teacher(*model_inputs(batch))
        losses = {}
        if self.stage != "prediction":
            reps = out["hidden_states"]
            if self.fit_dense is not None:
                reps = [self.fit_dense(h) for h in reps]
            losses["att_distill_loss"] = att_distill(out["attention_scores"], teacher_out["attention_scores"])
            losses["layer_distill_loss"] = layer_distill(reps, teacher_out["hidden_states"])
        if self.stage != "intermediate":
            losses["pred_distill_loss"] = pred_distill(out["logits"], teacher_out["logits"], self.temperature,
                                                       self.mode)
        return losses


class TinyBert(Algorithm):
    name = "tinybert"
    eval_script = "run_eval_student_tinybert.sh"
    task_settings = table({"CoLA": (7e-5, 100, 0.0001), "MRPC": (2e-5, 30, 0.001), "SST-2": (2e-5, 4, 0.0001),
                           "QQP": (1e-4, 5, 0.0001)})

    def train_split(self, run: RunConfig) -> str:
        return "train_aug" if run.options.get("aug_train") else "train"

    def build(self, run: RunConfig, task: TaskSpec, train_meta: Dict[str, Any]) -> Built:
        teacher, teacher_config = load_teacher(run.options, task, train_meta)
        student, config, vocab = build_bert_student(run.options, teacher_config, task, TINY_STUDENT, train_meta)
        if config["num_attention_heads"] != teacher_config["num_attention_heads"]:
            raise UsageError(f"TinyBERT compares attention head by head: the student has "
                             f"{config['num_attention_heads']} heads, the teacher {teacher_config['num_attention_heads']}")
        check_layer_mapping(config, teacher_config)
        stage = run.options.get("stage", "one_stage")
        projection = fit_dense(config["hidden_size"], teacher_config["hidden_size"]) if stage != "prediction" else None
        step = TinyBertStep(student, teacher, projection, stage, run.options.get("temperature", 1.0),
                            run.options.get("pred_distill_mode", "soft_ce"))
        return Built(student, config, step, vocab)

    def run(self, run: RunConfig) -> Dict[str, Any]:
        mode = run.options.get("tinybert_mode", "one_stage")
        if mode not in MODES:
            raise UsageError(f"--tinybert_mode must be one of {', '.join(MODES)}, got '{mode}'")
        if mode == "one_stage":
            return run_training(self, run)
        if run.overwrite and run.model_save_dir.exists():
            shutil.rmtree(run.model_save_dir)
        intermediate_dir = run.model_save_dir / "intermediate_stage"
        epochs = int(run.options.get("intermediate_epochs") or run.settings.epochs)
        run_training(self, dataclasses.replace(
            run, model_save_dir=intermediate_dir, overwrite=False, serve_for_online=False, result_dir=None,
            settings=dataclasses.replace(run.settings, epochs=epochs, select_best=False),
            options={**run.options, "stage": "intermediate"}))
        return run_training(self, dataclasses.replace(
            run, overwrite=False, options={**run.options, "stage": "prediction", "student_model": intermediate_dir}))
