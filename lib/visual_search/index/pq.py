"""Product quantisation (PQ) and IVF-PQ: compress each vector to ``m`` bytes.

**Vector quantisation** replaces a vector by the nearest of K centroids, so it
is stored as one small integer. To keep the error small K must be huge.

**Product quantisation** (Jégou, Douze & Schmid, 2011) cuts the vector into
``m`` sub-vectors of ``dim / m`` numbers and quantises each with its own
codebook of ``2**nbits`` centroids. A vector becomes ``m`` codes (``m`` bytes
at nbits=8), yet the number of distinct reconstructions is ``(2**nbits)**m``:
784 floats (3,136 bytes) become 98 bytes, a 32x saving.

**Asymmetric distance computation (ADC):** the query stays exact. For each
sub-space j, one table holds the distance from the query's sub-vector j to all
``2**nbits`` centroids. The distance to a stored vector is then ``m`` table
look-ups and additions instead of ``dim`` multiply-adds:
``||q - x_hat||^2 = sum_j table[j, code_j]``.

**IVF-PQ** first files vectors into IVF lists (``ivf.py``), then encodes the
*residual* ``x - centroid`` with PQ. Residuals are small and similar across
lists, so the same codebooks quantise them far more finely than raw vectors.

**Precomputed terms** (as in Faiss). With residual r and list centroid c,
``||q - c - r||^2 = ||q - c||^2 + (||r||^2 + 2 c.r) - 2 q.r``. The middle term
does not involve the query, so it is computed once per stored vector at ``add``
time (from a ``nlist x m x 2**nbits`` table) and kept as one float; the last term
needs one table per query, shared by every list it probes. Scoring a list is
then one scalar per query, one per vector, and m look-ups per pair.
"""

from __future__ import annotations

import copy

import numpy as np

from visual_search.errors import VectorIndexError
from visual_search.index.base import BaseIndex
from visual_search.index.ivf import (
    CoarseQuantizer,
    check_list_layout,
    check_nprobe,
    check_training_params,
    insert_into_lists,
    remove_from_lists,
    restore_quantizer,
    saved_centroids,
    scan_probed_lists,
)
from visual_search.index.kernels import topk_smallest
from visual_search.index.kmeans import assign, kmeans
from visual_search.index.registry import register
from visual_search.index.validation import expect_array, positive_int


