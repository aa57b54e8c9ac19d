"""Every algorithm's options, declared once: name, type, default, help and validation per field.

`python -m distil train` builds its flags from these dataclasses (so this module imports no OneFlow),
an algorithm reads typed fields (`options.kd_alpha`), and config.json records `as_json()`. Values are
checked when an instance is created, before anything is trained or written.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distil.errors import UsageError

PRED_MODES = ("soft_ce", "kl", "mse")  # distil.ops.pred_distill's modes (a test keeps the two equal)


def str2bool(value: str) -> bool:
    """A real boolean flag value (original: `type=bool` made '--do_lower_case False' true)."""
    lowered = str(value).lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got '{value}'")


def option(
    default: Any,
    help: str,
    choices: Sequence[str] = (),
    parse: Callable | None = None,
    bounds: tuple[float | None, float | None] = (None, None),
) -> Any:
    """A field of an options dataclass: its default, help text, allowed values or inclusive bounds, and how
    the command line parses it."""
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "choices": tuple(choices),
            "bounds": bounds,
            "parse": parse or (str2bool if isinstance(default, bool) else type(default)),
        },
    )


def parse_layer_list(text: str, teacher_layers: int, flag: str = "--layer_list") -> list[int]:
    """'2,6,10' -> [2, 6, 10]: 0-based teacher layers, each below `teacher_layers`."""
    try:
        layers = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} '{text}' is not a comma list of layer numbers") from None
    if not layers or any(not 0 <= i < teacher_layers for i in layers):
        raise UsageError(f"{flag} '{text}': layers must be 0-based indices below {teacher_layers}")
    return layers


def parse_layer_map(text: str, flag: str = "--pkd_layer_map") -> str | list[int]:
    """'uniform', 'last', or a comma list of teacher indices (0 = embeddings) for student 0..L."""
    return text if text in ("uniform", "last") else parse_layer_list(text, 10**6, flag)


@dataclasses.dataclass(frozen=True)
class Options:
    """An algorithm's options: one field per flag (see `option`)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value, choices = getattr(self, field.name), field.metadata["choices"]
            if choices and value not in choices:
                raise UsageError(f"--{field.name} must be one of {', '.join(choices)}, got '{value}'")
            low, high = field.metadata["bounds"]
            if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
                raise UsageError(
                    f"--{field.name} must be in [{'-inf' if low is None else low}, "
                    f"{'inf' if high is None else high}], got {value}"
                )
        self.check()

    def check(self) -> None:
        """Checks across fields or of formats (subclasses)."""

    def as_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class TeacherOptions(Options):
    pretrained_model: Path | None = option(
        None, "a model dir or a Hugging Face BERT folder to fine-tune (PRETRAINED_MODEL)", parse=Path
    )


@dataclasses.dataclass(frozen=True)
class StudentOptions(Options):
    """What every student has: its teacher, its initial weights, the soft-label settings."""

    teacher_model: Path | None = option(
        None,
        "the fine-tuned teacher's model dir (FT_BERT_BASE_DIR; default: "
        "the one run_train_teacher.sh saves for the task)",
        parse=Path,
    )
    student_model: Path | None = option(None, "initial student (TMP_STUDENT_DIR): a model dir or HF folder", parse=Path)
    temperature: float = option(1.0, "soft-label temperature T (> 0)", bounds=(1e-6, None))
    pred_distill_mode: str = option(
        "soft_ce", "soft-label loss: soft_ce (original), kl (Hinton, with T^2) or mse (logit MSE)", choices=PRED_MODES
    )


@dataclasses.dataclass(frozen=True)
class BertStudentOptions(StudentOptions):
    """A BERT student's sizes (unset: the algorithm's student; ignored with --student_model)."""

    student_num_hidden_layers: int | None = option(None, "BERT student layers", parse=int, bounds=(1, None))
    student_hidden_size: int | None = option(None, "BERT student width", parse=int, bounds=(1, None))
    student_num_attention_heads: int | None = option(None, "BERT student heads", parse=int, bounds=(1, None))
    student_intermediate_size: int | None = option(None, "BERT student FFN width", parse=int, bounds=(1, None))

    def sizes(self, defaults: dict[str, int]) -> dict[str, int]:
        return {name: getattr(self, f"student_{name}") or value for name, value in defaults.items()}


@dataclasses.dataclass(frozen=True)
class KDOptions(BertStudentOptions):
    kd_alpha: float = option(0.8, "weight of the gold-label term (the soft term gets 1 - kd_alpha)", bounds=(0, 1))


@dataclasses.dataclass(frozen=True)
class LstmOptions(StudentOptions):
    kd_alpha: float = option(
        0.7, "weight of the soft-label term (the gold-label term gets 1 - kd_alpha)", bounds=(0, 1)
    )
    lstm_seq_length: int = option(32, "data folder <TASK>_lstm_<N>", bounds=(1, None))
    lstm_pair_mode: str = option(
        "separate", "sentence pairs: separate (paper) or joint encoding", choices=("separate", "joint")
    )
    lstm_embedding_size: int = option(300, "word embedding size", bounds=(1, None))
    lstm_hidden_size: int = option(300, "LSTM units per direction", bounds=(1, None))
    lstm_fc_size: int = option(400, "ReLU layer size", bounds=(1, None))


