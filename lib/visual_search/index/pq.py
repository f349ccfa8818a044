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

    def restore(self, arrays: dict[str, np.ndarray], trained: bool, where: str) -> None:
        """Take saved codebooks, checking their shape (``load_index``)."""
        shape = (self.m, self.ksub, self.dsub) if trained else (0, self.ksub, self.dsub)
        self.codebooks = expect_array(arrays, "codebooks", np.float32, shape, where)

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
        self.pq = ProductQuantizer(dim, m, nbits, n_iter, seed, max_train_points)
        super().__init__(dim, metric)

    def params(self) -> dict:
        pq = self.pq
        return {"m": pq.m, "nbits": pq.nbits, "n_iter": pq.n_iter, "seed": pq.seed, "max_train_points": pq.max_train_points}

    def _empty_state(self):
        return {"codes": np.empty((0, self.pq.m), np.uint8)}

    def _train(self, x: np.ndarray) -> None:
        self.pq.train(x)

    def _add(self, state, x, ids):
        return {"codes": np.concatenate([state["codes"], self.pq.encode(x)])}

    def _search(self, state, q, k, settings, info):
        codes = state["codes"]
        keys = np.empty((len(q), k), np.float32)
        rows = np.empty((len(q), k), np.int64)
        block = max(1, 4_000_000 // len(codes))
        for start in range(0, len(q), block):
            part = q[start : start + block]
            rows[start : start + block], keys[start : start + block] = topk_smallest(self.pq.adc(self.pq.tables(part, self.metric), codes), k)
        return keys, self._rows_to_ids(state, rows)

    def _remove(self, state, drop):
        return {"codes": state["codes"][~drop]}

    def _structure_bytes(self, state):
        return state["codes"].nbytes + self.pq.codebooks.nbytes

    def _arrays(self, state):
        return {"codes": state["codes"], **self.pq.arrays()}

    def _restore(self, arrays, n, where):
        self.pq.restore(arrays, self.is_trained, where)
        codes = expect_array(arrays, "codes", np.uint8, (n, self.pq.m), where)
        self.pq.check_codes(codes, where)
        return {"codes": codes}


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
        self.pq = ProductQuantizer(dim, m, nbits, n_iter, seed, max_train_points)
        self.n_iter, self.seed, self.max_train_points = self.pq.n_iter, self.pq.seed, self.pq.max_train_points
        super().__init__(dim, metric)
        self.quantizer: CoarseQuantizer | None = None
        self._list_tables: np.ndarray | None = None

    def _check_search_params(self, settings):
        return {"nprobe": check_nprobe(settings["nprobe"], "ivfpq")}

    def params(self) -> dict:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "m": self.pq.m, "nbits": self.pq.nbits,
                "n_iter": self.n_iter, "seed": self.seed, "max_train_points": self.max_train_points}

    def _empty_state(self):
        return {"codes": np.empty((0, self.pq.m), np.uint8), "terms": np.empty(0, np.float32),  # per vector: ||r_hat||^2 + 2 c.r_hat (l2)
                "rows": np.empty(0, np.int64), "offsets": np.zeros(self.nlist + 1, np.int64)}

    def _train(self, x: np.ndarray) -> None:
        if len(x) < max(self.nlist, self.pq.ksub):
            raise VectorIndexError(f"ivfpq: training needs at least max(nlist, 2**nbits)={max(self.nlist, self.pq.ksub)} vectors, got {len(x)}")
        centroids, _ = kmeans(x, self.nlist, n_iter=self.n_iter, seed=self.seed, max_points=self.max_train_points or 256 * self.nlist)
        quantizer = CoarseQuantizer(centroids, self.metric)
        self.pq.train(x - centroids[quantizer.nearest(x, 1)[:, 0]])
        self.quantizer = quantizer
        self._precompute()

    def _code_terms(self, lists: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Per vector, ``||r_hat||^2 + 2 c.r_hat`` (l2; zeros otherwise): the query-free part of its distance."""
        out = np.zeros(len(codes), np.float32)
        if self._list_tables is None:
            return out
        for j in range(self.pq.m):
            out += self._list_tables[lists, j, codes[:, j]]
        return out

    def _precompute(self) -> None:
        """``_list_tables[l, j, c] = ||codeword_jc||^2 + 2 centroid_l[j] . codeword_jc`` (l2 only)."""
        if self.metric != "l2" or self.quantizer is None:
            self._list_tables = None
            return
        books = self.pq.codebooks  # [m, ksub, dsub]
        parts = self.quantizer.centroids.reshape(self.nlist, self.pq.m, self.pq.dsub)
        self._list_tables = (np.einsum("mkd,mkd->mk", books, books)[None] + 2 * np.einsum("lmd,mkd->lmk", parts, books)).astype(np.float32)

    def _add(self, state, x, ids):
        new_lists = self.quantizer.nearest(x, 1)[:, 0]
        codes = self.pq.encode(x - self.quantizer.centroids[new_lists])
        order, offsets = insert_into_lists(state["offsets"], new_lists)
        n_old = len(state["rows"])
        return {
            "codes": np.concatenate([state["codes"], codes])[order],
            "terms": np.concatenate([state["terms"], self._code_terms(new_lists, codes)])[order],
            "rows": np.concatenate([state["rows"], np.arange(n_old, n_old + len(x))])[order],
            "offsets": offsets,
        }

    def _search(self, state, q, k, settings, info):
        # Blocks of queries keep the per-list copies of query tables (queries x m x 2**nbits) cache-sized.
        parts = [self._search_block(state, q[s : s + 1024], k, settings["nprobe"]) for s in range(0, len(q), 1024)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search_block(self, state, q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        probes = self.quantizer.nearest(q, min(nprobe, self.nlist))
        centroids = self.quantizer.centroids
        all_codes, all_terms = state["codes"], state["terms"]
        # The query's own table, shared by all the lists it probes: -2 q.r for l2, -q.r for ip.
        query_tables = self.pq.tables(q, "ip") * (2.0 if self.metric == "l2" else 1.0)
        q_dot_c = q @ centroids.T  # [nq, nlist]
        q_sq = np.einsum("ij,ij->i", q, q)
        c_sq = np.einsum("ij,ij->i", centroids, centroids)

        def score(lst: int, who: np.ndarray, lo: int, hi: int) -> np.ndarray:
            codes = all_codes[lo:hi]
            if self.metric == "l2":  # ||q - c||^2 + (||r||^2 + 2 c.r) - 2 q.r
                base = q_sq[who] - 2 * q_dot_c[who, lst] + c_sq[lst]
                return self.pq.adc(query_tables[who], codes) + all_terms[lo:hi][None, :] + base[:, None]
            return self.pq.adc(query_tables[who], codes) - q_dot_c[who, lst][:, None]  # -q.c - q.r

        keys, rows = scan_probed_lists(probes, state["offsets"], state["rows"], k, score)
        return keys, self._rows_to_ids(state, rows)

    def _remove(self, state, drop):
        keep, rows, offsets = remove_from_lists(state["offsets"], state["rows"], drop)
        return {"codes": state["codes"][keep], "terms": state["terms"][keep], "rows": rows, "offsets": offsets}

    def _structure_bytes(self, state):
        centroids = self.quantizer.centroids.nbytes if self.quantizer is not None else 0
        tables = self._list_tables.nbytes if self._list_tables is not None else 0
        return sum(state[name].nbytes for name in ("codes", "terms", "rows", "offsets")) + centroids + self.pq.codebooks.nbytes + tables

    def _arrays(self, state):
        centroids = self.quantizer.centroids if self.quantizer is not None else np.empty((0, self.dim), np.float32)
        return {"centroids": centroids, **{name: state[name] for name in ("codes", "terms", "rows", "offsets")}, **self.pq.arrays()}

    def _restore(self, arrays, n, where):
        self.quantizer = restore_quantizer(arrays, self, where)
        self.pq.restore(arrays, self.is_trained, where)
        state = {
            "codes": expect_array(arrays, "codes", np.uint8, (n, self.pq.m), where),
            "terms": expect_array(arrays, "terms", np.float32, (n,), where),
            "rows": expect_array(arrays, "rows", np.int64, (n,), where),
            "offsets": expect_array(arrays, "offsets", np.int64, (self.nlist + 1,), where),
        }
        self.pq.check_codes(state["codes"], where)
        check_list_layout(state, n, self.nlist, where)
        self._precompute()
        return state
