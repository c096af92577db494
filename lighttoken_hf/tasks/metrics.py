"""The official GLUE metrics, implemented locally (no ``evaluate``: it downloads metric scripts).

Every function takes array-likes of equal length and returns a Python ``float`` in the GLUE
convention (fractions, not percentages): accuracy, binary F1 of the positive class (label 1),
Matthews correlation, Pearson and Spearman correlation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

__all__ = ["accuracy", "f1_binary", "matthews_corrcoef", "pearson", "spearman"]


def _pair(
    predictions: Sequence | np.ndarray, references: Sequence | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions).reshape(-1)
    r = np.asarray(references).reshape(-1)
    if p.shape != r.shape:
        raise ValueError(f"predictions ({p.size}) and references ({r.size}) must have the same length")
    if p.size == 0:
        raise ValueError("cannot compute a metric on zero examples: the evaluation set is empty")
    return p, r


def accuracy(predictions: Sequence | np.ndarray, references: Sequence | np.ndarray) -> float:
    """Share of predictions equal to the reference label."""
    p, r = _pair(predictions, references)
    return float(np.mean(p == r))


def f1_binary(
    predictions: Sequence | np.ndarray, references: Sequence | np.ndarray, positive: int = 1
) -> float:
    """F1 of the ``positive`` class: ``2 TP / (2 TP + FP + FN)``; 0.0 when there is no positive at all."""
    p, r = _pair(predictions, references)
    tp = float(np.sum((p == positive) & (r == positive)))
    fp = float(np.sum((p == positive) & (r != positive)))
    fn = float(np.sum((p != positive) & (r == positive)))
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def matthews_corrcoef(predictions: Sequence | np.ndarray, references: Sequence | np.ndarray) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin 2004; binary MCC for two classes).

    With confusion matrix ``C`` (rows: reference, columns: prediction), ``t = C.sum(1)``,
    ``p = C.sum(0)``, ``c = trace(C)`` and ``s = C.sum()``:
    ``(c s - t.p) / sqrt((s^2 - p.p) (s^2 - t.t))``, and 0.0 when a factor of the denominator is 0
    (e.g. a constant prediction), as in scikit-learn.
    """
    p, r = _pair(predictions, references)
    classes, codes = np.unique(np.concatenate([r, p]), return_inverse=True)
    k = classes.size
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (codes[: r.size], codes[r.size :]), 1)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - q @ q) * (s * s - t @ t))
    return float((c * s - t @ q) / denominator) if denominator else 0.0


def pearson(predictions: Sequence | np.ndarray, references: Sequence | np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant (the correlation is undefined)."""
    p, r = _pair(predictions, references)
    p = p.astype(np.float64) - p.mean()
    r = r.astype(np.float64) - r.mean()
    denominator = np.sqrt((p @ p) * (r @ r))
    return float((p @ r) / denominator) if denominator else 0.0


def spearman(predictions: Sequence | np.ndarray, references: Sequence | np.ndarray) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks (ties get their average rank)."""
    p, r = _pair(predictions, references)
    return pearson(rankdata(p), rankdata(r))
