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
from collections.abc import Sequence

from distil.ops import att_distill, general, hard_label_loss, layer_distill, pkd_patient_loss, pred_distill, zoo
from distil.ops.distill import TEMPERATURE_SCHEDULES, LayerMap, dynamic_temperature
from distil.runtime import import_oneflow
from distil.train.schedules import WEIGHT_SCHEDULES, weight_factor

flow = import_oneflow()

# operator -> what it reads of the models: logits, hidden states (embeddings first) or attention scores
READS = {
    "hard_label": "logits",
    "pred_distill": "logits",
    "layer_distill": "hidden_states",
    "pkd_patient": "hidden_states",
    "hidden_cos": "hidden_states",
    "nst": "hidden_states",
    "mmd": "hidden_states",
    "gram": "hidden_states",
    "fsp": "hidden_states",
    "att_distill": "attention_scores",
    "att_ce": "attention_scores",
    "attention_transfer": "last_attention",
    "value_relation": "last_attention",
    "query_relation": "last_attention",
    "key_relation": "last_attention",
}
OPERATORS = tuple(READS)
MASKED_HIDDEN = {
    "layer_distill": layer_distill,
    "hidden_cos": zoo.hidden_cos,
    "nst": zoo.nst,
    "mmd": zoo.nst,
    "gram": zoo.gram,
}  # (student reps, teacher reps, layer map, input mask)
RELATIONS = {"query_relation": "queries", "key_relation": "keys", "value_relation": "values"}
SCHEDULE_PREFIX = "schedule_"  # batch features holding a scheduled weight's factor for this step
TEACHER_FREE = ("hard_label",)  # the operators that read no teacher output
PER_EXAMPLE = {"pred_distill": "logits"}  # operators whose teacher input is one small vector per example
CACHED_PREFIX = "cached_"  # batch features holding a cached teacher output (distil.train.teacher_cache)
LOGITS_ONLY = tuple(op for op, reads in READS.items() if reads == "logits")  # operators reading the logits alone


@dataclasses.dataclass(frozen=True)
class LossTerm:
    """One weighted term of a recipe: `weight · operator(student outputs, teacher outputs)`.

    `project`: student hidden states go through the step's width projection (TinyBERT's fit_dense) first.
    `weight_schedule`: the weight times a factor of training progress (`schedules.weight_factor`), fed to the
    graph each step as a batch feature; `temperature_schedule` (flsw, cwsm with `beta`, `gamma`): a temperature
    per example computed in the graph from the logits (`ops.distill.dynamic_temperature`). `pairs`: fsp's
    ((student a, b), (teacher a, b)) layer pairs.
    """

    name: str
    operator: str
    weight: float = 1.0
    temperature: float = 1.0
    mode: str = "soft_ce"
    mapping: LayerMap = "uniform"
    project: bool = False
    weight_schedule: str = "constant"
    temperature_schedule: str = "constant"
    beta: float = 1.0
    gamma: float = 1.0
    pairs: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = ()

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise ValueError(f"unknown loss operator '{self.operator}' (known: {', '.join(OPERATORS)})")
        if not self.name.endswith("_loss"):
            raise ValueError(f"a loss term's name ends with _loss (the trainer sums those), got '{self.name}'")
        if self.weight_schedule not in WEIGHT_SCHEDULES:
            raise ValueError(f"unknown weight schedule '{self.weight_schedule}' (known: {', '.join(WEIGHT_SCHEDULES)})")
        if self.temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(
                f"unknown temperature schedule '{self.temperature_schedule}' (known: "
                f"{', '.join(TEMPERATURE_SCHEDULES)})"
            )
        if self.operator == "fsp" and not self.pairs:
            raise ValueError("the fsp term needs layer pairs: ((student a, b), (teacher a, b)), ...")

    @property
    def scheduled(self) -> bool:
        return self.weight_schedule != "constant"


def hard_label(weight: float = 1.0) -> LossTerm:
    """Cross-entropy with the gold labels (MSE for regression)."""
    return LossTerm("hard_label_loss", "hard_label", weight)


def soft_labels(weight: float, temperature: float = 1.0, mode: str = "soft_ce") -> LossTerm:
    """The soft-label operator on the logits (`ops.pred_distill`)."""
    return LossTerm("pred_loss", "pred_distill", weight, temperature=temperature, mode=mode)


def hidden_states(
    weight: float, mapping: LayerMap = "uniform", project: bool = True, operator: str = "layer_distill"
) -> LossTerm:
    """The layer-to-layer operator on hidden states, embeddings first (`layer_distill` or `pkd_patient`)."""
    return LossTerm("hidden_loss", operator, weight, mapping=mapping, project=project)


def attention(weight: float = 1.0, mapping: LayerMap = "uniform") -> LossTerm:
    """The attention operator on pre-softmax attention scores (`ops.att_distill`)."""
    return LossTerm("att_loss", "att_distill", weight, mapping=mapping)


def model_inputs(batch: dict[str, flow.Tensor], prefix: str = "") -> tuple[flow.Tensor, ...]:
    """(input_ids, segment_ids, input_mask) of a batch; prefix "teacher_" picks the teacher's view."""
    return batch[f"{prefix}input_ids"], batch[f"{prefix}segment_ids"], batch[f"{prefix}input_mask"]


