"""The hard-label (gold label) loss: cross-entropy for classification, MSE for regression (STS-B)."""

from __future__ import annotations

from distil.runtime import import_oneflow

flow = import_oneflow()


def hard_label_loss(logits: flow.Tensor, labels: flow.Tensor) -> flow.Tensor:
    """Mean loss of a batch.

    Args:
        logits: (B, C) scores; C == 1 means a regression output.
        labels: (B, 1) int32 class ids, or float32 targets for regression.
    """
    if logits.shape[-1] == 1:
        return flow.nn.functional.mse_loss(logits.reshape(-1), labels.reshape(-1).to(flow.float32))
    return flow.nn.functional.cross_entropy(logits, labels.reshape(-1).to(flow.int64))
