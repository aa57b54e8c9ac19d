"""BERT-PKD (Sun et al. 2019): a 3-layer BERT initialised from teacher layers learns soft labels and hidden states.

Loss (the original's): (1 − kd_alpha) · CE(gold) + kd_alpha · pred_distill + kd_beta · layer_distill,
the layer term being the MSE of full hidden-state sequences, embeddings included, student layer i
against teacher layer 4i (12 -> 3); kd_alpha 0.2, kd_beta 10. `--pkd_loss patient` uses the
paper's normalised-[CLS] patient loss instead, scaled as the official code does (a mean over
batch × layers × hidden, so the paper's β of 100-500 applies, not the layer-MSE's 10). The student
starts from teacher layers `--layer_list` (default 2,6,10, 0-based, as the original) plus the
teacher's embeddings, pooler and classifier, unless `--from_scratch`. Original: examples/bert-pkd/task_student_bert-pkd.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from distil.algorithms.base import Algorithm, Built, RunConfig, format_number, table
from distil.algorithms.students import (build_bert_student, check_layer_mapping, fit_dense, load_teacher,
                                        model_inputs)
from distil.data.tasks import TaskSpec
from distil.errors import UsageError
from distil.models import io
from distil.ops import hard_label_loss, layer_distill, pkd_patient_loss, pred_distill
from distil.runtime import import_oneflow
from distil.train.settings import TrainSettings

flow = import_oneflow()


def parse_layer_list(text: str, teacher_layers: int) -> List[int]:
    try:
        layers = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--layer_list '{text}' is not a comma list of layer numbers") from None
    if not layers or any(not 0 <= i < teacher_layers for i in layers):
        raise UsageError(f"--layer_list '{text}': layers must be 0-based indices below {teacher_layers}")
    return layers


def student_from_teacher(teacher: flow.nn.Module, teacher_config: Dict[str, Any],
                         layers: List[int]) -> Tuple[flow.nn.Module, Dict[str, Any]]:
    """A BERT whose layer j is a copy of teacher layer layers[j]; embeddings, pooler, classifier copied too."""
    config = {**teacher_config, "num_hidden_layers": len(layers)}
    student = io.build_model(config)
    state = {}
    for name, value in teacher.state_dict().items():
        if name.startswith("bert.encoder.layer."):
            index, rest = name[len("bert.encoder.layer."):].split(".", 1)
            if int(index) in layers:
                state[f"bert.encoder.layer.{layers.index(int(index))}.{rest}"] = value
        else:
            state[name] = value
    io.load_state(student, state, "the teacher")
    return student, config


def generate_student(teacher_dir: Path, student_dir: Path, layer_list: str) -> Dict[str, Any]:
    """Write the student built from teacher layers as a model dir (original: bert-pkd_generate_student_model.py)."""
    teacher = io.load_model(teacher_dir)
    config = io.read_config(teacher_dir)
    layers = parse_layer_list(layer_list, config["model"]["num_hidden_layers"])
    student, model_config = student_from_teacher(teacher, config["model"], layers)
    io.write_new_model_dir(student_dir, student, model_config, teacher_dir / io.VOCAB_FILE,
                           {"name": "bert_pkd_init", "teacher": str(teacher_dir), "layer_list": layers},
                           task=config["task"], data=config["data"])
    return {"model_dir": str(student_dir), "teacher": str(teacher_dir), "layer_list": layers}


class PKDStep(flow.nn.Module):
    def __init__(self, student, teacher, projection, options: Dict[str, Any]):
        super().__init__()
        self.student, self.teacher, self.fit_dense = student, teacher, projection
        self.alpha, self.beta = options.get("kd_alpha", 0.2), options.get("kd_beta", 10.0)
        self.temperature = options.get("temperature", 1.0)
        self.mode = options.get("pred_distill_mode", "soft_ce")
        self.patient = options.get("pkd_loss", "layer_mse") == "patient"

    def forward(self, batch: Dict[str, flow.Tensor]) -> Dict[str, flow.Tensor]:
        out, teacher_out = self.student(*model_inputs(batch)), self.teacher(*model_inputs(batch))
        reps = out["hidden_states"]
        if self.fit_dense is not None:
            reps = [self.fit_dense(h) for h in reps]
        layer_loss = (pkd_patient_loss if self.patient else layer_distill)(reps, teacher_out["hidden_states"])
        return {"hard_label_loss": (1 - self.alpha) * hard_label_loss(out["logits"], batch["label_ids"]),
                "pred_distill_loss": self.alpha * pred_distill(out["logits"], teacher_out["logits"],
                                                               self.temperature, self.mode),
                "layer_distill_loss": self.beta * layer_loss}


class BertPKD(Algorithm):
    name = "bert_pkd"
    eval_script = "run_eval_student_bert_pkd.sh"
    task_settings = table({"CoLA": (5e-5, 100, 0.0001), "MRPC": (2e-5, 5, 0.001), "SST-2": (2e-5, 4, 0.0001),
                           "RTE": (3e-5, 5, 0.0001)})

    def build(self, run: RunConfig, task: TaskSpec, train_meta: Dict[str, Any]) -> Built:
        options = run.options
        if options.get("pkd_loss", "layer_mse") not in ("layer_mse", "patient"):
            raise UsageError(f"--pkd_loss must be layer_mse or patient, got {options['pkd_loss']}")
        teacher, teacher_config = load_teacher(options, task, train_meta)
        layers = parse_layer_list(options.get("layer_list", "2,6,10"), teacher_config["num_hidden_layers"])
        if options.get("student_model") or options.get("from_scratch"):
            defaults = {**{k: teacher_config[k] for k in ("hidden_size", "num_attention_heads", "intermediate_size")},
                        "num_hidden_layers": len(layers)}
            student, config, vocab = build_bert_student(options, teacher_config, task, defaults, train_meta)
        else:
            student, config = student_from_teacher(teacher, teacher_config, layers)
            vocab = options["teacher_model"] / io.VOCAB_FILE
        check_layer_mapping(config, teacher_config)
        projection = fit_dense(config["hidden_size"], teacher_config["hidden_size"])
        return Built(student, config, PKDStep(student, teacher, projection, options), vocab)

    def model_id(self, task: TaskSpec, settings: TrainSettings, options: Dict[str, Any]) -> str:
        return (f"{super().model_id(task, settings, options)}_kd_alpha-{format_number(options.get('kd_alpha', 0.2))}"
                f"_kd_beta-{format_number(options.get('kd_beta', 10.0))}")

    def id_prefix(self, task: TaskSpec, options: Dict[str, Any]) -> str:
        return f"bert-pkd_{len(str(options.get('layer_list', '2,6,10')).split(','))}"