@dataclasses.dataclass(frozen=True)
class PKDOptions(BertStudentOptions):
    kd_alpha: float = option(0.2, "weight of the soft-label term (gold labels get 1 - kd_alpha)", bounds=(0, 1))
    kd_beta: float = option(10.0, "weight of the layer term", bounds=(0, None))
    layer_list: str = option("2,6,10", "0-based teacher layers that initialise the student (LAYER_LIST)")
    from_scratch: bool = option(False, "a random student instead of teacher layers")
    pkd_loss: str = option(
        "layer_mse", "layer term: layer_mse (original) or patient (paper)", choices=("layer_mse", "patient")
    )
    pkd_layer_map: str = option(
        "uniform",
        "student layer i -> teacher layer: uniform (original; PKD-skip), last "
        "(PKD-last) or L+1 comma-separated teacher indices, 0 = embeddings",
    )

    def check(self) -> None:
        parse_layer_list(self.layer_list, 10**6)
        parse_layer_map(self.pkd_layer_map)


@dataclasses.dataclass(frozen=True)
class TinyBertOptions(BertStudentOptions):
    tinybert_mode: str = option(
        "one_stage", "one_stage (original scripts) or two_stage (paper)", choices=("one_stage", "two_stage")
    )
    intermediate_epochs: int | None = option(
        None,
        "two_stage: epochs of intermediate-layer distillation (paper: 20; 10 for MNLI, QQP, QNLI; 50 for CoLA)",
        parse=int,
        bounds=(1, None),
    )
    intermediate_learning_rate: float = option(
        5e-5, "two_stage: learning rate of intermediate-layer distillation (paper 5e-5)", bounds=(1e-12, None)
    )
    aug_train: bool = option(False, "train on the augmented train_aug split")


@dataclasses.dataclass(frozen=True)
class TheseusOptions(StudentOptions):
    replacing_rate: float = option(
        0.5, "probability of running a successor module (b of the linear schedule)", bounds=(1e-6, 1)
    )
    replace_scheduler: str = option(
        "constant", "constant, or linear: min(1, k*t + b), b = replacing_rate", choices=("constant", "linear")
    )
    scheduler_k: float | None = option(
        None, "linear: slope k per step (default: reaches 1 at the last step)", parse=float, bounds=(0, None)
    )
    successor_layers: int = option(3, "successor layers", bounds=(1, None))
    successor_init: str | None = option(
        None, "teacher layers that initialise the successors (default 0,1,..)", parse=str
    )
    successor_epochs: int | None = option(
        None, "epochs of successor-only fine-tuning (default: --epochs)", parse=int, bounds=(1, None)
    )
    successor_learning_rate: float | None = option(
        None, "its learning rate (default: --learning_rate)", parse=float, bounds=(1e-12, None)
    )

    def check(self) -> None:
        if (
            self.successor_init is not None
            and len(parse_layer_list(self.successor_init, 10**6, "--successor_init")) != self.successor_layers
        ):
            raise UsageError(
                f"--successor_init '{self.successor_init}' lists a layer count other than "
                f"--successor_layers {self.successor_layers}"
            )


@dataclasses.dataclass(frozen=True)
class RecipeOptions(BertStudentOptions):
    recipe: Path | None = option(
        None,
        "recipe: the TOML file declaring student, teachers, stages and loss terms (RECIPE; see recipes/)",
        parse=Path,
    )

    def check(self) -> None:
        if self.recipe is None:
            raise UsageError("--algorithm recipe needs --recipe FILE.toml (RECIPE): see recipes/")
        from distil.algorithms.recipe import read_recipe

        read_recipe(self.recipe)


@dataclasses.dataclass(frozen=True)
class GeneralOptions(BertStudentOptions):
    """General distillation: `teacher_model` is a pretrained (not fine-tuned) BERT, a model dir or an HF folder."""

    layer_map: str = option(
        "uniform",
        "general_tinybert: student layer i -> teacher layer: uniform (i·L_t/L_s, "
        "the layer counts dividing), last, or L+1 comma-separated teacher indices, "
        "0 = embeddings",
    )

    def check(self) -> None:
        parse_layer_map(self.layer_map, "--layer_map")


OPTIONS: dict[str, type[Options]] = {
    "teacher": TeacherOptions,
    "kd": KDOptions,
    "distilled_lstm": LstmOptions,
    "bert_pkd": PKDOptions,
    "tinybert": TinyBertOptions,
    "theseus": TheseusOptions,
    "recipe": RecipeOptions,
    "general_tinybert": GeneralOptions,
    "general_minilm": GeneralOptions,
}
