"""Solutions to chapter 03's checked exercises (notebooks/03_contrastive_training_data.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch03.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

import math

import numpy as np


def build_candidates(positive_ids: np.ndarray, negative_ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row b: the n - 1 negatives in order, with the positive inserted at column labels[b]."""
    batch, n_negatives = negative_ids.shape
    candidates = np.empty((batch, n_negatives + 1), dtype=np.int64)
    is_positive = np.arange(n_negatives + 1)[None, :] == labels[:, None]
    candidates[is_positive] = positive_ids  # one True per row, rows in order
    candidates[~is_positive] = negative_ids.reshape(-1)  # the other columns, row by row, in order
    return candidates


def ips_weights(positions: np.ndarray, bias: float) -> np.ndarray:
    """Examination at 0-based position p is 1 / (p + 1) ** bias; the weight is its inverse."""
    return (np.asarray(positions, dtype=float) + 1.0) ** bias


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size: how many equally weighted samples carry as much information."""
    w = np.asarray(weights, dtype=float)
    return float(w.sum() ** 2 / (w**2).sum())


def false_negatives(n_classes: int, per_class: int, n: int) -> tuple[float, float, float]:
    """Random negatives: (rate per negative, expected count per data point, P(at least one))."""
    pool = n_classes * per_class - 2  # every image but the query and its positive
    same = per_class - 2  # of those, the ones that share the query's class
    rate = same / pool
    p_none = math.comb(pool - same, n - 1) / math.comb(pool, n - 1)  # n - 1 draws without replacement
    return rate, (n - 1) * rate, 1.0 - p_none
