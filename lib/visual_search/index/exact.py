"""Exact (linear, brute-force) search: compare the query with every stored vector.

O(N x D) per query, and right up to float32 rounding, so it is the reference every
approximate index is measured against (recall@k = overlap with this index's top k).

Written for speed without a Python loop over the base vectors:

* **One matrix product per block of queries.** For l2,
  ``||q - x||^2 = ||q||^2 - 2 q.x + ||x||^2``. The ``||q||^2`` term is the same for
  every x, so ranking needs only ``||x||^2 - 2 q.x``, which is one dot product of
  the augmented query ``[q, 1]`` with the stored row ``[-2x, ||x||^2]``. Storing
  that row once at ``add`` time turns the whole search into a single BLAS GEMM
  (the same trick Faiss's IndexFlatL2 uses). For ip and cosine the stored row is
  ``-x``, so the product is already "smaller is better".
* **argpartition, not argsort.** Only the k best of N are sorted.
* **Blocks of queries** keep the ``[block, N]`` score matrix near 64 MB.

The price of the expansion (Faiss pays it too): for data far from the origin,
``||x||^2`` is much larger than ``||q - x||^2``, and float32 cancellation can blur
the order of very close neighbours. Centre such data (subtract the mean) first;
normalised embeddings and [0, 1] pixels are fine.
"""

from __future__ import annotations

import numpy as np

from visual_search.index.base import BaseIndex
from visual_search.index.kernels import add_query_norms, query_form, stored_form, topk_smallest
from visual_search.index.registry import register
from visual_search.index.validation import as_float32_matrix, check_stored_form, expect_array

#: Scores per block (block_rows x N floats): 16M floats = 64 MB.
_BLOCK_FLOATS = 16_000_000


@register
class ExactIndex(BaseIndex):
    """Brute-force k-NN with NumPy GEMM; supports l2, ip and cosine.

    Memory: ``4 * (dim + 1)`` bytes per vector for l2 (the stored ``||x||^2``),
    ``4 * dim`` for ip and cosine, plus 8 for the id.
    """

    kind = "exact"
    exact = True

    def _width(self) -> int:
        return self.dim + 1 if self.metric == "l2" else self.dim

    def _empty_state(self):
        # Stored transposed, [width, N] C-contiguous: BLAS streams it about 15 % faster
        # than the transpose of a row-major [N, width] matrix.
        return {"matrix_t": np.empty((self._width(), 0), dtype=np.float32)}

    def _add(self, state, x, ids):
        return {"matrix_t": np.concatenate([state["matrix_t"], stored_form(x, self.metric).T], axis=1)}

    def _search(self, state, q, k, settings, info):
        matrix_t = state["matrix_t"]
        block = max(1, _BLOCK_FLOATS // matrix_t.shape[1])
        keys = np.empty((len(q), k), np.float32)
        rows = np.empty((len(q), k), np.int64)
        augmented = query_form(q, self.metric)
        for start in range(0, len(q), block):
            scores = augmented[start : start + block] @ matrix_t  # [block, N], one GEMM
            rows[start : start + block], keys[start : start + block] = topk_smallest(scores, k)
        return add_query_norms(keys, q, self.metric), self._rows_to_ids(state, rows)

    def _remove(self, state, drop):
        return {"matrix_t": np.ascontiguousarray(state["matrix_t"][:, ~drop])}

    def _structure_bytes(self, state):
        return state["matrix_t"].nbytes

    def _arrays(self, state):
        return {"matrix_t": state["matrix_t"]}

    def _restore(self, arrays, n, where):
        matrix_t = expect_array(arrays, "matrix_t", np.float32, (self._width(), n), where)
        check_stored_form(matrix_t.T, self.metric, "matrix_t", where)
        return {"matrix_t": matrix_t}


def exact_search(queries, base, k: int, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """One-shot exact k-NN of ``queries`` against ``base``: build an ``ExactIndex``, add, search.

    The library's one exact search, for when there is no index to keep (ranking an
    evaluation set, a baseline, a ground truth). Ids are row numbers of ``base``;
    scores follow ``BaseIndex``'s convention, best first, and equal scores go to the
    lower id.

    Args:
        queries: float ``[Q, D]``.
        base: float ``[N, D]``.
        k: results per query (capped at N).
        metric: ``"cosine"`` (default), ``"ip"`` (same ranking for unit vectors, without
            re-normalising) or ``"l2"``.

    Returns:
        ``(scores float32 [Q, min(k, N)], ids int64 [Q, min(k, N)])``.
    """
    base = as_float32_matrix(base, "base")
    return ExactIndex(base.shape[1], metric).add(base).search(queries, k)
