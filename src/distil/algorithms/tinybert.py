"""TinyBERT (Jiao et al. 2019): a 4-layer, 312-wide BERT learns the teacher's attention, hidden states and predictions.

Loss: att_distill (pre-softmax scores, masked positions zeroed) + layer_distill (embeddings and
hidden states through fit_dense 312 -> 768, student layer i against teacher layer 3i) +
pred_distill; no gold-label term. `--tinybert_mode one_stage` (default) optimises all three at
once, as the original scripts did; `two_stage` runs the paper's schedule: intermediate-layer
distillation (`--intermediate_epochs`, `--intermediate_learning_rate`, paper defaults), then
prediction-layer distillation with the task table's settings. The student starts from
`--student_model` (a general TinyBERT, whose own fit_dense is loaded when it has one) when given, and
`--aug_train` trains on the augmented set of scripts/run_data_augmentation.sh.
Original: examples/tinybert/task_student_tinybert.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from distil.algorithms.base import Algorithm, Built, RunConfig, Stage, table
from distil.algorithms.kd import TINY_STUDENT
from distil.algorithms.options import TinyBertOptions
from distil.algorithms.students import (
    build_bert_student,
    check_layer_mapping,
    check_same_heads,
    fit_dense,
    load_teacher,
)
from distil.data.tasks import TaskSpec
from distil.train.step import DistillStep, attention, hidden_states, soft_labels

INTERMEDIATE_EPOCHS = {"CoLA": 50, "MNLI": 10, "QQP": 10, "QNLI": 10}  # paper §4.2; other tasks 20


class TinyBert(Algorithm):
    name = "tinybert"
    eval_script = "run_eval_student_tinybert.sh"
    options = TinyBertOptions
    task_settings = table(
        {"CoLA": (7e-5, 100, 0.0001), "MRPC": (2e-5, 30, 0.001), "SST-2": (2e-5, 4, 0.0001), "QQP": (1e-4, 5, 0.0001)}
    )

    def train_split(self, options: TinyBertOptions) -> str:
        return "train_aug" if options.aug_train else "train"

    def stages(self, run: RunConfig) -> list[Stage]:
        options: TinyBertOptions = run.options
        if options.tinybert_mode == "one_stage":
            return [Stage("one_stage", run.model_save_dir, run.settings)]
        epochs = options.intermediate_epochs or INTERMEDIATE_EPOCHS.get(run.task, 20)
        intermediate = Stage(
            "intermediate",
            run.model_save_dir / "intermediate_stage",
            dataclasses.replace(
                run.settings, epochs=epochs, learning_rate=options.intermediate_learning_rate, select_best=False
            ),
            final=False,
        )
        return [intermediate, Stage("prediction", run.model_save_dir, run.settings, init=intermediate.model_dir)]

    def build(self, run: RunConfig, stage: Stage, task: TaskSpec, train_meta: dict[str, Any]) -> Built:
        options: TinyBertOptions = run.options
        teacher, teacher_config = load_teacher(options, task, train_meta)
        student, config, vocab, projection = build_bert_student(
            options, teacher_config, task, TINY_STUDENT, train_meta, init=stage.init
        )
        check_same_heads(config, teacher_config, "--student_num_attention_heads")
        check_layer_mapping(config, teacher_config)
        terms = [] if stage.name == "prediction" else [attention(), hidden_states(1.0)]
        if stage.name != "intermediate":
            terms.append(soft_labels(1.0, options.temperature, options.pred_distill_mode))
        fit = (
            None
            if stage.name == "prediction"
            else fit_dense(config["hidden_size"], teacher_config["hidden_size"], projection, str(options.student_model))
        )
        return Built(student, config, DistillStep(student, terms, teacher, fit), vocab)
