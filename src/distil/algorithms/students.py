"""What the distillation algorithms share: their common options, a frozen teacher, BERT students, the
width projection.

The teacher is loaded once, switched to eval mode (no dropout) and frozen (original: it ran with
dropout on inside the training job). A BERT student is built from `--student_*` sizes, or taken
from `--student_model` (a model dir or a Hugging Face folder, e.g. a general TinyBERT).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from distil.algorithms.options import BertStudentOptions, StudentOptions, parse_layer_list
from distil.data.ofrecord import check_vocab
from distil.data.tasks import TaskSpec
from distil.errors import UsageError
from distil.models import io
from distil.ops import layer_mapping
from distil.runtime import import_oneflow

flow = import_oneflow()
log = logging.getLogger(__name__)


def teacher_dirs(options: StudentOptions) -> list[Path]:
    """`--teacher_model` as a list: one model directory, or several separated by commas."""
    if not options.teacher_model:
        return []
    return [Path(p.strip()) for p in str(options.teacher_model).split(",") if p.strip()]


def load_teacher(
    options: StudentOptions,
    task: TaskSpec,
    meta: dict[str, Any],
    vocab_meta_key: str = "vocab",
    several: bool = False,
    weights: list[float] | None = None,
) -> tuple[flow.nn.Module, dict[str, Any]]:
    """The fine-tuned teacher of `--teacher_model`, frozen and in eval mode, checked against task and data; with
    `several` (algorithms whose teacher terms read logits only), a comma list of teachers as one
    `TeacherEnsemble` (the first one's config)."""
    paths = teacher_dirs(options)
    if not paths:
        raise UsageError(
            "--teacher_model is required: the fine-tuned teacher's model directory "
            "(bash scripts/run_train_teacher.sh writes one)"
        )
    if len(paths) > 1 and not several:
        raise UsageError(
            f"--teacher_model names {len(paths)} teachers; several teachers average their logits, so "
            "they serve algorithms whose teacher terms read logits only (kd, or a recipe of such terms)"
        )
    rng = flow.get_rng_state()  # loading draws random initial weights: the student's must not depend on it
    try:
        loaded = [_load_one_teacher(path, task, meta, vocab_meta_key) for path in paths]
    finally:
        flow.set_rng_state(rng)
    if len(loaded) == 1:
        return loaded[0]
    return TeacherEnsemble([teacher for teacher, _ in loaded], weights, paths), loaded[0][1]


def load_pretrained_teacher(path: Path, meta: dict[str, Any]) -> tuple[flow.nn.Module, dict[str, Any]]:
    """A pretrained (not fine-tuned) BERT teacher for general distillation, frozen and in eval mode: a model dir
    or a Hugging Face folder whose vocabulary is the data's; its head, never read, stays as initialised."""
    pretrained = io.read_pretrained(path)
    check_vocab(pretrained.vocab_file, meta, f"the teacher {path}")
    if pretrained.config.get("model_type", "bert") != "bert":
        raise UsageError(f"--teacher_model {path} is not a BERT model")
    config = {**pretrained.config, "num_labels": pretrained.config.get("num_labels") or 2}
    rng = flow.get_rng_state()  # (its random head must not move the student's seed)
    try:
        teacher = io.build_model(config)
    finally:
        flow.set_rng_state(rng)
    skip = io.absent_parts(pretrained.state, ("bert.pooler.", "classifier."))
    io.load_state(teacher, pretrained.state, str(path), skip)
    for parameter in teacher.parameters():
        parameter.requires_grad = False
    return teacher.eval(), config


def _load_one_teacher(
    path: Path, task: TaskSpec, meta: dict[str, Any], vocab_meta_key: str
) -> tuple[flow.nn.Module, dict[str, Any]]:
    config = io.read_config(path)
    teacher_task = (config.get("task") or {}).get("name")
    if teacher_task != task.name:
        raise UsageError(f"the teacher {path} was fine-tuned for {teacher_task}, not {task.name}")
    check_vocab(
        Path(path) / io.VOCAB_FILE,
        {"vocab": meta.get(vocab_meta_key, {}), "source": meta.get("source")},
        f"the teacher {path}",
    )
    teacher = io.load_model(path)
    for parameter in teacher.parameters():
        parameter.requires_grad = False
    return teacher, config["model"]


class TeacherEnsemble(flow.nn.Module):
    """Several fine-tuned teachers of one task as one teacher: the weighted mean of their logits, weights
    normalised to sum to 1 (equal by default), as TextBrewer's MultiTeacherDistiller averages them. It has
    logits only: hidden-state and attention terms compare against one teacher's layers."""

    exportable = False  # one ONNX file holds one teacher: --teacher_cache onnxruntime refuses an ensemble

    def __init__(self, teachers: list[flow.nn.Module], weights: list[float] | None, names: list[Path]):
        super().__init__()
        weights = list(weights) if weights else [1.0] * len(teachers)
        if len(weights) != len(teachers) or min(weights) <= 0:
            raise UsageError(f"{len(teachers)} teachers need as many positive weights, got {weights}")
        labels = {int(t.classifier.weight.shape[0]) for t in teachers}
        if len(labels) != 1:
            raise UsageError(f"the teachers {', '.join(map(str, names))} disagree on the number of labels")
        self.members = flow.nn.ModuleList(teachers)
        self.weights = [w / sum(weights) for w in weights]
        self.eval()

    def logits(self, *inputs: flow.Tensor) -> flow.Tensor:
        total = None
        for weight, teacher in zip(self.weights, self.members):
            logits = teacher.logits(*inputs) * weight
            total = logits if total is None else total + logits
        return total

    def forward(self, *inputs: flow.Tensor) -> dict[str, flow.Tensor]:
        return {"logits": self.logits(*inputs)}


def build_bert_student(
    options: BertStudentOptions,
    teacher_config: dict[str, Any],
    task: TaskSpec,
    defaults: dict[str, int],
    meta: dict[str, Any],
    init: Path | None = None,
) -> tuple[flow.nn.Module, dict[str, Any], Path, dict[str, Any]]:
    """(student, its config, its vocab file, a checkpoint's fit_dense weights): random init with the teacher's
    vocab, or from `init` (default `--student_model`)."""
    init = init or options.student_model
    if not init:
        config = {**teacher_config, **options.sizes(defaults), "num_labels": task.num_labels}
        return io.build_model(config), config, teacher_dirs(options)[0] / io.VOCAB_FILE, {}
    pretrained = io.read_pretrained(Path(init))
    check_vocab(pretrained.vocab_file, meta, f"the student {init}")
    if pretrained.config.get("model_type", "bert") != "bert":
        raise UsageError(f"--student_model {init} is not a BERT model")
    config = {**pretrained.config, "num_labels": task.num_labels}
    student = io.build_model(config)
    keep_head = pretrained.task == task.name
    skip = io.absent_parts(pretrained.state) + (() if keep_head else ("classifier.",))
    io.load_state(student, pretrained.state, str(init), skip)
    return student, config, pretrained.vocab_file, pretrained.projection


def fit_dense(
    student_width: int, teacher_width: int, state: dict[str, Any] | None = None, source: str = ""
) -> flow.nn.Linear | None:
    """The recipe's width projection of student hidden states (TinyBERT's fit_dense), or None when widths match.

    `state` ({"weight", "bias"}, e.g. a General TinyBERT's own) initialises it; else N(0, 0.02) and zeros.
    original: one was created (and saved) for every BERT student, even where unused or 768 -> 768.
    """
    if student_width == teacher_width:
        return None
    layer = flow.nn.Linear(student_width, teacher_width)
    if not state:
        flow.nn.init.normal_(layer.weight, mean=0.0, std=0.02)
        flow.nn.init.zeros_(layer.bias)
        return layer
    want = {"weight": (teacher_width, student_width), "bias": (teacher_width,)}
    got = {k: tuple(np.shape(v)) for k, v in state.items()}
    if got != want:
        raise UsageError(f"{source}: its fit_dense has shapes {got}, this student and teacher need {want}")
    io.load_state(layer, state, source)
    log.info("fit_dense loaded from %s", source)
    return layer


def check_layer_mapping(
    student_config: dict[str, Any],
    teacher_config: dict[str, Any],
    mapping: Any = "uniform",
    flag: str = "--student_num_hidden_layers",
) -> None:
    """Fail before training (not at graph compile time) when the layers cannot be mapped."""
    try:
        layer_mapping(student_config["num_hidden_layers"], teacher_config["num_hidden_layers"], mapping)
    except ValueError as e:
        raise UsageError(
            f"{str(e).split('; ')[0]}; choose a student layer count that divides the teacher's ({flag})"
        ) from None


def check_same_heads(student_config: dict[str, Any], teacher_config: dict[str, Any], flag: str) -> None:
    """Fail before training when attention is to be compared head by head and the head counts differ."""
    heads = (student_config["num_attention_heads"], teacher_config["num_attention_heads"])
    if heads[0] != heads[1]:
        raise UsageError(
            f"TinyBERT compares attention head by head: the student has {heads[0]} heads, the teacher {heads[1]} "
            f"({flag})"
        )


def student_from_teacher(
    teacher: flow.nn.Module, teacher_config: dict[str, Any], layers: list[int]
) -> tuple[flow.nn.Module, dict[str, Any]]:
    """A BERT whose layer j is a copy of teacher layer layers[j]; embeddings, pooler, classifier copied too."""
    config = {**teacher_config, "num_hidden_layers": len(layers)}
    student = io.build_model(config)
    state = {}
    for name, value in teacher.state_dict().items():
        if name.startswith("bert.encoder.layer."):
            index, rest = name[len("bert.encoder.layer.") :].split(".", 1)
            if int(index) in layers:
                state[f"bert.encoder.layer.{layers.index(int(index))}.{rest}"] = value
        else:
            state[name] = value
    io.load_state(student, state, "the teacher")
    return student, config


def generate_student(teacher_dir: Path, student_dir: Path, layer_list: str) -> dict[str, Any]:
    """Write the student built from teacher layers as a model dir (original: bert-pkd_generate_student_model.py)."""
    teacher = io.load_model(teacher_dir)
    config = io.read_config(teacher_dir)
    layers = parse_layer_list(layer_list, config["model"]["num_hidden_layers"])
    student, model_config = student_from_teacher(teacher, config["model"], layers)
    io.write_new_model_dir(
        student_dir,
        student,
        model_config,
        teacher_dir / io.VOCAB_FILE,
        {"name": "bert_pkd_init", "teacher": str(teacher_dir), "layer_list": layers},
        task=config["task"],
        data=config["data"],
    )
    return {"model_dir": str(student_dir), "teacher": str(teacher_dir), "layer_list": layers}
