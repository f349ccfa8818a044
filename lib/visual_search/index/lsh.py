"""Locality-sensitive hashing with random hyperplanes (SimHash), multi-probe, exact re-ranking.

**Hash.** Draw ``n_bits`` random Gaussian directions r. A vector's code is one
bit per direction: ``r . (x - mean) > 0``. Two vectors at angle theta get the
same bit with probability ``1 - theta / pi`` (Charikar, 2002), so near vectors
tend to share whole codes and land in the same *bucket*. Subtracting the data
mean first (``train``) matters: Fashion-MNIST pixels are all positive, so
hyperplanes through the origin would barely separate anything.

**Tables.** One table of ``n_bits`` bits is too selective (a true neighbour
differs in some bit and is missed) or, with fewer bits, too crowded. The fix is
``n_tables`` independent tables: a vector is a candidate if it shares a bucket
with the query in *any* table.

**Multi-probe** (Lv et al., 2007). Besides its own bucket, a query also probes
the ``n_probes`` buckets it most nearly fell into in each table: those reached
by flipping the one or two bits whose hyperplanes pass closest to the query
(the smallest ``|r . q|``). Probing buys the recall of many more tables
without their memory.

**Re-ranking.** Candidates are scored with the exact metric on the stored
vectors, and the best k are returned. Recall is lost only when a true
neighbour is never a candidate; speed comes from scoring a few thousand
candidates instead of all N.

Everything is vectorised over the queries: hashing is one GEMM; bucket look-up
is ``searchsorted`` on each table's sorted codes; the union of candidates is
one ``np.unique`` over (query, row) pairs.
"""

from __future__ import annotations

import numpy as np

from visual_search.index.base import BaseIndex, VectorIndexError, register, topk_smallest

#: Pair-scoring work per chunk of queries (candidate pairs x dim floats).
_CHUNK_FLOATS = 24_000_000


def probe_masks(margins: np.ndarray, n_probes: int) -> np.ndarray:
    """The bit-flip masks of the ``n_probes`` most promising extra buckets.

    Args:
        margins: ``[nq, n_tables, n_bits]``, each query's distance ``|r . q|`` to each hyperplane.
        n_probes: extra buckets per table.

    Returns:
        int64 ``[nq, n_tables, 1 + n_probes]`` XOR masks, starting with 0 (the query's own bucket).
        Candidates are all single and double flips, scored by the sum of squared margins of
        the flipped bits (a flip across a near plane is likelier to find the true neighbour).
    """
    nq, n_tables, n_bits = margins.shape
    i, j = np.triu_indices(n_bits, k=1)
    masks = np.concatenate([np.left_shift(1, np.arange(n_bits)), np.left_shift(1, i) | np.left_shift(1, j)]).astype(np.int64)
    sq = margins.astype(np.float32) ** 2
    scores = np.concatenate([sq, sq[..., i] + sq[..., j]], axis=-1)  # [nq, L, n_single + n_double]
    n_probes = min(n_probes, scores.shape[-1])
    if n_probes == 0:
        return np.zeros((nq, n_tables, 1), np.int64)
    best = np.argpartition(scores, n_probes - 1, axis=-1)[..., :n_probes]
    return np.concatenate([np.zeros((nq, n_tables, 1), np.int64), masks[best]], axis=-1)