class DistillStep(flow.nn.Module):
    """Runs the student and, if a term needs it, the frozen teacher; returns every weighted term by name.

    `teacher_view` picks the teacher's inputs in the batch ("teacher_" for the BiLSTM's records, which
    carry the teacher's BERT view of the same example).
    """

    def __init__(
        self,
        student: flow.nn.Module,
        terms: Sequence[LossTerm],
        teacher: flow.nn.Module | None = None,
        projection: flow.nn.Module | None = None,
        teacher_view: str = "",
    ):
        super().__init__()
        names = [term.name for term in terms]
        if not terms or len(set(names)) != len(names):
            raise ValueError(f"a recipe needs at least one term and unique names, got {names}")
        if teacher is None and any(t.operator not in TEACHER_FREE for t in terms):
            raise ValueError(f"terms {names} need a teacher")
        self.student, self.teacher, self.fit_dense = student, teacher, projection
        self.terms, self.teacher_view = tuple(terms), teacher_view
        self.cached: tuple[str, ...] = ()
        # a recipe on logits alone runs the models' `logits` (BERT: the last layer only on the [CLS] row)
        self.logits_only = all(term.operator in LOGITS_ONLY for term in terms)

    @property
    def needs_teacher(self) -> bool:
        return any(term.operator not in TEACHER_FREE for term in self.terms)

    def cacheable_outputs(self) -> tuple[str, ...]:
        """The teacher outputs the terms read, if all are per-example vectors that a cache can hold; else ()."""
        operators = {term.operator for term in self.terms} - set(TEACHER_FREE)
        if not operators or not operators <= set(PER_EXAMPLE):
            return ()
        return tuple(sorted({PER_EXAMPLE[operator] for operator in operators}))

    def read_teacher_from_batch(self, outputs: Sequence[str]) -> None:
        """From now on take these teacher outputs from the batch's `cached_*` features instead of running it."""
        self.cached = tuple(outputs)

    def outputs(self, model: flow.nn.Module, inputs: tuple[flow.Tensor, ...]) -> dict[str, flow.Tensor]:
        """What the terms read of a model: all of its outputs, or only its logits (computed alone), and the last
        layer's attention relations when a MiniLM term reads them (computed alone when nothing else is read)."""
        if self.logits_only:
            return {"logits": model.logits(*inputs)}
        reads = {READS[term.operator] for term in self.terms}
        outputs = dict(model(*inputs)) if reads - {"last_attention"} else {}
        if "last_attention" in reads:
            outputs["last_attention"] = model.last_attention(*inputs)
        return outputs

    def forward(self, batch: dict[str, flow.Tensor]) -> dict[str, flow.Tensor]:
        student = self.outputs(self.student, model_inputs(batch))
        teacher = None
        if self.cached:
            teacher = {name: batch[f"{CACHED_PREFIX}{name}"] for name in self.cached}
        elif self.needs_teacher:
            teacher = self.outputs(self.teacher, model_inputs(batch, self.teacher_view))
        outputs = {}
        for term in self.terms:
            weight = term.weight
            if term.scheduled:  # every row holds the step's factor; max is exact (a mean could round)
                weight = weight * batch[f"{SCHEDULE_PREFIX}{term.name}"].max()
            outputs[term.name] = weight * self.term_value(term, student, teacher, batch, outputs)
        return outputs

    def schedule_values(self, step: int, total: int) -> dict[str, float]:
        """The batch features of scheduled weights at `step` of `total`: {schedule_<term>: factor}."""
        return {
            f"{SCHEDULE_PREFIX}{t.name}": weight_factor(t.weight_schedule, step, total)
            for t in self.terms
            if t.scheduled
        }

    def term_value(
        self,
        term: LossTerm,
        student: dict,
        teacher: dict | None,
        batch: dict[str, flow.Tensor],
        logged: dict[str, flow.Tensor] | None = None,
    ) -> flow.Tensor:
        """The unweighted value of one term on the outputs of one forward pass (a scheduled temperature's smallest
        and largest value in the batch go into `logged` as temperature_<term>_min/_max, which the trainer logs and
        does not add to the loss)."""
        mask = batch["input_mask"]
        if term.operator == "hard_label":
            return hard_label_loss(student["logits"], batch["label_ids"])
        if term.operator == "pred_distill":
            temperature = dynamic_temperature(
                term.temperature_schedule, student["logits"], teacher["logits"], term.temperature, term.beta, term.gamma
            )
            if term.temperature_schedule != "constant" and logged is not None:  # (their mean is the base by design)
                logged[f"temperature_{term.name[: -len('_loss')]}_min"] = temperature.min()
                logged[f"temperature_{term.name[: -len('_loss')]}_max"] = temperature.max()
            return pred_distill(student["logits"], teacher["logits"], temperature, term.mode)
        if term.operator == "att_distill":
            return att_distill(student["attention_scores"], teacher["attention_scores"], term.mapping, mask)
        if term.operator == "att_ce":
            return zoo.att_ce(student["attention_scores"], teacher["attention_scores"], term.mapping, mask)
        if term.operator == "attention_transfer":
            return general.attention_transfer(
                student["last_attention"]["attention_scores"], teacher["last_attention"]["attention_scores"], mask
            )
        if term.operator in RELATIONS:  # MiniLM(v2): relation heads = the student's attention heads
            part = RELATIONS[term.operator]
            return general.self_relation(
                student["last_attention"][part],
                teacher["last_attention"][part],
                self.student.config.num_attention_heads,
                mask,
            )
        reps = student["hidden_states"]
        if term.project and self.fit_dense is not None:
            reps = [self.fit_dense(h) for h in reps]
        if term.operator == "pkd_patient":
            return pkd_patient_loss(reps, teacher["hidden_states"], term.mapping)
        if term.operator == "fsp":
            return zoo.fsp(reps, teacher["hidden_states"], term.pairs, mask)
        return MASKED_HIDDEN[term.operator](reps, teacher["hidden_states"], term.mapping, mask)
