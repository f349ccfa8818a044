"""Solutions to chapter 05's checked exercises (notebooks/05_exact_vs_ann.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch05.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

import math

import numpy as np


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: every squared distance, then the k smallest per query (a stable sort keeps ties in row order)."""
    d = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(axis=2)  # [nq, n]
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


def ann_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Per query, the share of the true top k that the approximate index returned; then the mean."""
    k = truth.shape[1]
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def bit_agreement(u: np.ndarray, v: np.ndarray) -> float:
    """A random hyperplane separates u and v with probability theta / pi (Charikar, 2002)."""
    cos = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
    theta = math.acos(min(1.0, max(-1.0, cos)))
    return 1 - theta / math.pi


def candidate_probability(p: float, n_bits: int, n_tables: int) -> float:
    """All b bits agree in one table with p**b; at least one of L independent tables: 1 - (1 - p**b)**L."""
    return 1 - (1 - p**n_bits) ** n_tables


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The list IVF files each vector under: argmin of the squared distances to the centroids."""
    d = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)  # [n, nlist]
    return d.argmin(axis=1)
