"""BERT-PKD (Sun et al. 2019): a 3-layer BERT initialised from teacher layers learns soft labels and hidden states.

Loss (the original's): (1 − kd_alpha) · CE(gold) + kd_alpha · pred_distill + kd_beta · layer_distill,
the layer term being the MSE of full hidden-state sequences, embeddings included, student layer i
against teacher layer `--pkd_layer_map` (uniform: 4i for 12 -> 3); kd_alpha 0.2, kd_beta 10.
`--pkd_loss patient` uses the paper's normalised-[CLS] patient loss over the intermediate layers
instead (uniform = the paper's PKD-skip, last = PKD-last), scaled as the official code does (a mean
over batch × layers × hidden, so the paper's β of 100-500 applies, not the layer-MSE's 10). The
student starts from teacher layers `--layer_list` (default 2,6,10, 0-based, as the original) plus
the teacher's embeddings, pooler and classifier, unless `--from_scratch`.
Original: examples/bert-pkd/task_student_bert-pkd.py.
"""

from __future__ import annotations

from typing import Any

from distil.algorithms.base import Algorithm, Built, RunConfig, Stage, format_number, table
from distil.algorithms.options import PKDOptions, parse_layer_list, parse_layer_map
from distil.algorithms.students import (
    build_bert_student,
    check_layer_mapping,
    fit_dense,
    load_teacher,
    student_from_teacher,
)
from distil.data.tasks import TaskSpec
from distil.models import io
from distil.train.step import DistillStep, hard_label, hidden_states, soft_labels


class BertPKD(Algorithm):
    name = "bert_pkd"
    eval_script = "run_eval_student_bert_pkd.sh"
    options = PKDOptions
    task_settings = table(
        {"CoLA": (5e-5, 100, 0.0001), "MRPC": (2e-5, 5, 0.001), "SST-2": (2e-5, 4, 0.0001), "RTE": (3e-5, 5, 0.0001)}
    )

    def build(self, run: RunConfig, stage: Stage, task: TaskSpec, train_meta: dict[str, Any]) -> Built:
        options: PKDOptions = run.options
        teacher, teacher_config = load_teacher(options, task, train_meta)
        layers = parse_layer_list(options.layer_list, teacher_config["num_hidden_layers"])
        if options.student_model or options.from_scratch:
            defaults = {
                **{k: teacher_config[k] for k in ("hidden_size", "num_attention_heads", "intermediate_size")},
                "num_hidden_layers": len(layers),
            }
            student, config, vocab, _ = build_bert_student(options, teacher_config, task, defaults, train_meta)
        else:
            student, config = student_from_teacher(teacher, teacher_config, layers)
            vocab = options.teacher_model / io.VOCAB_FILE
        mapping = parse_layer_map(options.pkd_layer_map)
        check_layer_mapping(config, teacher_config, mapping, "LAYER_LIST / --layer_list, or --pkd_layer_map")
        operator = "pkd_patient" if options.pkd_loss == "patient" else "layer_distill"
        terms = [
            hard_label(1 - options.kd_alpha),
            soft_labels(options.kd_alpha, options.temperature, options.pred_distill_mode),
            hidden_states(options.kd_beta, mapping, operator=operator),
        ]
        projection = fit_dense(config["hidden_size"], teacher_config["hidden_size"])
        return Built(student, config, DistillStep(student, terms, teacher, projection), vocab)

    def id_prefix(self, task: TaskSpec, options: PKDOptions) -> str:
        return f"bert-pkd_{len(options.layer_list.split(','))}"

    def id_suffix(self, options: PKDOptions) -> str:
        return f"_kd_alpha-{format_number(options.kd_alpha)}_kd_beta-{format_number(options.kd_beta)}"
