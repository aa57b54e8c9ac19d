"""炼知 (distil): knowledge distillation of BERT on GLUE, on OneFlow 0.9.

Importing the package is cheap: OneFlow (1-2 s, ~400 MB) is imported only by the parts
that need it, through :mod:`distil.runtime`.
"""

__version__ = "0.1.0"


def load_model(model_dir):
    """The model stored in a model directory (see `distil.models.io`), in eval mode."""
    from distil.models.io import load_model as _load_model

    return _load_model(model_dir)
