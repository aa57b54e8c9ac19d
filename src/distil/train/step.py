"""The one step module every graph-trained algorithm uses: a student, an optional frozen teacher and a
list of declared loss terms.

A term names an operator of `distil.ops`, its weight and options; the step runs the student (and the
teacher, once, when a term needs it) and returns each weighted term under its own name, so the
trainer logs `hard_label_loss`, `pred_loss`, `hidden_loss`, `att_loss` … separately and back-propagates
their sum. An algorithm is then a model pairing plus a list of terms, not a copy of this module.
Hidden-state and attention terms average over real tokens only (the batch's input_mask): a batch cut to
its length bucket gives the loss it gives at max_seq_length.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

from distil.ops import att_distill, hard_label_loss, layer_distill, pkd_patient_loss, pred_distill
from distil.ops.distill import LayerMap
from distil.runtime import import_oneflow

flow = import_oneflow()

OPERATORS = ("hard_label", "pred_distill", "layer_distill", "pkd_patient", "att_distill")
TEACHER_FREE = ("hard_label",)  # the operators that read no teacher output
PER_EXAMPLE = {"pred_distill": "logits"}  # operators whose teacher input is one small vector per example
CACHED_PREFIX = "cached_"  # batch features holding a cached teacher output (distil.train.teacher_cache)
LOGITS_ONLY = ("hard_label", "pred_distill")  # operators that read nothing but the logits


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One weighted term of a recipe: `weight · operator(student outputs, teacher outputs)`.

    `project`: student hidden states go through the step's width projection (TinyBERT's fit_dense) first.
    """

    name: str
    operator: str
    weight: float = 1.0
    temperature: float = 1.0
    mode: str = "soft_ce"
    mapping: LayerMap = "uniform"
    project: bool = False

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise ValueError(f"unknown loss operator '{self.operator}' (known: {', '.join(OPERATORS)})")
        if not self.name.endswith("_loss"):
            raise ValueError(f"a loss term's name ends with _loss (the trainer sums those), got '{self.name}'")


def hard_label(weight: float = 1.0) -> LossTerm:
    """Cross-entropy with the gold labels (MSE for regression)."""
    return LossTerm("hard_label_loss", "hard_label", weight)


def soft_labels(weight: float, temperature: float = 1.0, mode: str = "soft_ce") -> LossTerm:
    """The soft-label operator on the logits (`ops.pred_distill`)."""
    return LossTerm("pred_loss", "pred_distill", weight, temperature=temperature, mode=mode)


def hidden_states(weight: float, mapping: LayerMap = "uniform", project: bool = True,
                  operator: str = "layer_distill") -> LossTerm:
    """The layer-to-layer operator on hidden states, embeddings first (`layer_distill` or `pkd_patient`)."""
    return LossTerm("hidden_loss", operator, weight, mapping=mapping, project=project)


def attention(weight: float = 1.0, mapping: LayerMap = "uniform") -> LossTerm:
    """The attention operator on pre-softmax attention scores (`ops.att_distill`)."""
    return LossTerm("att_loss", "att_distill", weight, mapping=mapping)


def model_inputs(batch: Dict[str, flow.Tensor], prefix: str = "") -> Tuple[flow.Tensor, ...]:
    """(input_ids, segment_ids, input_mask) of a batch; prefix "teacher_" picks the teacher's view."""
    return batch[f"{prefix}input_ids"], batch[f"{prefix}segment_ids"], batch[f"{prefix}input_mask"]


class DistillStep(flow.nn.Module):
    """Runs the student and, if a term needs it, the frozen teacher; returns every weighted term by name.

    `teacher_view` picks the teacher's inputs in the batch ("teacher_" for the BiLSTM's records, which
    carry the teacher's BERT view of the same example).
    """

    def __init__(self, student: flow.nn.Module, terms: Sequence[LossTerm], teacher: Optional[flow.nn.Module] = None,
                 projection: Optional[flow.nn.Module] = None, teacher_view: str = ""):
        super().__init__()
        names = [term.name for term in terms]
        if not terms or len(set(names)) != len(names):
            raise ValueError(f"a recipe needs at least one term and unique names, got {names}")
        if teacher is None and any(t.operator not in TEACHER_FREE for t in terms):
            raise ValueError(f"terms {names} need a teacher")
        self.student, self.teacher, self.fit_dense = student, teacher, projection
        self.terms, self.teacher_view = tuple(terms), teacher_view
        self.cached: Tuple[str, ...] = ()
        # a recipe on logits alone runs the models' `logits` (BERT: the last layer only on the [CLS] row)
        self.logits_only = all(term.operator in LOGITS_ONLY for term in terms)

    @property
    def needs_teacher(self) -> bool:
        return any(term.operator not in TEACHER_FREE for term in self.terms)

    def cacheable_outputs(self) -> Tuple[str, ...]:
        """The teacher outputs the terms read, if all are per-example vectors that a cache can hold; else ()."""
        operators = {term.operator for term in self.terms} - set(TEACHER_FREE)
        if not operators or not operators <= set(PER_EXAMPLE):
            return ()
        return tuple(sorted({PER_EXAMPLE[operator] for operator in operators}))

    def read_teacher_from_batch(self, outputs: Sequence[str]) -> None:
        """From now on take these teacher outputs from the batch's `cached_*` features instead of running it."""
        self.cached = tuple(outputs)

    def outputs(self, model: flow.nn.Module, inputs: Tuple[flow.Tensor, ...]) -> Dict[str, flow.Tensor]:
        """What the terms read of a model: all of its outputs, or only its logits (computed alone)."""
        return {"logits": model.logits(*inputs)} if self.logits_only else model(*inputs)

    def forward(self, batch: Dict[str, flow.Tensor]) -> Dict[str, flow.Tensor]:
        student = self.outputs(self.student, model_inputs(batch))
        teacher = None
        if self.cached:
            teacher = {name: batch[f"{CACHED_PREFIX}{name}"] for name in self.cached}
        elif self.needs_teacher:
            teacher = self.outputs(self.teacher, model_inputs(batch, self.teacher_view))
        return {term.name: term.weight * self.term_value(term, student, teacher, batch) for term in self.terms}

    def term_value(self, term: LossTerm, student: Dict, teacher: Optional[Dict],
                   batch: Dict[str, flow.Tensor]) -> flow.Tensor:
        """The unweighted value of one term on the outputs of one forward pass."""
        if term.operator == "hard_label":
            return hard_label_loss(student["logits"], batch["label_ids"])
        if term.operator == "pred_distill":
            return pred_distill(student["logits"], teacher["logits"], term.temperature, term.mode)
        if term.operator == "att_distill":
            return att_distill(student["attention_scores"], teacher["attention_scores"], term.mapping,
                               batch["input_mask"])
        reps = student["hidden_states"]
        if term.project and self.fit_dense is not None:
            reps = [self.fit_dense(h) for h in reps]
        if term.operator == "pkd_patient":
            return pkd_patient_loss(reps, teacher["hidden_states"], term.mapping)
        return layer_distill(reps, teacher["hidden_states"], term.mapping, batch["input_mask"])
