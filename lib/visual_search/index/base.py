"""The interface every index shares: validation, ids, search padding, and the file format.

Shaped like Faiss: ``train(x)``, ``add(x, ids=None)``, ``search(q, k) -> (D, I)``
with float32 ``D`` and int64 ``I`` of shape ``[nq, k]``, best first.

Score convention (the one Faiss uses):

* ``metric="l2"``: ``D`` holds *squared* Euclidean distances, smallest first.
* ``metric="ip"``: ``D`` holds inner products, largest first.
* ``metric="cosine"``: vectors are L2-normalised on the way in, and ``D`` holds
  cosine similarities, largest first.

When fewer than ``k`` results exist (a small index, or an approximate index
whose probed buckets hold too few vectors) the row is padded with id ``-1``
and the worst possible score: ``+inf`` for l2, ``-inf`` for ip and cosine.

Inside, every index works with one sign: *smaller is better*. Subclasses
implement ``_search`` returning a "key" (squared L2, or minus the similarity)
and the base class flips the sign back. That keeps each algorithm's code
free of ``if metric == ...`` branches for ordering.

Why one base class: the bad-input rules (wrong shape or dtype, NaN, duplicate
ids, k larger than the index, a truncated file) are the same for every
structure, so they live here once and one conformance suite checks them all.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from visual_search.errors import VectorIndexError  # noqa: F401  (re-exported: raised here, importable from here)

METRICS = ("l2", "ip", "cosine")
#: First bytes of every saved index; anything else is "not an index file".
MAGIC = b"VSINDEX\x00"
#: Bumped when the layout changes; files from a newer version are refused.
FORMAT_VERSION = 1
_HEADER = len(MAGIC) + 4 + 8 + 32  # magic, uint32 version, uint64 header length, SHA-256 of the rest




#: kind -> class; filled by ``@register``.
REGISTRY: dict[str, type["BaseIndex"]] = {}


def register(cls: type["BaseIndex"]) -> type["BaseIndex"]:
    """Class decorator: make ``cls`` buildable as ``build_index(cls.kind, ...)``."""
    REGISTRY[cls.kind] = cls
    return cls


def as_float32_matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 ``[n, dim]`` array, or raise ``VectorIndexError``.

    Accepts any real floating dtype (float16/32/64; converted, like Faiss's Python
    wrapper does) and any memory layout. Refuses integers, booleans and complex
    numbers (say ``x.astype(np.float32)`` if that is what you mean: silent casts of
    uint8 pixels are a classic source of overflow bugs), 1-D input, a wrong
    dimension, and NaN or inf (they would poison every distance they touch).

    Args:
        x: the vectors.
        name: how to call them in error messages (``"x"``, ``"queries"``).
        dim: the expected number of columns, or None to accept any.

    Returns:
        float32 ``[n, dim]``, C-contiguous (a copy only when needed).
    """
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise VectorIndexError(f"{name}: cannot turn {type(x).__name__} into an array ({err})") from None
    if x.dtype.kind != "f":
        raise VectorIndexError(
            f"{name}: dtype {x.dtype} is not a floating type; indexes store float32 vectors "
            f"(convert explicitly, e.g. {name}.astype(np.float32))"
        )
    if x.ndim != 2:
        hint = f" (one vector? use {name}[None, :])" if x.ndim == 1 else ""
        raise VectorIndexError(f"{name}: expected a 2-D array [n, dim], got shape {x.shape}{hint}")
    if dim is not None and x.shape[1] != dim:
        raise VectorIndexError(f"{name}: vectors have dimension {x.shape[1]}, but the index has dimension {dim}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        bad = "NaN" if np.isnan(x[row]).any() else "inf"
        raise VectorIndexError(f"{name}: row {row} contains {bad}; every value must be finite")
    return x


def normalize_rows(x: np.ndarray, name: str) -> np.ndarray:
    """L2-normalise each row (for ``metric="cosine"``); a zero row has no direction and is refused."""
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)  # float64: no overflow for huge values
    if (norms == 0).any():
        row = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise VectorIndexError(f"{name}: row {row} is the zero vector, which has no cosine similarity to anything")
    return (x / norms).astype(np.float32)


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


