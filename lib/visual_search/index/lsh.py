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

from visual_search._checks import check_int, check_seed
from visual_search.errors import VectorIndexError
from visual_search.index.base import BaseIndex
from visual_search.index.kernels import add_query_norms, query_form, stored_form, topk_smallest
from visual_search.index.registry import register
from visual_search.index.validation import as_float32_matrix, check_stored_form, expect_array


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
    if n_probes == 0:
        return np.zeros((nq, n_tables, 1), np.int64)
    i, j = np.triu_indices(n_bits, k=1)
    masks = np.concatenate([np.left_shift(1, np.arange(n_bits)), np.left_shift(1, i) | np.left_shift(1, j)]).astype(np.int64)
    sq = margins.astype(np.float32) ** 2
    scores = np.concatenate([sq, sq[..., i] + sq[..., j]], axis=-1)  # [nq, L, n_single + n_double]
    n_probes = min(n_probes, scores.shape[-1])
    best = np.argpartition(scores, n_probes - 1, axis=-1)[..., :n_probes]
    return np.concatenate([np.zeros((nq, n_tables, 1), np.int64), masks[best]], axis=-1)


@register
class LSHIndex(BaseIndex):
    """Random-hyperplane LSH with multi-probe and exact re-ranking. Metrics: l2, ip, cosine.

    Args:
        n_tables: independent hash tables (more: higher recall, more memory).
        n_bits: bits per table, at most 62 (more: smaller buckets, faster, lower recall).
        n_probes: extra buckets probed per table (0 = classic LSH); a search parameter.
        rerank: candidates kept by the Hamming filter and scored exactly (0 = score all);
            a search parameter.
        seed: for the random hyperplanes.

    ``search(..., stats=callback)`` reports ``candidates_per_query`` (before the Hamming
    filter) and ``reranked_per_query`` (scored exactly).

    Memory per vector: the stored row (``4 * (dim + 1)`` bytes for l2, ``4 * dim``
    otherwise), ``16 * n_tables`` for the sorted codes and rows, ``8 * ceil(n_tables *
    n_bits / 64)`` for the sketch, and 8 for the id.
    """

    kind = "lsh"
    needs_training = True  # the mean that centres the data
    search_params = ("n_probes", "rerank")

    def __init__(self, dim: int, metric: str = "l2", n_tables: int = 16, n_bits: int = 16, n_probes: int = 16, rerank: int = 400, seed: int = 0) -> None:
        self.n_tables = check_int(n_tables, "lsh: n_tables", low=1, high=1024, error=VectorIndexError)
        self.n_bits = check_int(n_bits, "lsh: n_bits", low=1, high=62, error=VectorIndexError)
        self.seed = check_seed(seed, "lsh: seed", error=VectorIndexError)
        self.n_probes, self.rerank = n_probes, rerank
        settings = self._check_search_params({"n_probes": n_probes, "rerank": rerank})
        self.n_probes, self.rerank = settings["n_probes"], settings["rerank"]
        super().__init__(dim, metric)
        if self.n_tables * self.n_bits * self.dim > 2**26:
            raise VectorIndexError(
                f"lsh: n_tables * n_bits * dim = {self.n_tables} * {self.n_bits} * {self.dim} hyperplane coordinates "
                f"is more than {2**26:,}; use fewer tables or bits"
            )
        self.planes = np.random.default_rng(self.seed).standard_normal((self.n_tables * self.n_bits, self.dim)).astype(np.float32)

    @property
    def mean(self) -> np.ndarray:
        """The training mean the hyperplanes are centred on (part of the state)."""
        return self._state["mean"]

    @mean.setter
    def mean(self, value: np.ndarray) -> None:
        self._state = {**self._state, "mean": np.asarray(value, np.float32)}

    def _check_search_params(self, settings):
        return {
            "n_probes": check_int(settings["n_probes"], "lsh: n_probes", low=0, high=10**6, error=VectorIndexError),
            "rerank": check_int(settings["rerank"], "lsh: rerank", low=0, high=10**9, error=VectorIndexError),
        }

    def params(self) -> dict:
        return {"n_tables": self.n_tables, "n_bits": self.n_bits, "n_probes": self.n_probes, "rerank": self.rerank, "seed": self.seed}

    def _words(self) -> int:
        return -(-self.n_tables * self.n_bits // 64)

    def _empty_state(self):
        width = self.dim + 1 if self.metric == "l2" else self.dim
        return {
            "matrix": np.empty((0, width), np.float32),
            "sorted_codes": np.empty((self.n_tables, 0), np.int64),  # per table: codes, ascending
            "sorted_rows": np.empty((self.n_tables, 0), np.int64),  # per table: the row of each code
            # Per row, all n_tables * n_bits bits packed 64 to a word: the sketch the Hamming filter compares.
            "sketch": np.empty((0, self._words()), np.uint64),
            "mean": np.zeros(self.dim, np.float32),
        }

    def _train(self, x: np.ndarray):
        return {"mean": x.mean(axis=0).astype(np.float32)}

    def _projections(self, x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
        mean = self.mean if mean is None else mean
        return ((x - mean) @ self.planes.T).reshape(len(x), self.n_tables, self.n_bits)

    def _sketch_of(self, bits: np.ndarray) -> np.ndarray:
        """Pack ``[n, n_tables, n_bits]`` booleans into uint64 words ``[n, ceil(n_tables * n_bits / 64)]``."""
        flat = bits.reshape(len(bits), -1)
        words = self._words()
        padded = np.zeros((len(flat), words * 64), bool)
        padded[:, : flat.shape[1]] = flat
        return np.packbits(padded, axis=1, bitorder="little").view(np.uint64)

    def _pack(self, bits: np.ndarray) -> np.ndarray:
        return (bits.astype(np.int64) << np.arange(self.n_bits)).sum(axis=-1)

    def _add(self, state, x, ids):
        n_old = len(state["matrix"])
        rows = np.arange(n_old, n_old + len(x))
        bits = self._projections(x, state["mean"]) > 0
        codes = np.concatenate([state["sorted_codes"], self._pack(bits).T], axis=1)
        all_rows = np.concatenate([state["sorted_rows"], np.broadcast_to(rows, (self.n_tables, len(rows)))], axis=1)
        order = np.argsort(codes, axis=1, kind="stable")
        return {
            "matrix": np.concatenate([state["matrix"], stored_form(x, self.metric)]),
            "sorted_codes": np.take_along_axis(codes, order, axis=1),
            "sorted_rows": np.take_along_axis(all_rows, order, axis=1),
            "sketch": np.concatenate([state["sketch"], self._sketch_of(bits)]),
        }

    def _probe_ranges(self, state, q: np.ndarray, n_probes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query sketches ``[nq, words]`` and, per query, the ranges ``[lo, hi)`` of every probed
        bucket in the flattened sorted tables (``[nq, L * (1 + n_probes)]`` each)."""
        projections = self._projections(q, state["mean"])
        bits = projections > 0
        probes = self._pack(bits)[..., None] ^ probe_masks(np.abs(projections), n_probes)  # [nq, L, 1+p]
        sketches = self._sketch_of(bits)
        sorted_codes = state["sorted_codes"]
        n = sorted_codes.shape[1]
        lo = np.empty(probes.shape, np.int64)
        hi = np.empty(probes.shape, np.int64)
        for t in range(self.n_tables):
            lo[:, t] = np.searchsorted(sorted_codes[t], probes[:, t], side="left") + t * n
            hi[:, t] = np.searchsorted(sorted_codes[t], probes[:, t], side="right") + t * n
        return sketches, lo.reshape(len(q), -1), hi.reshape(len(q), -1)

    def candidates(self, q: np.ndarray, n_probes: int | None = None) -> list[np.ndarray]:
        """For each query, the distinct rows sharing at least one probed bucket (before any filter)."""
        state = self._state
        q = self._prepare(as_float32_matrix(q, "queries", self.dim), "queries")
        n_probes = self._settings(None if n_probes is None else {"n_probes": n_probes})["n_probes"]
        _, lo, hi = self._probe_ranges(state, q, n_probes)
        seen = np.zeros(len(state["matrix"]), bool)
        return [_union(state["sorted_rows"], a, b, seen) for a, b in zip(lo, hi)]

    def _search(self, state, q, k, settings, info):
        rerank = settings["rerank"]
        matrix, sketch = state["matrix"], state["sketch"]
        keys = np.full((len(q), k), np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        augmented = query_form(q, self.metric)
        sketches, lo, hi = self._probe_ranges(state, q, settings["n_probes"])
        seen = np.zeros(len(matrix), bool)
        n_cand = n_kept = 0
        # Reused buffers for the gathered rows: a fresh megabyte per query would cost page faults.
        # Sized by what can be gathered (never more than N rows), so a huge ``rerank`` costs nothing.
        rows_buffer = np.empty((min(rerank, len(matrix)) if rerank else len(matrix), matrix.shape[1]), np.float32)
        sketch_buffer = np.empty((len(matrix), sketch.shape[1]), np.uint64)
        for i in range(len(q)):
            cand = _union(state["sorted_rows"], lo[i], hi[i], seen)
            n_cand += len(cand)
            if rerank and len(cand) > rerank:  # Hamming filter on the full sketches
                gathered = np.take(sketch, cand, axis=0, out=sketch_buffer[: len(cand)])
                hamming = np.bitwise_count(gathered ^ sketches[i]).sum(axis=1, dtype=np.int32)
                cand = cand[np.argpartition(hamming, rerank - 1)[:rerank]]
            n_kept += len(cand)
            if not len(cand):
                continue
            vectors = np.take(matrix, cand, axis=0, out=rows_buffer[: len(cand)])
            scores = vectors @ augmented[i]  # exact re-ranking
            pos, vals = topk_smallest(scores[None], k)
            keys[i, : pos.shape[1]], rows[i, : pos.shape[1]] = vals[0], cand[pos[0]]
        info["candidates_per_query"], info["reranked_per_query"] = n_cand / len(q), n_kept / len(q)
        return add_query_norms(keys, q, self.metric), self._rows_to_ids(state, rows)

    def _remove(self, state, drop):
        renumber = np.cumsum(~drop) - 1
        keep = ~drop[state["sorted_rows"]]  # [n_tables, n]; each table keeps the same number of rows
        n_keep = int((~drop).sum())
        return {
            "sorted_codes": state["sorted_codes"][keep].reshape(self.n_tables, n_keep),
            "sorted_rows": renumber[state["sorted_rows"][keep]].reshape(self.n_tables, n_keep),
            "matrix": state["matrix"][~drop],
            "sketch": state["sketch"][~drop],
        }

    def _structure_bytes(self, state):
        return sum(state[name].nbytes for name in ("matrix", "sorted_codes", "sorted_rows", "sketch", "mean")) + self.planes.nbytes

    def _arrays(self, state):
        return {name: state[name] for name in ("mean", "matrix", "sorted_codes", "sorted_rows", "sketch")}

    def _restore(self, arrays, n, where):
        width = self.dim + 1 if self.metric == "l2" else self.dim
        state = {
            "mean": expect_array(arrays, "mean", np.float32, (self.dim,), where),
            "matrix": expect_array(arrays, "matrix", np.float32, (n, width), where),
            "sorted_codes": expect_array(arrays, "sorted_codes", np.int64, (self.n_tables, n), where),
            "sorted_rows": expect_array(arrays, "sorted_rows", np.int64, (self.n_tables, n), where),
            "sketch": expect_array(arrays, "sketch", np.uint64, (n, self._words()), where),
        }
        check_stored_form(state["matrix"], self.metric, "matrix", where)
        if n and not (np.sort(state["sorted_rows"], axis=1) == np.arange(n)).all():
            raise VectorIndexError(f"{where}: a saved hash table does not hold every row exactly once")
        codes = state["sorted_codes"]
        if (np.diff(codes, axis=1) < 0).any() or (codes.size and (codes.min() < 0 or codes.max() >= 2**self.n_bits)):
            raise VectorIndexError(f"{where}: saved hash tables are not sorted {self.n_bits}-bit codes")
        return state


def _union(sorted_rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Distinct rows in the ranges ``lo[i]:hi[i]`` of the flattened tables; ``seen`` is an all-False
    scratch bitmap of N (per call, never shared), left all-False."""
    lengths = hi - lo
    total = int(lengths.sum())
    # Flatten the ranges lo[i]:hi[i] into one index array without a Python loop.
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    found = sorted_rows.ravel()[starts + np.arange(total)]
    seen[found] = True  # de-duplicate with a bitmap: O(N) but branch-free, faster than np.unique
    rows = np.flatnonzero(seen)
    seen[rows] = False
    return rows
