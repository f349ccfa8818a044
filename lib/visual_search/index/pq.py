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

from visual_search.index.base import BaseIndex, VectorIndexError, register, topk_smallest
from visual_search.index.ivf import CoarseQuantizer, insert_into_lists, remove_from_lists, scan_probed_lists
from visual_search.index.kmeans import assign, kmeans


def _positive_int(kind: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise VectorIndexError(f"{kind}: {name} must be a positive integer, got {value!r}")
    return int(value)


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
        m, nbits = _positive_int("pq", "m", m), _positive_int("pq", "nbits", nbits)
        if dim % m:
            raise VectorIndexError(f"pq: dim={dim} is not divisible by m={m}; pick m among {[d for d in range(1, dim + 1) if dim % d == 0][:12]}...")
        if nbits > 8:
            raise VectorIndexError(f"pq: nbits must be at most 8 here (codes are stored as uint8), got {nbits}")
        if max_train_points is not None:
            max_train_points = _positive_int("pq", "max_train_points", max_train_points)
        self.dim, self.m, self.nbits = dim, m, nbits
        self.n_iter, self.seed = _positive_int("pq", "n_iter", n_iter), int(seed)
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


@register
class PQIndex(BaseIndex):
    """Flat PQ: every stored vector is ``m`` bytes; search is ADC against all of them.

    Args:
        m: sub-quantizers; ``dim`` must be divisible by it.
        nbits: bits per code (1..8).
        n_iter, seed, max_train_points: k-means settings for the codebooks
            (default cap: 64 points per centroid per sub-space).
    """

    kind = "pq"
    needs_training = True

    def __init__(self, dim: int, metric: str = "l2", m: int = 8, nbits: int = 8, n_iter: int = 15, seed: int = 0,
                 max_train_points: int | None = None) -> None:
        super().__init__(dim, metric)
        self.pq = ProductQuantizer(dim, m, nbits, n_iter, seed, max_train_points)
        self._codes = np.empty((0, self.pq.m), np.uint8)

    def params(self) -> dict:
        pq = self.pq
        return {"m": pq.m, "nbits": pq.nbits, "n_iter": pq.n_iter, "seed": pq.seed, "max_train_points": pq.max_train_points}

    def _train(self, x: np.ndarray) -> None:
        self.pq.train(x)

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        self._codes = np.concatenate([self._codes, self.pq.encode(x)])

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        keys = np.empty((len(q), k), np.float32)
        rows = np.empty((len(q), k), np.int64)
        block = max(1, 4_000_000 // len(self._codes))
        for start in range(0, len(q), block):
            part = q[start : start + block]
            rows[start : start + block], keys[start : start + block] = topk_smallest(self.pq.adc(self.pq.tables(part, self.metric), self._codes), k)
        return keys, self._rows_to_ids(rows)

    def _remove(self, drop: np.ndarray) -> None:
        self._codes = self._codes[~drop]

    def _structure_bytes(self) -> int:
        return self._codes.nbytes + self.pq.codebooks.nbytes

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"codes": self._codes, **self.pq.arrays()}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._codes, self.pq.codebooks = arrays["codes"], arrays["codebooks"]


@register
class IVFPQIndex(BaseIndex):
    """IVF coarse quantizer + PQ-encoded residuals (Faiss's ``IVF{nlist},PQ{m}``).

    Args:
        nlist, nprobe: as for ``"ivf"``.
        m, nbits: as for ``"pq"``.
        n_iter, seed, max_train_points: k-means settings (coarse and PQ).
    """

    kind = "ivfpq"
    needs_training = True

    def __init__(self, dim: int, metric: str = "l2", nlist: int = 100, nprobe: int = 8, m: int = 8, nbits: int = 8,
                 n_iter: int = 15, seed: int = 0, max_train_points: int | None = None) -> None:
        super().__init__(dim, metric)
        self.nlist, self.nprobe = _positive_int("ivfpq", "nlist", nlist), _positive_int("ivfpq", "nprobe", nprobe)
        self.pq = ProductQuantizer(dim, m, nbits, n_iter, seed, max_train_points)
        self.n_iter, self.seed, self.max_train_points = self.pq.n_iter, self.pq.seed, self.pq.max_train_points
        self.quantizer: CoarseQuantizer | None = None
        self._codes = np.empty((0, self.pq.m), np.uint8)
        self._rows = np.empty(0, np.int64)
        self._offsets = np.zeros(self.nlist + 1, np.int64)
        self._terms = np.empty(0, np.float32)  # per stored vector: ||r_hat||^2 + 2 c.r_hat (l2)
        self._list_tables: np.ndarray | None = None

    def params(self) -> dict:
        return {"nlist": self.nlist, "nprobe": self.nprobe, "m": self.pq.m, "nbits": self.pq.nbits,
                "n_iter": self.n_iter, "seed": self.seed, "max_train_points": self.max_train_points}

    def _train(self, x: np.ndarray) -> None:
        if len(x) < max(self.nlist, self.pq.ksub):
            raise VectorIndexError(f"ivfpq: training needs at least max(nlist, 2**nbits)={max(self.nlist, self.pq.ksub)} vectors, got {len(x)}")
        centroids, _ = kmeans(x, self.nlist, n_iter=self.n_iter, seed=self.seed, max_points=self.max_train_points or 256 * self.nlist)
        self.quantizer = CoarseQuantizer(centroids, self.metric)
        self.pq.train(x - centroids[self.quantizer.nearest(x, 1)[:, 0]])
        self._precompute()

    def _code_terms(self, lists: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Per vector, ``||r_hat||^2 + 2 c.r_hat`` (l2; zeros otherwise): the query-free part of its distance."""
        if self._list_tables is None:
            return np.zeros(len(codes), np.float32)
        out = np.zeros(len(codes), np.float32)
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

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        new_lists = self.quantizer.nearest(x, 1)[:, 0]
        codes = self.pq.encode(x - self.quantizer.centroids[new_lists])
        terms = self._code_terms(new_lists, codes)
        order, self._offsets = insert_into_lists(self._offsets, new_lists)
        self._codes = np.concatenate([self._codes, codes])[order]
        self._terms = np.concatenate([self._terms, terms])[order]
        self._rows = np.concatenate([self._rows, rows])[order]

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # Blocks of queries keep the per-list copies of query tables (queries x m x 2**nbits) cache-sized.
        parts = [self._search_block(q[s : s + 1024], k) for s in range(0, len(q), 1024)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search_block(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        probes = self.quantizer.nearest(q, min(self.nprobe, self.nlist))
        centroids = self.quantizer.centroids
        # The query's own table, shared by all the lists it probes: -2 q.r for l2, -q.r for ip.
        query_tables = self.pq.tables(q, "ip") * (2.0 if self.metric == "l2" else 1.0)
        q_dot_c = q @ centroids.T  # [nq, nlist]
        q_sq = np.einsum("ij,ij->i", q, q)
        c_sq = np.einsum("ij,ij->i", centroids, centroids)

        def score(lst: int, who: np.ndarray, lo: int, hi: int) -> np.ndarray:
            codes = self._codes[lo:hi]
            if self.metric == "l2":  # ||q - c||^2 + (||r||^2 + 2 c.r) - 2 q.r
                base = q_sq[who] - 2 * q_dot_c[who, lst] + c_sq[lst]
                return self.pq.adc(query_tables[who], codes) + self._terms[lo:hi][None, :] + base[:, None]
            return self.pq.adc(query_tables[who], codes) - q_dot_c[who, lst][:, None]  # -q.c - q.r

        keys, rows = scan_probed_lists(probes, self._offsets, self._rows, k, score)
        return keys, self._rows_to_ids(rows)

    def _remove(self, drop: np.ndarray) -> None:
        keep, self._rows, self._offsets = remove_from_lists(self._offsets, self._rows, drop)
        self._codes, self._terms = self._codes[keep], self._terms[keep]

    def _structure_bytes(self) -> int:
        centroids = self.quantizer.centroids.nbytes if self.quantizer is not None else 0
        tables = self._list_tables.nbytes if self._list_tables is not None else 0
        return self._codes.nbytes + self._terms.nbytes + self._rows.nbytes + self._offsets.nbytes + centroids + self.pq.codebooks.nbytes + tables

    def _arrays(self) -> dict[str, np.ndarray]:
        centroids = self.quantizer.centroids if self.quantizer is not None else np.empty((0, self.dim), np.float32)
        return {"centroids": centroids, "codes": self._codes, "terms": self._terms, "rows": self._rows, "offsets": self._offsets, **self.pq.arrays()}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        if len(arrays["centroids"]):
            self.quantizer = CoarseQuantizer(arrays["centroids"], self.metric)
        self._codes, self._rows, self._offsets, self.pq.codebooks = arrays["codes"], arrays["rows"], arrays["offsets"], arrays["codebooks"]
        self._terms = arrays["terms"]
        self._precompute()
