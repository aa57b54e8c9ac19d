"""KD (Hinton et al. 2015): a small BERT learns the teacher's soft labels and the gold labels.

Loss: kd_alpha · CE(gold) + (1 − kd_alpha) · pred_distill(student, teacher, T), with the original's
soft cross-entropy (mean over batch × classes, no T²) unless --pred_distill_mode says otherwise.
Original: examples/knowledge_distillation/task_student_kd.py (4 layers, 312 hidden, FFN 1200,
random init, kd_alpha 0.8, T 1).
"""

from __future__ import annotations

from typing import Any, Dict

from distil.algorithms.base import Algorithm, Built, RunConfig, format_number, table
from distil.algorithms.students import SoftLabelStep, build_bert_student, load_teacher
from distil.data.tasks import TaskSpec
from distil.train.settings import TrainSettings

TINY_STUDENT = {"num_hidden_layers": 4, "hidden_size": 312, "num_attention_heads": 12, "intermediate_size": 1200}


class KD(Algorithm):
    name = "kd"
    eval_script = "run_eval_student_kd.sh"
    task_settings = table({"CoLA": (5e-5, 70, 0.0001), "MRPC": (2e-5, 5, 0.001), "SST-2": (2e-5, 4, 0.0001),
                           "QQP": (5e-5, 5, 0.0001)})

    def build(self, run: RunConfig, task: TaskSpec, train_meta: Dict[str, Any]) -> Built:
        teacher, teacher_config = load_teacher(run.options, task, train_meta)
        student, config, vocab = build_bert_student(run.options, teacher_config, task, TINY_STUDENT, train_meta)
        alpha = run.options.get("kd_alpha", 0.8)
        step = SoftLabelStep(student, teacher, alpha, 1 - alpha, run.options)
        return Built(student, config, step, vocab)

    def model_id(self, task: TaskSpec, settings: TrainSettings, options: Dict[str, Any]) -> str:
        return f"{super().model_id(task, settings, options)}_kd_alpha-{format_number(options.get('kd_alpha', 0.8))}"

    def id_prefix(self, task: TaskSpec, options: Dict[str, Any]) -> str:
        return "bert-kd-distl"
