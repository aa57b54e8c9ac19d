"""炼知 (distil): knowledge distillation of BERT on GLUE, on OneFlow 0.9.

Importing the package is cheap: OneFlow (1-2 s, ~400 MB) is imported only by the parts
that need it, through :mod:`distil.runtime`.
"""

import os

__version__ = "0.1.0"

# Read by numpy's OpenBLAS when numpy is first imported: its idle threads then sleep at once instead
# of spinning for ~0.1 s on the cores that OneFlow's own (single-threaded) kernels need between two
# matrix products (see distil.blas). Measured on 2 cores: the 4L-312 training step 3.30 -> 2.97 s.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def load_model(model_dir):
    """The model stored in a model directory (see `distil.models.io`), in eval mode."""
    from distil.models.io import load_model as _load_model

    return _load_model(model_dir)
