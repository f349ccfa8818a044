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

**Re-ranking, in two steps.** The candidates' full sketches (all
``n_tables * n_bits`` bits, stored per vector) are compared with the query's by
Hamming distance: a few bytes per candidate, and the fraction of differing bits
estimates the angle. Only the ``rerank`` closest in Hamming distance are then
scored with the exact metric on the stored vectors. Recall is lost when a true
neighbour is never a candidate, or is dropped by the Hamming filter; speed
comes from touching a few hundred full vectors instead of all N.

Hashing and bucket look-up are vectorised over the queries (one GEMM, then
``searchsorted`` on each table's sorted codes); the rest is a short loop per
query, which is the clearest way to write "candidates, filter, re-rank".
"""

from __future__ import annotations

import numpy as np

from visual_search.index.base import (
    BaseIndex,
    VectorIndexError,
    as_float32_matrix,
    query_form,
    register,
    stored_form,
    topk_smallest,
)

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
        rerank: candidates kept by the Hamming filter and scored exactly (0 = score all).
        seed: for the random hyperplanes.
    """

    kind = "lsh"
    needs_training = True  # the mean that centres the data

    def __init__(self, dim: int, metric: str = "l2", n_tables: int = 16, n_bits: int = 16, n_probes: int = 16, rerank: int = 400, seed: int = 0) -> None:
        super().__init__(dim, metric)
        for name, value, low, high in (("n_tables", n_tables, 1, 1024), ("n_bits", n_bits, 1, 62), ("n_probes", n_probes, 0, 10**6), ("rerank", rerank, 0, 10**9)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise VectorIndexError(f"lsh: {name} must be an integer in [{low}, {high}], got {value!r}")
        self.n_tables, self.n_bits, self.n_probes, self.rerank, self.seed = int(n_tables), int(n_bits), int(n_probes), int(rerank), int(seed)
        self.planes = np.random.default_rng(seed).standard_normal((n_tables * n_bits, dim)).astype(np.float32)
        self.mean = np.zeros(dim, np.float32)
        width = dim + 1 if metric == "l2" else dim
        self._matrix = np.empty((0, width), np.float32)
        self._sorted_codes = np.empty((self.n_tables, 0), np.int64)  # per table: codes, ascending
        self._sorted_rows = np.empty((self.n_tables, 0), np.int64)  # per table: the row of each code
        # Per row, all n_tables * n_bits bits packed 64 to a word: the sketch the Hamming filter compares.
        self._sketch = np.empty((0, -(-self.n_tables * self.n_bits // 64)), np.uint64)
        #: Mean candidates per query in the last search, before and after the Hamming filter.
        self.candidates_per_query, self.reranked_per_query = float("nan"), float("nan")

    def params(self) -> dict:
        return {"n_tables": self.n_tables, "n_bits": self.n_bits, "n_probes": self.n_probes, "rerank": self.rerank, "seed": self.seed}

    def _train(self, x: np.ndarray) -> None:
        self.mean = x.mean(axis=0).astype(np.float32)

    def _projections(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) @ self.planes.T).reshape(len(x), self.n_tables, self.n_bits)

    def _sketch_of(self, bits: np.ndarray) -> np.ndarray:
        """Pack ``[n, n_tables, n_bits]`` booleans into uint64 words ``[n, ceil(n_tables * n_bits / 64)]``."""
        flat = bits.reshape(len(bits), -1)
        words = self._sketch.shape[1]
        padded = np.zeros((len(flat), words * 64), bool)
        padded[:, : flat.shape[1]] = flat
        return np.packbits(padded, axis=1, bitorder="little").view(np.uint64)

    def _pack(self, bits: np.ndarray) -> np.ndarray:
        return (bits.astype(np.int64) << np.arange(self.n_bits)).sum(axis=-1)

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        self._matrix = np.concatenate([self._matrix, stored_form(x, self.metric)])
        bits = self._projections(x) > 0
        new_codes = self._pack(bits)
        self._sketch = np.concatenate([self._sketch, self._sketch_of(bits)])
        codes = np.concatenate([self._sorted_codes, new_codes.T], axis=1)
        all_rows = np.concatenate([self._sorted_rows, np.broadcast_to(rows, (self.n_tables, len(rows)))], axis=1)
        order = np.argsort(codes, axis=1, kind="stable")
        self._sorted_codes = np.take_along_axis(codes, order, axis=1)
        self._sorted_rows = np.take_along_axis(all_rows, order, axis=1)

    def _probe_ranges(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query sketches ``[nq, words]`` and, per query, the ranges ``[lo, hi)`` of every probed
        bucket in the flattened sorted tables (``[nq, L * (1 + n_probes)]`` each)."""
        projections = self._projections(q)
        bits = projections > 0
        probes = self._pack(bits)[..., None] ^ probe_masks(np.abs(projections), self.n_probes)  # [nq, L, 1+p]
        sketches = self._sketch_of(bits)
        n = self._sorted_codes.shape[1]
        lo = np.empty(probes.shape, np.int64)
        hi = np.empty(probes.shape, np.int64)
        for t in range(self.n_tables):
            lo[:, t] = np.searchsorted(self._sorted_codes[t], probes[:, t], side="left") + t * n
            hi[:, t] = np.searchsorted(self._sorted_codes[t], probes[:, t], side="right") + t * n
        return sketches, lo.reshape(len(q), -1), hi.reshape(len(q), -1)

    def candidates(self, q: np.ndarray) -> list[np.ndarray]:
        """For each query, the distinct rows sharing at least one probed bucket (before any filter)."""
        q = self._prepare(as_float32_matrix(q, "queries", self.dim), "queries")
        _, lo, hi = self._probe_ranges(q)
        seen = np.zeros(len(self._matrix), bool)
        return [self._union(a, b, seen) for a, b in zip(lo, hi)]

    def _union(self, lo: np.ndarray, hi: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """Distinct rows in the ranges ``lo[i]:hi[i]``; ``seen`` is an all-False scratch bitmap of N, left all-False."""
        lengths = hi - lo
        total = int(lengths.sum())
        # Flatten the ranges lo[i]:hi[i] into one index array without a Python loop.
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        found = self._sorted_rows.ravel()[starts + np.arange(total)]
        seen[found] = True  # de-duplicate with a bitmap: O(N) but branch-free, faster than np.unique
        rows = np.flatnonzero(seen)
        seen[rows] = False
        return rows

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        keys = np.full((len(q), k), np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        augmented = query_form(q, self.metric)
        sketches, lo, hi = self._probe_ranges(q)
        seen = np.zeros(len(self._matrix), bool)
        n_cand = n_kept = 0
        # Reused buffers for the gathered rows: a fresh megabyte per query would cost page faults.
        rows_buffer = np.empty((self.rerank or len(self._matrix), self._matrix.shape[1]), np.float32)
        sketch_buffer = np.empty((len(self._matrix), self._sketch.shape[1]), np.uint64)
        for i in range(len(q)):
            cand = self._union(lo[i], hi[i], seen)
            n_cand += len(cand)
            if self.rerank and len(cand) > self.rerank:  # Hamming filter on the full sketches
                gathered = np.take(self._sketch, cand, axis=0, out=sketch_buffer[: len(cand)])
                hamming = np.bitwise_count(gathered ^ sketches[i]).sum(axis=1, dtype=np.int32)
                cand = cand[np.argpartition(hamming, self.rerank - 1)[: self.rerank]]
            n_kept += len(cand)
            if not len(cand):
                continue
            vectors = np.take(self._matrix, cand, axis=0, out=rows_buffer[: len(cand)])
            scores = vectors @ augmented[i]  # exact re-ranking
            pos, vals = topk_smallest(scores[None], k)
            keys[i, : pos.shape[1]], rows[i, : pos.shape[1]] = vals[0], cand[pos[0]]
        self.candidates_per_query, self.reranked_per_query = n_cand / len(q), n_kept / len(q)
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
        self._sketch = self._sketch[~drop]

    def _structure_bytes(self) -> int:
        return self._matrix.nbytes + self._sorted_codes.nbytes + self._sorted_rows.nbytes + self._sketch.nbytes + self.planes.nbytes + self.mean.nbytes

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "matrix": self._matrix, "sorted_codes": self._sorted_codes, "sorted_rows": self._sorted_rows, "sketch": self._sketch}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.mean, self._matrix = arrays["mean"], arrays["matrix"]
        self._sorted_codes, self._sorted_rows, self._sketch = arrays["sorted_codes"], arrays["sorted_rows"], arrays["sketch"]
