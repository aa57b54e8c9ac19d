"""KD (Hinton et al. 2015): a small BERT learns the teacher's soft labels and the gold labels.

Loss: kd_alpha · CE(gold) + (1 − kd_alpha) · pred_distill(student, teacher, T), with the original's
soft cross-entropy (mean over batch × classes, no T²) unless --pred_distill_mode says otherwise.
Original: examples/knowledge_distillation/task_student_kd.py (4 layers, 312 hidden, FFN 1200,
random init, kd_alpha 0.8, T 1).
"""

from __future__ import annotations

from typing import Any

from distil.algorithms.base import Algorithm, Built, RunConfig, Stage, format_number, table
from distil.algorithms.options import KDOptions
from distil.algorithms.students import build_bert_student, load_teacher
from distil.data.tasks import TaskSpec
from distil.train.step import DistillStep, hard_label, soft_labels

TINY_STUDENT = {"num_hidden_layers": 4, "hidden_size": 312, "num_attention_heads": 12, "intermediate_size": 1200}


class KD(Algorithm):
    name = "kd"
    eval_script = "run_eval_student_kd.sh"
    options = KDOptions
    task_settings = table(
        {"CoLA": (5e-5, 70, 0.0001), "MRPC": (2e-5, 5, 0.001), "SST-2": (2e-5, 4, 0.0001), "QQP": (5e-5, 5, 0.0001)}
    )

    def build(self, run: RunConfig, stage: Stage, task: TaskSpec, train_meta: dict[str, Any]) -> Built:
        options: KDOptions = run.options
        teacher, teacher_config = load_teacher(options, task, train_meta, several=True)
        student, config, vocab, _ = build_bert_student(options, teacher_config, task, TINY_STUDENT, train_meta)
        terms = [
            hard_label(options.kd_alpha),
            soft_labels(1 - options.kd_alpha, options.temperature, options.pred_distill_mode),
        ]
        return Built(student, config, DistillStep(student, terms, teacher), vocab)

    def id_prefix(self, task: TaskSpec, options: KDOptions) -> str:
        return "bert-kd-distl"

    def id_suffix(self, options: KDOptions) -> str:
        return f"_kd_alpha-{format_number(options.kd_alpha)}"