class ProductQuantizer:
    """``m`` codebooks of ``2**nbits`` centroids, one per sub-space of ``dim // m`` numbers.

    Args:
        dim: vector dimension; must be divisible by ``m``.
        m: number of sub-quantizers (bytes per vector at nbits=8).
        nbits: bits per code, 1..8 (codes are stored as uint8).
        n_iter, seed, max_train_points: for each sub-space's k-means.
    """

    def __init__(self, dim: int, m: int, nbits: int = 8, n_iter: int = 15, seed: int = 0,
                 max_train_points: int | None = None) -> None:
        dim, m = positive_int(dim, "pq: dim", high=2**20), positive_int(m, "pq: m", high=2**20)
        nbits = positive_int(nbits, "pq: nbits (codes are stored as uint8)", high=8)
        if dim % m:
            raise VectorIndexError(f"pq: dim={dim} is not divisible by m={m}; pick m among {[d for d in range(1, dim + 1) if dim % d == 0][:12]}...")
        self.n_iter, self.seed, max_train_points = check_training_params("pq", n_iter, seed, max_train_points)
        self.dim, self.m, self.nbits = dim, m, nbits
        self.dsub, self.ksub = dim // m, 2**nbits
        self.max_train_points = max_train_points
        self.codebooks = np.empty((0, self.ksub, self.dsub), np.float32)  # [m, ksub, dsub] once trained

    def _split(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), self.m, self.dsub)

    def train(self, x: np.ndarray) -> None:
        """Run k-means in every sub-space."""
        if len(x) < self.ksub:
            raise VectorIndexError(f"pq: training needs at least 2**nbits={self.ksub} vectors, got {len(x)}")
        cap = self.max_train_points or 64 * self.ksub
        parts = self._split(x)
        self.codebooks = np.stack([
            kmeans(np.ascontiguousarray(parts[:, j]), self.ksub, n_iter=self.n_iter, seed=self.seed + j, max_points=cap)[0]
            for j in range(self.m)
        ])

    def encode(self, x: np.ndarray) -> np.ndarray:
        """uint8 codes ``[n, m]``: the nearest centroid in each sub-space."""
        parts = self._split(x)
        return np.stack([assign(np.ascontiguousarray(parts[:, j]), self.codebooks[j])[0] for j in range(self.m)], axis=1).astype(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The reconstructions ``x_hat`` (float32 ``[n, dim]``) of the codes."""
        return self.codebooks[np.arange(self.m), codes.astype(np.int64)].reshape(len(codes), self.dim)

    def tables(self, q: np.ndarray, metric: str) -> np.ndarray:
        """ADC look-up tables ``[nq, m, ksub]``: squared L2 per sub-space, or minus the sub-space inner product."""
        parts = self._split(q)  # [nq, m, dsub]
        products = np.einsum("qmd,mkd->qmk", parts, self.codebooks)
        if metric == "l2":
            sq_q = np.einsum("qmd,qmd->qm", parts, parts)[:, :, None]
            sq_c = np.einsum("mkd,mkd->mk", self.codebooks, self.codebooks)[None]
            return np.maximum(sq_q - 2.0 * products + sq_c, 0).astype(np.float32)
        return (-products).astype(np.float32)

    def adc(self, tables: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Approximate keys ``[nq, n]`` = sum over sub-spaces of ``tables[:, j, codes[:, j]]``."""
        out = np.zeros((len(tables), len(codes)), np.float32)
        for j in range(self.m):  # m look-ups + adds per (query, vector): the whole point of PQ
            out += tables[:, j, codes[:, j]]
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks}

    def trained(self, x: np.ndarray) -> ProductQuantizer:
        """A trained copy (this one is left as it is, for a search that may still be reading it)."""
        pq = copy.copy(self)
        pq.train(x)
        return pq

    def restored(self, arrays: dict[str, np.ndarray], trained: bool, where: str) -> ProductQuantizer:
        """A copy with saved codebooks, checking their shape (``load_index``)."""
        shape = (self.m, self.ksub, self.dsub) if trained else (0, self.ksub, self.dsub)
        pq = copy.copy(self)
        pq.codebooks = expect_array(arrays, "codebooks", np.float32, shape, where)
        return pq

    def check_codes(self, codes: np.ndarray, where: str) -> None:
        """Saved codes must index the codebooks: each below ``2**nbits``."""
        if codes.size and int(codes.max()) >= self.ksub:
            raise VectorIndexError(f"{where}: saved PQ codes go up to {int(codes.max())}, but nbits={self.nbits} allows 0..{self.ksub - 1}")


