"""The shared numeric kernels: the GEMM form of a distance, the bounded top-k, and ``merge_topk``.

Inside the package every index works with one sign: *smaller is better*. A
"key" is a squared L2 distance, or minus a similarity. These kernels all work
on keys; ``BaseIndex`` turns keys back into public scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stored_form(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows to store so that one dot product with ``query_form(q)`` is a smaller-is-better key.

    l2: ``[-2x, ||x||^2]``, because ``||q - x||^2 = ||q||^2 + (||x||^2 - 2 q.x)`` and the
    ``||q||^2`` term is the same for every x (add it back to the k results only).
    ip and cosine: ``-x``, so the key is minus the similarity.
    """
    if metric == "l2":
        return np.hstack([-2.0 * x, np.einsum("ij,ij->i", x, x)[:, None]]).astype(np.float32)
    return -x


def query_form(q: np.ndarray, metric: str) -> np.ndarray:
    """The query side of ``stored_form``: ``[q, 1]`` for l2, ``q`` otherwise."""
    return np.hstack([q, np.ones((len(q), 1), np.float32)]) if metric == "l2" else q


def add_query_norms(keys: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """For l2, add back the ``||q||^2`` that ``stored_form`` left out (clipping round-off below 0)."""
    if metric != "l2":
        return keys
    return np.maximum(keys + np.einsum("ij,ij->i", q, q)[:, None], 0)


def topk_smallest(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the positions and values of the ``k`` smallest keys, sorted ascending.

    Returns:
        ``(positions int64 [rows, min(k, n)], values [rows, min(k, n)])``, ascending by value;
        equal values come in position order, so ties go to the lower position.

    Two strategies, same values:

    * small rows: ``argpartition`` finds the k smallest in linear time, and only
      those k are sorted: O(n + k log k) per row instead of O(n log n);
    * long rows (exact search over thousands of vectors): cut each row into
      ``c >= 4k`` chunks and take each chunk's minimum (a fast SIMD pass). The k-th
      smallest of those c minima, tau, is an upper bound on the row's k-th smallest
      key, because the k chunk minima below it are k distinct keys <= tau. Keys above
      tau cannot be in the top k, and on real data only about k keys per row survive
      the comparison, so the expensive sort touches a handful of numbers per row.
      This costs about a quarter of ``argpartition`` over the whole row.
    """
    rows, n = keys.shape
    k = min(k, n)
    chunks = max(64, 4 * k)
    if n < 16 * chunks or k == 0:
        if k < n:
            part = np.argpartition(keys, k - 1, axis=1)[:, :k] if k else np.empty((rows, 0), np.int64)
        else:
            part = np.broadcast_to(np.arange(n), keys.shape).copy()
        vals = np.take_along_axis(keys, part, axis=1)
        if 0 < k < n:
            # argpartition keeps an arbitrary subset of keys tied at the k-th value; where a tie
            # crosses the cut (rare on real data), redo that row with a stable sort.
            kth = vals.max(axis=1, keepdims=True)
            crossing = np.flatnonzero((keys == kth).sum(axis=1) > (vals == kth).sum(axis=1))
            if len(crossing):
                part[crossing] = np.argsort(keys[crossing], axis=1, kind="stable")[:, :k]
                vals[crossing] = np.take_along_axis(keys[crossing], part[crossing], axis=1)
        order = np.lexsort((part, vals), axis=1) if k else part
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)
    starts = np.linspace(0, n, chunks, endpoint=False).astype(np.int64)
    minima = np.minimum.reduceat(keys, starts, axis=1)
    tau = np.partition(minima, k - 1, axis=1)[:, k - 1 : k]
    flat = np.flatnonzero(keys <= tau)  # the survivors, as flat positions (row-major)
    row, col = flat // n, flat % n
    val = keys.ravel()[flat]
    order = np.lexsort((col, val, row))  # by row, then key, then position
    row, col, val = row[order], col[order], val[order]
    rank = np.arange(len(row)) - np.searchsorted(row, row, side="left")
    top = rank < k
    positions = np.full((rows, k), -1, np.int64)  # only NaN keys (refused on the way in) leave slots unfilled
    values = np.full((rows, k), np.inf, keys.dtype)
    positions[row[top], rank[top]] = col[top]
    values[row[top], rank[top]] = val[top]
    return positions, values


def merge_topk(
    scores: np.ndarray | Sequence[np.ndarray],
    ids: np.ndarray | Sequence[np.ndarray],
    k: int,
    larger_is_better: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge partial result lists into one top-k per query.

    The same step merges a KD-tree's running best with a new leaf, an IVF
    index's per-list results, and the answers of the shards of a sharded index.
    Entries with id -1 (padding: "nothing here") never beat a real result.

    Args:
        scores: float ``[nq, m]``, or a sequence of ``[nq, m_i]`` parts to concatenate.
        ids: int64, the same shapes.
        k: results to keep per query (the width is ``min(k, total m)``).
        larger_is_better: False for keys and distances (ascending), True for similarities.

    Returns:
        ``(scores [nq, min(k, m)], ids [nq, min(k, m)])``, best first; ties go to the
        entry that came first.
    """
    if not isinstance(scores, np.ndarray):
        scores, ids = np.concatenate(list(scores), axis=1), np.concatenate(list(ids), axis=1)
    keys = -scores if larger_is_better else scores.copy()
    keys[ids < 0] = np.inf
    pos, best = topk_smallest(keys, k)
    out_ids = np.take_along_axis(ids, pos, axis=1)
    best = -best if larger_is_better else best
    return best, out_ids
