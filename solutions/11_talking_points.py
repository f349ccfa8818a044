"""Solutions to chapter 11's checked exercises (notebooks/11_talking_points.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch11.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

import numpy as np


def cheapest_threshold(scores: np.ndarray, is_blocked: np.ndarray, cost_fp: float, cost_fn: float) -> float:
    """The threshold (flag ``score >= t``) with the lowest ``cost_fp * FP + cost_fn * FN``."""
    candidates = np.r_[np.unique(scores), np.inf]  # every decision a threshold can make, and "flag nothing"
    costs = [cost_fp * np.sum((scores >= t) & ~is_blocked) + cost_fn * np.sum((scores < t) & is_blocked) for t in candidates]
    best = candidates[int(np.argmin(costs))]
    return float(best) if np.isfinite(best) else 2.0  # any number above every score flags nothing


def iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two boxes (left, top, right, bottom), right and bottom exclusive."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def hybrid_score(similarities: np.ndarray, query_tags: np.ndarray, gallery_tags: np.ndarray, weight: float) -> np.ndarray:
    """The visual similarity plus ``weight`` wherever the candidate's tag matches the query's."""
    match = np.asarray(query_tags)[:, None] == np.asarray(gallery_tags)[None, :]
    return np.asarray(similarities, dtype=np.float64) + weight * match


def smooth(vectors: np.ndarray, graph: np.ndarray, alpha: float, steps: int) -> np.ndarray:
    """Unit rows, then ``steps`` times x <- unit((1 - alpha) x + alpha A x)."""
    x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for _ in range(steps):
        y = (1 - alpha) * x + alpha * (graph @ x)
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        x = np.where(norms > 0, y / np.where(norms > 0, norms, 1), x)
    return x