@register
class LSHIndex(BaseIndex):
    """Random-hyperplane LSH with multi-probe and exact re-ranking. Metrics: l2, ip, cosine.

    Args:
        n_tables: independent hash tables (more: higher recall, more memory).
        n_bits: bits per table, at most 62 (more: smaller buckets, faster, lower recall).
        n_probes: extra buckets probed per table (0 = classic LSH).
        seed: for the random hyperplanes.
    """

    kind = "lsh"
    needs_training = True  # the mean that centres the data

    def __init__(self, dim: int, metric: str = "l2", n_tables: int = 8, n_bits: int = 16, n_probes: int = 8, seed: int = 0) -> None:
        super().__init__(dim, metric)
        for name, value, low, high in (("n_tables", n_tables, 1, 1024), ("n_bits", n_bits, 1, 62), ("n_probes", n_probes, 0, 10**6)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise VectorIndexError(f"lsh: {name} must be an integer in [{low}, {high}], got {value!r}")
        self.n_tables, self.n_bits, self.n_probes, self.seed = int(n_tables), int(n_bits), int(n_probes), int(seed)
        self.planes = np.random.default_rng(seed).standard_normal((n_tables * n_bits, dim)).astype(np.float32)
        self.mean = np.zeros(dim, np.float32)
        width = dim + 1 if metric == "l2" else dim
        self._matrix = np.empty((0, width), np.float32)
        self._sorted_codes = np.empty((self.n_tables, 0), np.int64)  # per table: codes, ascending
        self._sorted_rows = np.empty((self.n_tables, 0), np.int64)  # per table: the row of each code

    def params(self) -> dict:
        return {"n_tables": self.n_tables, "n_bits": self.n_bits, "n_probes": self.n_probes, "seed": self.seed}

    def _train(self, x: np.ndarray) -> None:
        self.mean = x.mean(axis=0).astype(np.float32)

    def _projections(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) @ self.planes.T).reshape(len(x), self.n_tables, self.n_bits)

    def hash(self, x: np.ndarray) -> np.ndarray:
        """int64 bucket codes ``[n, n_tables]`` of (already prepared) vectors."""
        return self._pack(self._projections(x) > 0)

    def _pack(self, bits: np.ndarray) -> np.ndarray:
        return (bits.astype(np.int64) << np.arange(self.n_bits)).sum(axis=-1)

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        stored = np.hstack([-2.0 * x, np.einsum("ij,ij->i", x, x)[:, None]]).astype(np.float32) if self.metric == "l2" else -x
        self._matrix = np.concatenate([self._matrix, stored])
        codes = np.concatenate([self._sorted_codes, self.hash(x).T], axis=1)
        all_rows = np.concatenate([self._sorted_rows, np.broadcast_to(rows, (self.n_tables, len(rows)))], axis=1)
        order = np.argsort(codes, axis=1, kind="stable")
        self._sorted_codes = np.take_along_axis(codes, order, axis=1)
        self._sorted_rows = np.take_along_axis(all_rows, order, axis=1)

    def candidates(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (query, row) pair that shares a probed bucket, deduplicated and sorted by query.

        Returns:
            ``(query index int64 [P], row int64 [P])``.
        """
        projections = self._projections(q)
        probes = self._pack(projections > 0)[..., None] ^ probe_masks(np.abs(projections), self.n_probes)  # [nq, L, 1+p]
        query_parts, row_parts = [], []
        for t in range(self.n_tables):
            lo = np.searchsorted(self._sorted_codes[t], probes[:, t], side="left").ravel()
            hi = np.searchsorted(self._sorted_codes[t], probes[:, t], side="right").ravel()
            lengths = hi - lo
            total = int(lengths.sum())
            if not total:
                continue
            # Flatten the ranges lo[i]:hi[i] into one index array without a Python loop.
            starts = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
            row_parts.append(self._sorted_rows[t][starts + np.arange(total)])
            query_parts.append(np.repeat(np.repeat(np.arange(len(q)), probes.shape[2]), lengths))
        if not row_parts:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        n = max(len(self._matrix), 1)
        pairs = np.unique(np.concatenate(query_parts) * n + np.concatenate(row_parts))
        return pairs // n, pairs % n

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        keys = np.full((len(q), k), np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        augmented = np.hstack([q, np.ones((len(q), 1), np.float32)]) if self.metric == "l2" else q
        self.candidates_per_query = 0.0
        chunk = 256
        for start in range(0, len(q), chunk):
            part = slice(start, start + chunk)
            who, cand = self.candidates(q[part])
            self.candidates_per_query += len(cand) / len(q)
            if not len(cand):
                continue
            scores = np.empty(len(cand), np.float32)
            step = max(1, _CHUNK_FLOATS // self._matrix.shape[1])
            for s in range(0, len(cand), step):  # exact re-ranking of every candidate
                scores[s : s + step] = np.einsum("pd,pd->p", augmented[part][who[s : s + step]], self._matrix[cand[s : s + step]])
            # Best k per query among a variable number of candidates: sort by (query, score), then rank within query.
            order = np.lexsort((scores, who))
            who, cand, scores = who[order], cand[order], scores[order]
            first = np.searchsorted(who, who, side="left")
            rank = np.arange(len(who)) - first
            top = rank < k
            keys[start + who[top], rank[top]] = scores[top]
            rows[start + who[top], rank[top]] = cand[top]
        if self.metric == "l2":
            keys = np.maximum(keys + np.einsum("ij,ij->i", q, q)[:, None], 0)
        return keys, self._rows_to_ids(rows)

    def _remove(self, drop: np.ndarray) -> None:
        renumber = np.cumsum(~drop) - 1
        keep = ~drop[self._sorted_rows]  # [n_tables, n]; each table keeps the same number of rows
        n_keep = int((~drop).sum())
        self._sorted_codes = self._sorted_codes[keep].reshape(self.n_tables, n_keep)
        self._sorted_rows = renumber[self._sorted_rows[keep]].reshape(self.n_tables, n_keep)
        self._matrix = self._matrix[~drop]

    def _structure_bytes(self) -> int:
        return self._matrix.nbytes + self._sorted_codes.nbytes + self._sorted_rows.nbytes + self.planes.nbytes + self.mean.nbytes

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "matrix": self._matrix, "codes": self._sorted_codes, "rows": self._sorted_rows}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.mean, self._matrix = arrays["mean"], arrays["matrix"]
        self._sorted_codes, self._sorted_rows = arrays["codes"], arrays["rows"]
