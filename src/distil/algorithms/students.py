"""What the distillation algorithms share: a frozen teacher, BERT students, the width projection.

The teacher is loaded once, switched to eval mode (no dropout) and frozen (original: it ran with
dropout on inside the training job). A BERT student is built from `--student_*` sizes, or taken
from `--student_model` (a model dir or a Hugging Face folder, e.g. a general TinyBERT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from distil.algorithms.base import check_vocab
from distil.data.tasks import TaskSpec
from distil.errors import UsageError
from distil.models import io
from distil.ops import hard_label_loss, layer_mapping, pred_distill
from distil.runtime import import_oneflow

flow = import_oneflow()

STUDENT_FLAGS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")


def load_teacher(options: Dict[str, Any], task: TaskSpec, meta: Dict[str, Any],
                 vocab_meta_key: str = "vocab") -> Tuple[flow.nn.Module, Dict[str, Any]]:
    """The fine-tuned teacher of `--teacher_model`, frozen and in eval mode, checked against task and data."""
    path = options.get("teacher_model")
    if not path:
        raise UsageError("--teacher_model is required: the fine-tuned teacher's model directory "
                         "(bash scripts/run_train_teacher.sh writes one)")
    config = io.read_config(path)
    teacher_task = (config.get("task") or {}).get("name")
    if teacher_task != task.name:
        raise UsageError(f"the teacher {path} was fine-tuned for {teacher_task}, not {task.name}")
    check_vocab(Path(path) / io.VOCAB_FILE, {"vocab": meta.get(vocab_meta_key, {}), "source": meta.get("source")},
                f"the teacher {path}")
    teacher = io.load_model(path)
    for parameter in teacher.parameters():
        parameter.requires_grad = False
    return teacher, config["model"]


def _sizes_from_options(options: Dict[str, Any], defaults: Dict[str, int]) -> Dict[str, int]:
    return {name: int(options.get(f"student_{name}") or defaults[name]) for name in STUDENT_FLAGS}


def build_bert_student(options: Dict[str, Any], teacher_config: Dict[str, Any], task: TaskSpec,
                       defaults: Dict[str, int], meta: Dict[str, Any]) -> Tuple[flow.nn.Module, Dict[str, Any], Path]:
    """(student, its config, its vocab file): random init with the teacher's vocab, or `--student_model`."""
    init = options.get("student_model")
    if not init:
        config = {**teacher_config, **_sizes_from_options(options, defaults), "num_labels": task.num_labels}
        return io.build_model(config), config, Path(options["teacher_model"]) / io.VOCAB_FILE
    config, state, vocab_file, init_task = io.read_pretrained(Path(init))
    check_vocab(vocab_file, meta, f"the student {init}")
    if config.get("model_type", "bert") != "bert":
        raise UsageError(f"--student_model {init} is not a BERT model")
    config = {**config, "num_labels": task.num_labels}
    student = io.build_model(config)
    keep_head = init_task == task.name
    skip = io.absent_parts(state) + (() if keep_head else ("classifier.",))
    io.load_state(student, {k: v for k, v in state.items() if not k.startswith("fit_dense")}, str(init), skip)
    return student, config, vocab_file


def fit_dense(student_width: int, teacher_width: int) -> Optional[flow.nn.Linear]:
    """The recipe's width projection of student hidden states (TinyBERT's fit_dense), or None when widths match.

    original: one was created (and saved) for every BERT student, even where unused or 768 -> 768.
    """
    if student_width == teacher_width:
        return None
    layer = flow.nn.Linear(student_width, teacher_width)
    flow.nn.init.normal_(layer.weight, mean=0.0, std=0.02)
    flow.nn.init.zeros_(layer.bias)
    return layer


def check_layer_mapping(student_config: Dict[str, Any], teacher_config: Dict[str, Any]) -> None:
    """Fail before training (not at graph compile time) when the layers cannot be mapped uniformly."""
    try:
        layer_mapping(student_config["num_hidden_layers"], teacher_config["num_hidden_layers"])
    except ValueError as e:
        raise UsageError(f"{str(e).split('; ')[0]}; choose a student layer count that divides the teacher's "
                         "(--student_num_hidden_layers, or LAYER_LIST / --layer_list for BERT-PKD)") from None


def model_inputs(batch: Dict[str, flow.Tensor], prefix: str = "") -> Tuple[flow.Tensor, ...]:
    """(input_ids, segment_ids, input_mask) of a batch; prefix "teacher_" picks the teacher's view."""
    return batch[f"{prefix}input_ids"], batch[f"{prefix}segment_ids"], batch[f"{prefix}input_mask"]


class SoftLabelStep(flow.nn.Module):
    """hard_weight · CE(gold) + soft_weight · pred_distill: the loss of KD and of Distilled-BiLSTM.

    `teacher_prefix` picks the teacher's view of the batch ("teacher_" for the BiLSTM's records).
    """

    def __init__(self, student, teacher, hard_weight: float, soft_weight: float, options: Dict[str, Any],
                 teacher_prefix: str = ""):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.hard_weight, self.soft_weight, self.teacher_prefix = hard_weight, soft_weight, teacher_prefix
        self.temperature = options.get("temperature", 1.0)
        self.mode = options.get("pred_distill_mode", "soft_ce")

    def forward(self, batch: Dict[str, flow.Tensor]) -> Dict[str, flow.Tensor]:
        logits = self.student(*model_inputs(batch))["logits"]
        teacher_logits = self.teacher(*model_inputs(batch, self.teacher_prefix))["logits"]
        return {"hard_label_loss": self.hard_weight * hard_label_loss(logits, batch["label_ids"]),
                "pred_distill_loss": self.soft_weight * pred_distill(logits, teacher_logits, self.temperature,
                                                                     self.mode)}
