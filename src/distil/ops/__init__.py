"""Losses: the hard-label loss every algorithm shares, and (with the distillation issue) the four
distillation operators."""

from distil.ops.losses import hard_label_loss

__all__ = ["hard_label_loss"]