@register
class PQIndex(BaseIndex):
    """Flat PQ: every stored vector is ``m`` bytes; search is ADC against all of them.

    Args:
        m: sub-quantizers; ``dim`` must be divisible by it.
        nbits: bits per code (1..8).
        n_iter, seed, max_train_points: k-means settings for the codebooks
            (default cap: 64 points per centroid per sub-space).

    Memory per vector: ``m`` bytes of codes and the 8-byte id; plus the codebooks.
    """

    kind = "pq"
    needs_training = True

    def __init__(self, dim: int, metric: str = "l2", m: int = 8, nbits: int = 8, n_iter: int = 15, seed: int = 0,
                 max_train_points: int | None = None) -> None:
        self._untrained = ProductQuantizer(dim, m, nbits, n_iter, seed, max_train_points)
        super().__init__(dim, metric)

    @property
    def pq(self) -> ProductQuantizer:
        """The product quantizer and its codebooks; part of the state, so a search never sees new codebooks with old codes."""
        return self._state["pq"]

    def params(self) -> dict:
        pq = self.pq
        return {"m": pq.m, "nbits": pq.nbits, "n_iter": pq.n_iter, "seed": pq.seed, "max_train_points": pq.max_train_points}

    def _empty_state(self):
        return {"codes": np.empty((0, self._untrained.m), np.uint8), "pq": self._untrained}

    def _train(self, x: np.ndarray):
        return {"pq": self._untrained.trained(x)}

    def _add(self, state, x, ids):
        return {"codes": np.concatenate([state["codes"], state["pq"].encode(x)])}

    def _search(self, state, q, k, settings, info):
        codes, pq = state["codes"], state["pq"]
        keys = np.empty((len(q), k), np.float32)
        rows = np.empty((len(q), k), np.int64)
        block = max(1, 4_000_000 // len(codes))
        for start in range(0, len(q), block):
            part = q[start : start + block]
            rows[start : start + block], keys[start : start + block] = topk_smallest(pq.adc(pq.tables(part, self.metric), codes), k)
        return keys, self._rows_to_ids(state, rows)

    def _remove(self, state, drop):
        return {"codes": state["codes"][~drop]}

    def _structure_bytes(self, state):
        return state["codes"].nbytes + state["pq"].codebooks.nbytes

    def _arrays(self, state):
        return {"codes": state["codes"], **state["pq"].arrays()}

    def _restore(self, arrays, n, where):
        pq = self._untrained.restored(arrays, self.is_trained, where)
        codes = expect_array(arrays, "codes", np.uint8, (n, pq.m), where)
        pq.check_codes(codes, where)
        return {"codes": codes, "pq": pq}


@register
class IVFPQIndex(BaseIndex):
    """IVF coarse quantizer + PQ-encoded residuals (Faiss's ``IVF{nlist},PQ{m}``).

    Args:
        nlist, nprobe: as for ``"ivf"`` (``nprobe`` is a search parameter).
        m, nbits: as for ``"pq"``.
        n_iter, seed, max_train_points: k-means settings (coarse and PQ).

    Memory per vector: ``m`` bytes of codes, a 4-byte precomputed term, an 8-byte row
    number and the 8-byte id; plus centroids, codebooks and the ``nlist x m x 2**nbits``
    table of precomputed terms (l2).
    """

    kind = "ivfpq"
    needs_training = True
    search_params = ("nprobe",)

    def __init__(self, dim: int, metric: str = "l2", nlist: int = 100, nprobe: int = 8, m: int = 8, nbits: int = 8,
                 n_iter: int = 15, seed: int = 0, max_train_points: int | None = None) -> None:
        self.nlist = positive_int(nlist, "ivfpq: nlist", high=2**24)
        self.nprobe = check_nprobe(nprobe, "ivfpq")
        self._untrained = ProductQuantizer(dim, m, nbits, n_iter, seed, max_train_points)
        self.n_iter, self.seed, self.max_train_points = self._untrained.n_iter, self._untrained.seed, self._untrained.max_train_points
        super().__init__(dim, metric)

    @property
    def pq(self) -> ProductQuantizer:
        """The residual product quantizer (part of the state, with the centroids and tables)."""
        return self._state["pq"]

    @property
    def quantizer(self) -> CoarseQuantizer | None:
        """The trained coarse centroids (None before ``train``)."""
        return self._state["quantizer"]

    def _check_search_params(self, settings):
        return {"nprobe": check_nprobe(settings["nprobe"], "ivfpq")}

    def params(self) -> dict:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "m": self.pq.m, "nbits": self.pq.nbits,
                "n_iter": self.n_iter, "seed": self.seed, "max_train_points": self.max_train_points}

    def _empty_state(self):
        return {"codes": np.empty((0, self._untrained.m), np.uint8), "terms": np.empty(0, np.float32),  # per vector: ||r_hat||^2 + 2 c.r_hat (l2)
                "rows": np.empty(0, np.int64), "offsets": np.zeros(self.nlist + 1, np.int64),
                "pq": self._untrained, "quantizer": None, "list_tables": None}

    def _train(self, x: np.ndarray):
        if len(x) < max(self.nlist, self._untrained.ksub):
            raise VectorIndexError(f"ivfpq: training needs at least max(nlist, 2**nbits)={max(self.nlist, self._untrained.ksub)} vectors, got {len(x)}")
        centroids, _ = kmeans(x, self.nlist, n_iter=self.n_iter, seed=self.seed, max_points=self.max_train_points or 256 * self.nlist)
        quantizer = CoarseQuantizer(centroids, self.metric)
        pq = self._untrained.trained(x - centroids[quantizer.nearest(x, 1)[:, 0]])
        return {"quantizer": quantizer, "pq": pq, "list_tables": self._precompute(quantizer, pq)}

    @staticmethod
    def _code_terms(list_tables: np.ndarray | None, lists: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Per vector, ``||r_hat||^2 + 2 c.r_hat`` (l2; zeros otherwise): the query-free part of its distance."""
        out = np.zeros(len(codes), np.float32)
        if list_tables is None:
            return out
        for j in range(codes.shape[1]):
            out += list_tables[lists, j, codes[:, j]]
        return out

    def _precompute(self, quantizer: CoarseQuantizer | None, pq: ProductQuantizer) -> np.ndarray | None:
        """``tables[l, j, c] = ||codeword_jc||^2 + 2 centroid_l[j] . codeword_jc`` (l2 only; None otherwise)."""
        if self.metric != "l2" or quantizer is None:
            return None
        books = pq.codebooks  # [m, ksub, dsub]
        parts = quantizer.centroids.reshape(self.nlist, pq.m, pq.dsub)
        return (np.einsum("mkd,mkd->mk", books, books)[None] + 2 * np.einsum("lmd,mkd->lmk", parts, books)).astype(np.float32)

    def _add(self, state, x, ids):
        quantizer, pq = state["quantizer"], state["pq"]
        new_lists = quantizer.nearest(x, 1)[:, 0]
        codes = pq.encode(x - quantizer.centroids[new_lists])
        order, offsets = insert_into_lists(state["offsets"], new_lists)
        n_old = len(state["rows"])
        return {
            "codes": np.concatenate([state["codes"], codes])[order],
            "terms": np.concatenate([state["terms"], self._code_terms(state["list_tables"], new_lists, codes)])[order],
            "rows": np.concatenate([state["rows"], np.arange(n_old, n_old + len(x))])[order],
            "offsets": offsets,
        }

    def _search(self, state, q, k, settings, info):
        # Blocks of queries keep the per-list copies of query tables (queries x m x 2**nbits) cache-sized.
        parts = [self._search_block(state, q[s : s + 1024], k, settings["nprobe"]) for s in range(0, len(q), 1024)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search_block(self, state, q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        pq = state["pq"]
        probes = state["quantizer"].nearest(q, min(nprobe, self.nlist))
        centroids = state["quantizer"].centroids
        all_codes, all_terms = state["codes"], state["terms"]
        # The query's own table, shared by all the lists it probes: -2 q.r for l2, -q.r for ip.
        query_tables = pq.tables(q, "ip") * (2.0 if self.metric == "l2" else 1.0)
        q_dot_c = q @ centroids.T  # [nq, nlist]
        q_sq = np.einsum("ij,ij->i", q, q)
        c_sq = np.einsum("ij,ij->i", centroids, centroids)

        def score(lst: int, who: np.ndarray, lo: int, hi: int) -> np.ndarray:
            codes = all_codes[lo:hi]
            if self.metric == "l2":  # ||q - c||^2 + (||r||^2 + 2 c.r) - 2 q.r
                base = q_sq[who] - 2 * q_dot_c[who, lst] + c_sq[lst]
                return pq.adc(query_tables[who], codes) + all_terms[lo:hi][None, :] + base[:, None]
            return pq.adc(query_tables[who], codes) - q_dot_c[who, lst][:, None]  # -q.c - q.r

        keys, rows = scan_probed_lists(probes, state["offsets"], state["rows"], k, score)
        return keys, self._rows_to_ids(state, rows)

    def _remove(self, state, drop):
        keep, rows, offsets = remove_from_lists(state["offsets"], state["rows"], drop)
        return {"codes": state["codes"][keep], "terms": state["terms"][keep], "rows": rows, "offsets": offsets}

    def _structure_bytes(self, state):
        centroids = state["quantizer"].centroids.nbytes if state["quantizer"] is not None else 0
        tables = state["list_tables"].nbytes if state["list_tables"] is not None else 0
        return sum(state[name].nbytes for name in ("codes", "terms", "rows", "offsets")) + centroids + state["pq"].codebooks.nbytes + tables

    def _arrays(self, state):
        return {"centroids": saved_centroids(state, self.dim), **{name: state[name] for name in ("codes", "terms", "rows", "offsets")}, **state["pq"].arrays()}

    def _restore(self, arrays, n, where):
        quantizer = restore_quantizer(arrays, self, where)
        pq = self._untrained.restored(arrays, self.is_trained, where)
        state = {
            "quantizer": quantizer,
            "pq": pq,
            "list_tables": self._precompute(quantizer, pq),
            "codes": expect_array(arrays, "codes", np.uint8, (n, self.pq.m), where),
            "terms": expect_array(arrays, "terms", np.float32, (n,), where),
            "rows": expect_array(arrays, "rows", np.int64, (n,), where),
            "offsets": expect_array(arrays, "offsets", np.int64, (self.nlist + 1,), where),
        }
        pq.check_codes(state["codes"], where)
        check_list_layout(state, n, self.nlist, where)
        if n and state["list_tables"] is not None:  # the terms are derived data: they must be what the codes say
            lists = np.repeat(np.arange(self.nlist), np.diff(state["offsets"]))
            if not np.allclose(state["terms"], self._code_terms(state["list_tables"], lists, state["codes"]), rtol=1e-4, atol=1e-3):
                raise VectorIndexError(f"{where}: saved precomputed terms do not match the codes")
        return state
