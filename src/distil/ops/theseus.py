"""The module-replacement operator of BERT-of-Theseus (Xu et al. 2020).

Successor module j replaces the block of predecessor layers [j·r, (j+1)·r). In training, each
block independently runs its successor with probability `replacing_rate`, else its frozen
predecessor layers; only the sampled branch is computed (so training runs eagerly). At
inference only successors run. Frozen predecessors still run in training mode, dropout included,
as in the paper's code (the whole model is in train mode there). original: both branches computed
and selected with `where`, a constant rate, and trainable LayerNorms in the "frozen" predecessor.
"""

from __future__ import annotations

from distil.models.bert import additive_attention_mask
from distil.ops.losses import hard_label_loss
from distil.runtime import import_oneflow

flow = import_oneflow()

FROZEN = ("bert.embeddings.", "bert.pooler.", "classifier.")  # shared with the predecessor, never trained


def linear_replacing_rate(step: int, k: float, b: float) -> float:
    """The paper's curriculum: min(1, k·t + b) at training step t."""
    return min(1.0, k * step + b)


class TheseusEncoder(flow.nn.Module):
    """Predecessor layers (frozen) and successor layers (trained); `forward` mixes them per block."""

    def __init__(self, predecessors: flow.nn.ModuleList, successors: flow.nn.ModuleList):
        super().__init__()
        if len(predecessors) % len(successors):
            raise ValueError(
                f"{len(predecessors)} predecessor layers cannot be split into {len(successors)} "
                "equal blocks; choose a successor count that divides it"
            )
        self.block = len(predecessors) // len(successors)
        self.predecessors, self.successors = predecessors, successors
        for parameter in predecessors.parameters():
            parameter.requires_grad = False
        self.train()  # a teacher's layers arrive in eval mode; predecessors follow the encoder's mode

    def forward(
        self, hidden: flow.Tensor, additive_mask: flow.Tensor, replacing_rate: float
    ) -> tuple[flow.Tensor, list[flow.Tensor], list[flow.Tensor]]:
        """(last hidden state, hidden states after each layer run, their attention scores)."""
        hidden_states, scores = [hidden], []
        for j, successor in enumerate(self.successors):
            replace = not self.training or float(flow.rand(1).numpy()[0]) < replacing_rate
            layers = [successor] if replace else self.predecessors[j * self.block : (j + 1) * self.block]
            for layer in layers:
                hidden, layer_scores = layer(hidden, additive_mask)
                hidden_states.append(hidden)
                scores.append(layer_scores)
        return hidden, hidden_states, scores


def freeze_shared(model: flow.nn.Module) -> None:
    """Freeze what a successor shares with its predecessor: embeddings, pooler, classifier."""
    for name, parameter in model.named_parameters():
        if name.startswith(FROZEN):
            parameter.requires_grad = False


class TheseusStep(flow.nn.Module):
    """One replacement-training step: the successor's embeddings/head around a mixed encoder."""

    def __init__(self, successor: flow.nn.Module, teacher: flow.nn.Module):
        super().__init__()
        self.successor = successor
        self.encoder = TheseusEncoder(teacher.bert.encoder.layer, successor.bert.encoder.layer)

    def forward(self, batch: dict[str, flow.Tensor], replacing_rate: float) -> dict[str, flow.Tensor]:
        bert = self.successor.bert
        hidden = bert.embeddings(batch["input_ids"], batch["segment_ids"])
        hidden, _, _ = self.encoder(hidden, additive_attention_mask(batch["input_mask"]), replacing_rate)
        logits = self.successor.classifier(self.successor.dropout(bert.pooler(hidden)))
        return {"hard_label_loss": hard_label_loss(logits, batch["label_ids"])}
