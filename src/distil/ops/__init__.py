"""The four distillation operators and the hard-label loss every algorithm shares.

soft-label: `pred_distill`; layer-to-layer: `layer_distill` (and the paper's `pkd_patient_loss`);
attention: `att_distill`; module replacement: `TheseusEncoder` (in `distil.ops.theseus`).
"""

from distil.ops.distill import att_distill, layer_distill, layer_mapping, pkd_patient_loss, pred_distill
from distil.ops.losses import hard_label_loss
from distil.ops.theseus import TheseusEncoder

__all__ = [
    "TheseusEncoder",
    "att_distill",
    "hard_label_loss",
    "layer_distill",
    "layer_mapping",
    "pkd_patient_loss",
    "pred_distill",
]
