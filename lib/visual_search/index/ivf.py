"""IVF (inverted file): cluster the space, then search only the nearest clusters.

Training runs k-means (``kmeans.py``) to get ``nlist`` centroids, the *coarse
quantizer*. ``add`` files every vector under its nearest centroid (its
*inverted list*). A query is compared with the ``nlist`` centroids, and only
the ``nprobe`` nearest lists are scanned exactly. With nlist=1024 and nprobe=16
a query touches about 16/1024 = 1.6 % of the data, plus 1024 centroid
distances; recall is lost only when a true neighbour sits in a list whose
centroid is not among the nprobe nearest.

Layout: one contiguous matrix with the lists stored one after another
(``_offsets[l]:_offsets[l+1]`` is list l), each row in the same augmented form
as ``exact.py`` so scanning a list is one GEMM.

Search is batched *by list*, not by query: the queries that probe list l are
gathered and scored against it in one GEMM, each query keeps its k best from
that list, and a final top-k merges the nprobe partial results. That replaces
nq x nprobe small matrix-vector products with at most nlist matrix products.
"""

from __future__ import annotations

import numpy as np

from visual_search.index.base import BaseIndex, VectorIndexError, query_form, register, stored_form, topk_smallest
from visual_search.index.kmeans import kmeans


class CoarseQuantizer:
    """The centroids of an IVF index and the rule that picks lists for a vector."""

    def __init__(self, centroids: np.ndarray, metric: str) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.metric = metric
        self._sq = np.einsum("ij,ij->i", self.centroids, self.centroids)

    def keys(self, x: np.ndarray) -> np.ndarray:
        """``[n, nlist]`` smaller-is-better scores: squared L2 (minus ||x||^2) or minus the inner product."""
        products = x @ self.centroids.T
        return self._sq[None, :] - 2.0 * products if self.metric == "l2" else -products

    def nearest(self, x: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` best lists for each row, best first: int64 ``[len(x), n]``."""
        out = np.empty((len(x), n), np.int64)
        chunk = max(1, 16_000_000 // len(self.centroids))
        for start in range(0, len(x), chunk):
            out[start : start + chunk] = topk_smallest(self.keys(x[start : start + chunk]), n)[0]
        return out


def insert_into_lists(offsets: np.ndarray, new_lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where new entries go in a list-by-list layout.

    Args:
        offsets: int64 ``[nlist + 1]``, the current layout (list l is ``offsets[l]:offsets[l+1]``).
        new_lists: the list of each new entry.

    Returns:
        ``(order, new_offsets)``: apply ``np.concatenate([old, new])[order]`` to every per-entry
        array; existing entries stay ahead of new ones within a list.
    """
    nlist = len(offsets) - 1
    lists = np.concatenate([np.repeat(np.arange(nlist), np.diff(offsets)), new_lists])
    return np.argsort(lists, kind="stable"), np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=nlist))])


def remove_from_lists(offsets: np.ndarray, rows: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop the entries whose row is marked in ``drop``, and renumber the surviving rows 0..n-1.

    Returns:
        ``(keep mask over entries, renumbered rows of the kept entries, new offsets)``.
    """
    nlist = len(offsets) - 1
    lists = np.repeat(np.arange(nlist), np.diff(offsets))
    keep = ~drop[rows]
    renumber = np.cumsum(~drop) - 1
    return keep, renumber[rows[keep]], np.concatenate([[0], np.cumsum(np.bincount(lists[keep], minlength=nlist))])


def scan_probed_lists(probes: np.ndarray, offsets: np.ndarray, rows: np.ndarray, k: int, score) -> tuple[np.ndarray, np.ndarray]:
    """Scan the probed inverted lists, batched by list, and merge each query's k best.

    Args:
        probes: int64 ``[nq, nprobe]``, the lists each query scans.
        offsets: int64 ``[nlist + 1]``; list l holds stored positions ``offsets[l]:offsets[l+1]``.
        rows: int64 ``[n]``, the row number of each stored position.
        k: results per query.
        score: ``score(list_id, who, lo, hi) -> keys [len(who), hi - lo]``, smaller is
            better, for the queries ``who`` (indices into the batch) against list positions lo..hi.

    Returns:
        ``(keys float32 [nq, k], rows int64 [nq, k])``, ascending, -1 where fewer than k were seen.
    """
    nq, nprobe = probes.shape
    cand_keys = np.full((nq, nprobe * k), np.inf, np.float32)
    cand_rows = np.full((nq, nprobe * k), -1, np.int64)
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=len(offsets) - 1))])
    for lst in np.flatnonzero(np.diff(bounds)):
        lo, hi = int(offsets[lst]), int(offsets[lst + 1])
        if hi == lo:
            continue
        pairs = order[bounds[lst] : bounds[lst + 1]]  # positions in probes.ravel()
        who, slot = pairs // nprobe, pairs % nprobe
        pos, vals = topk_smallest(score(lst, who, lo, hi), min(k, hi - lo))
        cols = slot[:, None] * k + np.arange(pos.shape[1])
        cand_keys[who[:, None], cols] = vals
        cand_rows[who[:, None], cols] = rows[lo + pos]
    best, keys = topk_smallest(cand_keys, k)
    return keys, np.take_along_axis(cand_rows, best, axis=1)


@register
class IVFIndex(BaseIndex):
    """Inverted-file index with a hand-written k-means coarse quantizer.

    Args:
        dim, metric: as for every index.
        nlist: number of clusters (inverted lists). Rule of thumb: about sqrt(N) to 16 sqrt(N).
        nprobe: lists scanned per query; the speed/recall knob (can be changed after training).
        n_iter: k-means iterations.
        seed: k-means++ and subsampling seed.
        max_train_points: k-means trains on at most this many points (default 256 per list, as in Faiss).
    """

    kind = "ivf"
    needs_training = True

    def __init__(self, dim: int, metric: str = "l2", nlist: int = 100, nprobe: int = 8, n_iter: int = 20,
                 seed: int = 0, max_train_points: int | None = None) -> None:
        super().__init__(dim, metric)
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("n_iter", n_iter)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise VectorIndexError(f"ivf: {name} must be a positive integer, got {value!r}")
        if max_train_points is not None and (isinstance(max_train_points, bool) or not isinstance(max_train_points, (int, np.integer)) or max_train_points < 1):
            raise VectorIndexError(f"ivf: max_train_points must be a positive integer or None, got {max_train_points!r}")
        self.nlist, self.nprobe, self.n_iter, self.seed = int(nlist), int(nprobe), int(n_iter), int(seed)
        self.max_train_points = None if max_train_points is None else int(max_train_points)
        self.quantizer: CoarseQuantizer | None = None
        width = dim + 1 if metric == "l2" else dim
        self._matrix = np.empty((0, width), np.float32)
        self._rows = np.empty(0, np.int64)  # the row (in _ids) of each stored vector
        self._offsets = np.zeros(self.nlist + 1, np.int64)

    def params(self) -> dict:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "n_iter": self.n_iter, "seed": self.seed,
                "max_train_points": self.max_train_points}

    def _train(self, x: np.ndarray) -> None:
        if len(x) < self.nlist:
            raise VectorIndexError(f"ivf: training needs at least nlist={self.nlist} vectors, got {len(x)}")
        cap = self.max_train_points or 256 * self.nlist
        centroids, self.kmeans_history = kmeans(x, self.nlist, n_iter=self.n_iter, seed=self.seed, max_points=cap)
        self.quantizer = CoarseQuantizer(centroids, self.metric)

    def list_sizes(self) -> np.ndarray:
        """Vectors per inverted list, int64 ``[nlist]``."""
        return np.diff(self._offsets)

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        order, self._offsets = insert_into_lists(self._offsets, self.quantizer.nearest(x, 1)[:, 0])
        self._matrix = np.concatenate([self._matrix, stored_form(x, self.metric)])[order]
        self._rows = np.concatenate([self._rows, rows])[order]

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        probes = self.quantizer.nearest(q, min(self.nprobe, self.nlist))
        augmented = query_form(q, self.metric)

        def score(lst: int, who: np.ndarray, lo: int, hi: int) -> np.ndarray:
            return augmented[who] @ self._matrix[lo:hi].T  # every query probing this list, in one GEMM

        keys, rows = scan_probed_lists(probes, self._offsets, self._rows, k, score)
        if self.metric == "l2":  # add back the ||q||^2 left out of the stored form
            keys = np.maximum(keys + np.einsum("ij,ij->i", q, q)[:, None], 0)
        return keys, self._rows_to_ids(rows)

    def _remove(self, drop: np.ndarray) -> None:
        keep, self._rows, self._offsets = remove_from_lists(self._offsets, self._rows, drop)
        self._matrix = self._matrix[keep]

    def _structure_bytes(self) -> int:
        centroids = self.quantizer.centroids.nbytes if self.quantizer is not None else 0
        return self._matrix.nbytes + self._rows.nbytes + self._offsets.nbytes + centroids

    def _arrays(self) -> dict[str, np.ndarray]:
        centroids = self.quantizer.centroids if self.quantizer is not None else np.empty((0, self.dim), np.float32)
        return {"centroids": centroids, "matrix": self._matrix, "rows": self._rows, "offsets": self._offsets}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        if len(arrays["centroids"]):
            self.quantizer = CoarseQuantizer(arrays["centroids"], self.metric)
        self._matrix, self._rows, self._offsets = arrays["matrix"], arrays["rows"], arrays["offsets"]