def topk_smallest(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the positions and values of the ``k`` smallest keys, sorted ascending.

    Returns:
        ``(positions int64 [rows, min(k, n)], values [rows, min(k, n)])``, ascending by value. Equal
        values may come in either order, and a tie at the k-th place may keep either position.

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
    positions = np.empty((rows, k), np.int64)
    values = np.empty((rows, k), keys.dtype)
    positions[row[top], rank[top]] = col[top]
    values[row[top], rank[top]] = val[top]
    return positions, values


class BaseIndex:
    """Common behaviour; subclasses implement ``_add``, ``_search``, ``_remove`` and their state.

    Rows: the base class keeps ``_ids`` (int64, one per stored vector, in the order
    they were added). Subclasses may refer to a vector by its *row* (position in
    ``_ids``) and map rows to ids with ``_rows_to_ids``. On ``remove`` the
    surviving rows keep their order and are renumbered 0..n-1.
    """

    kind: ClassVar[str] = ""
    #: Metrics the structure supports (others raise at construction).
    supported_metrics: ClassVar[tuple[str, ...]] = METRICS
    #: Whether ``train`` must be called before ``add``.
    needs_training: ClassVar[bool] = False
    #: Whether search returns the true nearest neighbours (used by the conformance suite).
    exact: ClassVar[bool] = False

    def __init__(self, dim: int, metric: str = "l2") -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise VectorIndexError(f"dim must be a positive integer, got {dim!r}")
        if metric not in METRICS:
            raise VectorIndexError(f"metric must be one of {METRICS}, got {metric!r}")
        if metric not in self.supported_metrics:
            raise VectorIndexError(
                f"{self.kind!r} does not support metric {metric!r}; it supports {self.supported_metrics}"
            )
        self.dim = int(dim)
        self.metric = metric
        self.is_trained = not self.needs_training
        self._ids = np.empty(0, dtype=np.int64)

    # ----------------------------------------------------------------- public API
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}{', ' + params if params else ''}; n={len(self)})"

    @property
    def ids(self) -> np.ndarray:
        """The stored ids, in the order they were added (a read-only view)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    def params(self) -> dict[str, Any]:
        """The construction parameters (what ``save`` records and ``load_index`` replays)."""
        return {}

    def train(self, x: Any) -> "BaseIndex":
        """Learn what the structure needs from sample vectors (centroids, codebooks, a mean).

        Does nothing for structures that need no training. Returns ``self``.

        Raises:
            VectorIndexError: bad vectors, or the index already holds vectors (their codes or
                lists come from the current training; build a new index to re-train).
        """
        x = self._prepare(as_float32_matrix(x, "training vectors", self.dim), "training vectors")
        if self.needs_training and len(self):
            raise VectorIndexError(
                f"the {self.kind!r} index already holds {len(self)} vectors encoded with its current training; "
                "build a new index to re-train"
            )
        if self.needs_training:
            if len(x) == 0:
                raise VectorIndexError("training vectors: got 0 vectors")
            self._train(x)
            self.is_trained = True
        return self

    def add(self, x: Any, ids: Any = None) -> "BaseIndex":
        """Store vectors under ``ids`` (default: consecutive ids after the largest stored one). Returns ``self``.

        Raises ``VectorIndexError`` for bad vectors, an untrained index, or ids that are
        negative, repeated within ``ids``, or already stored (nothing is added then).
        """
        x = as_float32_matrix(x, "x", self.dim)
        if not self.is_trained:
            raise VectorIndexError(f"{self.kind!r} index must be trained before add: call index.train(x) first")
        ids = self._check_new_ids(ids, len(x))
        if len(x) == 0:
            return self
        x = self._prepare(x, "x")
        before = self._ids
        self._ids = np.concatenate([before, ids])  # set first, so ``_add`` can read the new ids
        try:
            self._add(x, np.arange(len(before), len(self._ids)))
        except BaseException:
            self._ids = before
            raise
        return self

    def search(self, q: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best stored vectors for each query.

        Args:
            q: float ``[nq, dim]`` queries.
            k: how many results per query; 0 gives empty arrays; more than
                ``len(self)`` pads with id -1 (see the module docstring).

        Returns:
            ``(D, I)``: float32 scores ``[nq, k]`` and int64 ids ``[nq, k]``, best first.
        """
        q = as_float32_matrix(q, "queries", self.dim)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise VectorIndexError(f"k must be a non-negative integer, got {k!r}")
        k = int(k)
        if len(self) == 0:
            raise VectorIndexError(f"the {self.kind!r} index is empty: add vectors before searching")
        keys = np.full((len(q), k), np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        kk = min(k, len(self))
        if kk > 0 and len(q) > 0:
            found_keys, found_ids = self._search(self._prepare(q, "queries"), kk)
            keys[:, :kk], ids[:, :kk] = found_keys, found_ids
            keys[ids < 0] = np.inf
        return self._keys_to_scores(keys), ids

    def remove(self, ids: Any) -> int:
        """Remove the vectors stored under ``ids``; ids not present are ignored. Returns how many went."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise VectorIndexError(f"ids to remove: expected a 1-D integer array, got dtype {ids.dtype} shape {ids.shape}")
        drop = np.isin(self._ids, ids.astype(np.int64))
        n = int(drop.sum())
        if n:
            self._remove(drop)
            self._ids = self._ids[~drop]
        return n

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory: vectors or codes, the structure, and 8 per id."""
        return int(self._structure_bytes()) + self._ids.nbytes

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` atomically (a temporary file, then a rename). Returns the path."""
        return write_index_file(Path(path), self)

    # ------------------------------------------------------------ for subclasses
    def _prepare(self, x: np.ndarray, name: str) -> np.ndarray:
        """Normalise for cosine; identity otherwise."""
        return normalize_rows(x, name) if self.metric == "cosine" else x

    def _keys_to_scores(self, keys: np.ndarray) -> np.ndarray:
        """Internal keys (smaller is better) to public scores: l2 unchanged, similarities negated back."""
        return keys if self.metric == "l2" else -keys

    def _rows_to_ids(self, rows: np.ndarray) -> np.ndarray:
        """Map internal rows to stored ids, keeping -1 as -1."""
        out = np.full(rows.shape, -1, dtype=np.int64)
        ok = rows >= 0
        out[ok] = self._ids[rows[ok]]
        return out

    def _check_new_ids(self, ids: Any, n: int) -> np.ndarray:
        if ids is None:
            start = int(self._ids.max()) + 1 if len(self._ids) else 0
            return np.arange(start, start + n, dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise VectorIndexError(f"ids: expected shape ({n},) to match the vectors, got {ids.shape}")
        if n and ids.dtype.kind not in "iu":
            raise VectorIndexError(f"ids: expected integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        if n and ids.min() < 0:
            raise VectorIndexError(f"ids: must be non-negative (-1 marks 'no result'), got {int(ids.min())}")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise VectorIndexError(f"ids: id {int(unique[counts > 1][0])} appears more than once in this batch")
        present = np.isin(ids, self._ids)
        if present.any():
            raise VectorIndexError(f"ids: id {int(ids[present][0])} is already in the index (remove it first to replace it)")
        return ids

    def _train(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(keys, ids)`` of shape ``[nq, k]``: keys ascending, id -1 where nothing was found."""
        raise NotImplementedError

    def _remove(self, drop: np.ndarray) -> None:
        """Forget the rows where ``drop`` is True; the rest are renumbered in order."""
        raise NotImplementedError

    def _structure_bytes(self) -> int:
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        """The state to save, as named arrays (the ids are saved by the base class)."""
        raise NotImplementedError

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Rebuild the state from ``_arrays()`` output (``_ids`` is already set)."""
        raise NotImplementedError


def build_index(kind: str, dim: int, metric: str = "l2", **params: Any) -> BaseIndex:
    """Create an empty index of ``kind`` (see ``REGISTRY`` for the kinds).

    Args:
        kind: e.g. ``"exact"``, ``"kdtree"``, ``"lsh"``, ``"ivf"``, ``"pq"``, ``"ivfpq"``,
            ``"faiss"``, ``"annoy"``, ``"sklearn-kdtree"``, ``"sklearn-balltree"``.
        dim: vector dimension.
        metric: ``"l2"``, ``"ip"`` or ``"cosine"``.
        **params: the kind's own parameters (e.g. ``nlist=1024, nprobe=16``).

    Raises:
        VectorIndexError: an unknown kind or parameter, or a metric the kind lacks.
    """
    if kind not in REGISTRY:
        raise VectorIndexError(f"unknown index kind {kind!r}; choose from {sorted(REGISTRY)}")
    cls = REGISTRY[kind]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "dim", "metric")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise VectorIndexError(f"{kind!r} index: unknown parameter(s) {unknown}; it accepts {accepted}")
    return cls(dim, metric, **params)


def write_index_file(path: Path, index: BaseIndex) -> Path:
    """Layout: MAGIC | uint32 version | uint64 header length | JSON header | .npz payload.

    The header records the kind, dim, metric, parameters and the payload's length;
    a SHA-256 of header and payload follows the fixed prefix, so a truncated or
    altered file (header or arrays) is caught before anything is used.
    """
    arrays = {"ids": index._ids, **{f"state.{k}": v for k, v in index._arrays().items()}}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    try:
        header = json.dumps({
            "kind": index.kind, "dim": index.dim, "metric": index.metric, "params": index.params(),
            "is_trained": index.is_trained, "payload_bytes": len(payload),
        }).encode()
    except TypeError as err:
        raise VectorIndexError(f"cannot save {index!r}: a parameter is not JSON-serialisable ({err})") from None
    digest = hashlib.sha256(header + payload).digest()
    blob = MAGIC + np.uint32(FORMAT_VERSION).tobytes() + np.uint64(len(header)).tobytes() + digest + header + payload
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_index(path: str | os.PathLike) -> BaseIndex:
    """Read an index written by ``save``.

    Raises:
        VectorIndexError: the file is missing, not an index file, from a newer
            format version, truncated, or altered (checksum mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise VectorIndexError(f"{path}: no such index file")
    blob = path.read_bytes()
    if blob[: len(MAGIC)] != MAGIC:
        raise VectorIndexError(f"{path}: not a visual_search index file (it starts with {blob[:8]!r}, expected {MAGIC!r})")
    if len(blob) < _HEADER:
        raise VectorIndexError(f"{path}: truncated ({len(blob)} bytes, shorter than the fixed header)")
    version = int(np.frombuffer(blob, np.uint32, 1, len(MAGIC))[0])
    if version > FORMAT_VERSION:
        raise VectorIndexError(f"{path}: written by format version {version}; this library reads up to {FORMAT_VERSION}")
    header_len = int(np.frombuffer(blob, np.uint64, 1, len(MAGIC) + 4)[0])
    digest = blob[len(MAGIC) + 12 : _HEADER]
    try:
        header = json.loads(blob[_HEADER : _HEADER + header_len])
        expected = _HEADER + header_len + header["payload_bytes"]
    except (ValueError, KeyError, TypeError):
        raise VectorIndexError(f"{path}: truncated or corrupt header") from None
    if len(blob) != expected:
        raise VectorIndexError(f"{path}: truncated or padded: {len(blob)} bytes, expected {expected}")
    if hashlib.sha256(blob[_HEADER:]).digest() != digest:
        raise VectorIndexError(f"{path}: checksum mismatch; the file was altered or damaged")
    payload = blob[_HEADER + header_len :]
    if header["kind"] not in REGISTRY:
        raise VectorIndexError(f"{path}: index kind {header['kind']!r} is not available here; known: {sorted(REGISTRY)}")
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    index = REGISTRY[header["kind"]](header["dim"], header["metric"], **header["params"])
    index._ids = arrays.pop("ids").astype(np.int64)
    index.is_trained = bool(header["is_trained"])
    index._restore({name.removeprefix("state."): value for name, value in arrays.items()})
    return index


class StaticIndex(BaseIndex):
    """For structures built once from all the vectors (trees, Annoy): they keep the
    vectors, and rebuild the structure lazily at the first search after an ``add``
    or ``remove``. Bulk-load then query, as with scikit-learn's trees and Annoy.

    Subclasses implement ``_build()`` (from ``self._vectors``) and
    ``_query(q, k) -> (keys, rows)``; they may use ``self._built`` freely.
    """

    def __init__(self, dim: int, metric: str = "l2") -> None:
        super().__init__(dim, metric)
        self._vectors = np.empty((0, dim), np.float32)
        self._built: Any = None

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        self._vectors = np.concatenate([self._vectors, x])
        self._built = None

    def _remove(self, drop: np.ndarray) -> None:
        self._vectors = self._vectors[~drop]
        self._built = None

    def build(self) -> "StaticIndex":
        """Build now rather than at the first search (e.g. to time the build)."""
        if self._built is None and len(self._vectors):
            self._built = self._build()
        return self

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.build()
        keys, rows = self._query(q, k)
        return keys.astype(np.float32), self._rows_to_ids(rows)

    def _structure_bytes(self) -> int:
        return self._vectors.nbytes

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"vectors": self._vectors}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._vectors = arrays["vectors"]

    def _build(self) -> Any:
        raise NotImplementedError

    def _query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(keys, rows)``, ``[nq, k]``, ascending; rows -1 where nothing was found."""
        raise NotImplementedError

    def _l2_to_keys(self, squared: np.ndarray) -> np.ndarray:
        """Squared L2 to this index's key. For cosine the vectors are unit length, so
        ``||q - x||^2 = 2 - 2 cos`` and the key (minus the cosine) is ``d^2 / 2 - 1``."""
        return squared / 2 - 1 if self.metric == "cosine" else squared
