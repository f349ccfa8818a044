"""k-means with k-means++ initialisation, written by hand for IVF and PQ.

Lloyd's algorithm alternates two steps until the centroids stop moving:

1. **assign** each point to its nearest centroid (one GEMM per chunk, using
   ``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2`` and dropping the ``||x||^2`` that
   every centroid shares);
2. **update** each centroid to the mean of its points.

k-means++ (Arthur & Vassilvitskii, 2007) picks the first centroids far apart:
each new one is drawn with probability proportional to its squared distance
from the nearest centroid chosen so far. That gives an O(log k)-competitive
start and, in practice, fewer iterations and fewer empty clusters than a
uniform random start.

An empty cluster (no point assigned) is re-seeded with the point that is
currently worst served (farthest from its centroid), so all k lists stay in use.
"""

from __future__ import annotations

import numpy as np

from visual_search.errors import VectorIndexError

#: Pairwise scores per chunk in ``assign`` (chunk_rows x k floats): 64 MB.
_CHUNK_FLOATS = 16_000_000


def assign(x: np.ndarray, centroids: np.ndarray, centroid_sq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid for each row of ``x`` by squared L2.

    Returns:
        ``(labels int64 [n], squared distances float32 [n])``.
    """
    if centroid_sq is None:
        centroid_sq = np.einsum("ij,ij->i", centroids, centroids)
    labels = np.empty(len(x), np.int64)
    dists = np.empty(len(x), np.float32)
    chunk = max(1, _CHUNK_FLOATS // max(1, len(centroids)))
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        scores = centroid_sq[None, :] - 2.0 * (part @ centroids.T)  # ||c||^2 - 2 x.c
        labels[start : start + chunk] = best = scores.argmin(axis=1)
        own = scores[np.arange(len(part)), best] + np.einsum("ij,ij->i", part, part)
        dists[start : start + chunk] = np.maximum(own, 0)
    return labels, dists


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k initial centroids drawn by D^2 sampling (k-means++). ``x`` must have at least k rows."""
    n = len(x)
    centroids = np.empty((k, x.shape[1]), np.float32)
    x_sq = np.einsum("ij,ij->i", x, x)
    centroids[0] = x[rng.integers(n)]
    closest = np.maximum(x_sq - 2.0 * (x @ centroids[0]) + centroids[0] @ centroids[0], 0)
    for i in range(1, k):
        cumulative = np.cumsum(closest, dtype=np.float64)
        if cumulative[-1] <= 0:  # every point coincides with a chosen centroid: any point will do
            pick = int(rng.integers(n))
        else:
            pick = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), n - 1)
        centroids[i] = x[pick]
        np.minimum(closest, np.maximum(x_sq - 2.0 * (x @ centroids[i]) + centroids[i] @ centroids[i], 0), out=closest)
    return centroids


def kmeans(
    x: np.ndarray,
    k: int,
    n_iter: int = 20,
    seed: int = 0,
    tol: float = 1e-4,
    max_points: int | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Cluster ``x`` into ``k`` groups.

    Args:
        x: float32 ``[n, d]`` with ``n >= k``.
        k: number of centroids.
        n_iter: maximum Lloyd iterations.
        seed: for the k-means++ draws and the subsample.
        tol: stop when the mean squared distance improves by less than this fraction.
        max_points: train on a random subsample of at most this many points (Faiss
            caps training at 256 points per centroid for the same reason: more
            points barely move the centroids but cost time linearly).

    Returns:
        ``(centroids float32 [k, d], inertia per iteration)``, where inertia is
        the mean squared distance of a point to its centroid.
    """
    if len(x) < k:
        raise VectorIndexError(f"k-means needs at least k={k} points, got {len(x)}")
    rng = np.random.default_rng(seed)
    if max_points is not None and len(x) > max(max_points, k):  # never fewer points than centroids
        x = x[np.sort(rng.choice(len(x), max(max_points, k), replace=False))]
    x = np.ascontiguousarray(x, dtype=np.float32)
    centroids = kmeans_plus_plus(x, k, rng)
    history: list[float] = []
    for _ in range(n_iter):
        labels, dists = assign(x, centroids)
        history.append(float(dists.mean()))
        counts = np.bincount(labels, minlength=k)
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        filled = counts > 0
        sums = np.add.reduceat(x[order], starts[filled], axis=0, dtype=np.float64)
        centroids[filled] = (sums / counts[filled, None]).astype(np.float32)
        empty = np.flatnonzero(~filled)
        if len(empty):  # re-seed with the worst-served points
            centroids[empty] = x[np.argsort(dists)[::-1][: len(empty)]]
        if len(history) > 1 and history[-2] - history[-1] <= tol * history[-2] and not len(empty):
            break
    labels, dists = assign(x, centroids)
    history.append(float(dists.mean()))
    return centroids, history
