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

from visual_search._checks import check_int, check_seed
from visual_search.errors import VectorIndexError
from visual_search.index.base import BaseIndex
from visual_search.index.kernels import add_query_norms, merge_topk, query_form, stored_form, topk_smallest
from visual_search.index.kmeans import kmeans
from visual_search.index.registry import register
from visual_search.index.validation import check_offsets, check_rows, check_stored_form, expect_array, positive_int


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
    # Each probed list gives at most min(k, its size) candidates, at a running column per query:
    # the buffers hold at most min(nprobe * k, N) columns, so a huge k costs no more than N.
    widths = np.minimum(k, np.diff(offsets)[probes])
    starts = np.cumsum(widths, axis=1) - widths
    cand_keys = np.full((nq, max(k, int(widths.sum(axis=1).max(initial=0)))), np.inf, np.float32)  # k <= N: the output's own size
    cand_rows = np.full(cand_keys.shape, -1, np.int64)
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
        cols = starts[who, slot][:, None] + np.arange(pos.shape[1])
        cand_keys[who[:, None], cols] = vals
        cand_rows[who[:, None], cols] = rows[lo + pos]
    return merge_topk(cand_keys, cand_rows, k)


def check_nprobe(value, kind: str) -> int:
    """nprobe: lists scanned per query, at least 1 (values above nlist scan every list)."""
    return positive_int(value, f"{kind}: nprobe")


def check_training_params(kind: str, n_iter, seed, max_train_points) -> tuple[int, int, int | None]:
    """The k-means settings every IVF and PQ index shares, checked where they are given."""
    return (
        positive_int(n_iter, f"{kind}: n_iter", high=10_000),
        check_seed(seed, f"{kind}: seed", error=VectorIndexError),
        check_int(max_train_points, f"{kind}: max_train_points", low=1, high=2**31 - 1, error=VectorIndexError, allow_none=True),
    )


