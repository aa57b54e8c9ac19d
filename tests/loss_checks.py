"""What the loss tests of ops/general.py and ops/zoo.py share: the NumPy log-softmax of their references, and the
noise they write into padded positions to show that a masked loss ignores them."""

from __future__ import annotations

import numpy as np

PADDING_NOISE = 30.0


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def scramble_padded_rows(a: np.ndarray, b: int, n: int, rng: np.random.Generator, axis: int = 1) -> None:
    """Noise, in place, in example `b`'s positions n.. along `axis` (1: (B, S, H) rows; 2: (B, heads, S, d))."""
    index = (b, *([slice(None)] * (axis - 1)), slice(n, None))
    a[index] = rng.normal(0.0, PADDING_NOISE, a[index].shape)


def scramble_padded_scores(a: np.ndarray, b: int, n: int, rng: np.random.Generator) -> None:
    """Noise, in place, in example `b`'s attention scores (B, heads, S, S) of padded queries, and at its padded
    keys -10000 + noise (the model's additive mask)."""
    a[b, :, n:, :] = rng.normal(0.0, PADDING_NOISE, a[b, :, n:, :].shape)
    a[b, :, :, n:] = -10000.0 + rng.normal(0.0, PADDING_NOISE, a[b, :, :, n:].shape)
