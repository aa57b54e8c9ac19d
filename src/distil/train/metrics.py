"""GLUE metrics in NumPy: accuracy, MCC, F1, Pearson and Spearman (as scikit-learn / SciPy define them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(pred == labels)) if len(labels) else 0.0


def matthews_corrcoef(pred: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class MCC from the confusion matrix; 0.0 when undefined (a constant prediction)."""
    classes = np.union1d(pred, labels)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (np.searchsorted(classes, labels), np.searchsorted(classes, pred)), 1)
    t, p = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denominator) if denominator else 0.0


def f1(pred: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of the positive class (MRPC, QQP)."""
    tp = np.sum((pred == positive) & (labels == positive))
    fp = np.sum((pred == positive) & (labels != positive))
    fn = np.sum((pred != positive) & (labels == positive))
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denominator) if denominator else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (scipy.stats.rankdata's default)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_ranks(x), _ranks(y))


def compute_metrics(names: Sequence[str], logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics from (N, C) logits and (N, 1) labels; C == 1 is regression."""
    labels = labels.reshape(-1)
    if logits.shape[-1] == 1:
        scores = logits.reshape(-1).astype(np.float64)
        values = {
            "pearson": pearson(scores, labels.astype(np.float64)),
            "spearman": spearman(scores, labels.astype(np.float64)),
        }
        values["mse"] = float(np.mean((scores - labels) ** 2))
        return {k: values[k] for k in (*names, "mse") if k in values}
    pred = logits.argmax(axis=-1)
    labels = labels.astype(np.int64)
    table = {"accuracy": accuracy, "mcc": matthews_corrcoef, "f1": f1}
    return {name: table[name](pred, labels) for name in names}