@register
class IVFIndex(BaseIndex):
    """Inverted-file index with a hand-written k-means coarse quantizer.

    Args:
        dim, metric: as for every index.
        nlist: number of clusters (inverted lists). Rule of thumb: about sqrt(N) to 16 sqrt(N).
        nprobe: lists scanned per query; the speed/recall knob, a search parameter
            (``search(q, k, params={"nprobe": 32})``).
        n_iter: k-means iterations.
        seed: k-means++ and subsampling seed.
        max_train_points: k-means trains on at most this many points (default 256 per list, as in Faiss).

    Memory per vector: the stored row (``4 * (dim + 1)`` bytes for l2, ``4 * dim``
    otherwise), an 8-byte row number and the 8-byte id; plus the centroids.
    """

    kind = "ivf"
    needs_training = True
    search_params = ("nprobe",)

    def __init__(self, dim: int, metric: str = "l2", nlist: int = 100, nprobe: int = 8, n_iter: int = 20,
                 seed: int = 0, max_train_points: int | None = None) -> None:
        self.nlist = positive_int(nlist, "ivf: nlist", high=2**24)
        self.nprobe = check_nprobe(nprobe, "ivf")
        self.n_iter, self.seed, self.max_train_points = check_training_params("ivf", n_iter, seed, max_train_points)
        super().__init__(dim, metric)

    @property
    def quantizer(self) -> CoarseQuantizer | None:
        """The trained centroids (None before ``train``); part of the state, like the lists."""
        return self._state["quantizer"]

    def _check_search_params(self, settings):
        return {"nprobe": check_nprobe(settings["nprobe"], "ivf")}

    def params(self) -> dict:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "n_iter": self.n_iter, "seed": self.seed,
                "max_train_points": self.max_train_points}

    def _empty_state(self):
        width = self.dim + 1 if self.metric == "l2" else self.dim
        # the row (in ids) of each stored vector, and where each list starts
        return {"matrix": np.empty((0, width), np.float32), "rows": np.empty(0, np.int64), "offsets": np.zeros(self.nlist + 1, np.int64),
                "quantizer": None}

    def _train(self, x: np.ndarray) -> None:
        if len(x) < self.nlist:
            raise VectorIndexError(f"ivf: training needs at least nlist={self.nlist} vectors, got {len(x)}")
        cap = self.max_train_points or 256 * self.nlist
        centroids, self.kmeans_history = kmeans(x, self.nlist, n_iter=self.n_iter, seed=self.seed, max_points=cap)
        return {"quantizer": CoarseQuantizer(centroids, self.metric)}

    def list_sizes(self) -> np.ndarray:
        """Vectors per inverted list, int64 ``[nlist]``."""
        return np.diff(self._state["offsets"])

    def _add(self, state, x, ids):
        n_old = len(state["rows"])
        order, offsets = insert_into_lists(state["offsets"], state["quantizer"].nearest(x, 1)[:, 0])
        return {
            "matrix": np.concatenate([state["matrix"], stored_form(x, self.metric)])[order],
            "rows": np.concatenate([state["rows"], np.arange(n_old, n_old + len(x))])[order],
            "offsets": offsets,
        }

    def _search(self, state, q, k, settings, info):
        probes = state["quantizer"].nearest(q, min(settings["nprobe"], self.nlist))
        augmented = query_form(q, self.metric)
        matrix = state["matrix"]

        def score(lst: int, who: np.ndarray, lo: int, hi: int) -> np.ndarray:
            return augmented[who] @ matrix[lo:hi].T  # every query probing this list, in one GEMM

        keys, rows = scan_probed_lists(probes, state["offsets"], state["rows"], k, score)
        return add_query_norms(keys, q, self.metric), self._rows_to_ids(state, rows)

    def _remove(self, state, drop):
        keep, rows, offsets = remove_from_lists(state["offsets"], state["rows"], drop)
        return {"matrix": state["matrix"][keep], "rows": rows, "offsets": offsets}

    def _structure_bytes(self, state):
        centroids = state["quantizer"].centroids.nbytes if state["quantizer"] is not None else 0
        return state["matrix"].nbytes + state["rows"].nbytes + state["offsets"].nbytes + centroids

    def _arrays(self, state):
        return {"centroids": saved_centroids(state, self.dim), **{name: state[name] for name in ("matrix", "rows", "offsets")}}

    def _restore(self, arrays, n, where):
        width = self.dim + 1 if self.metric == "l2" else self.dim
        state = {
            "quantizer": restore_quantizer(arrays, self, where),
            "matrix": expect_array(arrays, "matrix", np.float32, (n, width), where),
            "rows": expect_array(arrays, "rows", np.int64, (n,), where),
            "offsets": expect_array(arrays, "offsets", np.int64, (self.nlist + 1,), where),
        }
        check_list_layout(state, n, self.nlist, where)
        check_stored_form(state["matrix"], self.metric, "matrix", where)
        return state


def saved_centroids(state, dim: int) -> np.ndarray:
    """The centroids to save (an empty array before training)."""
    return state["quantizer"].centroids if state["quantizer"] is not None else np.empty((0, dim), np.float32)


def restore_quantizer(arrays, index, where: str) -> CoarseQuantizer | None:
    """The saved centroids of a trained IVF-style index (None for an untrained one)."""
    shape = (index.nlist, index.dim) if index.is_trained else (0, index.dim)
    centroids = expect_array(arrays, "centroids", np.float32, shape, where)
    return CoarseQuantizer(centroids, index.metric) if index.is_trained else None


def check_list_layout(state, n: int, nlist: int, where: str) -> None:
    """Saved inverted lists must cover every row exactly once, within consistent offsets."""
    check_offsets(state["offsets"], nlist, n, where)
    check_rows(state["rows"], n, "rows", where)
    if len(np.unique(state["rows"])) != n:
        raise VectorIndexError(f"{where}: saved inverted lists do not hold every row exactly once")
