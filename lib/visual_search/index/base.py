"""The base classes every index shares: ids, search padding, one snapshot of state, and one writer at a time.

Shaped like Faiss: ``train(x)``, ``add(x, ids=None)``, ``search(q, k) -> (D, I)``
with float32 ``D`` and int64 ``I`` of shape ``[nq, min(k, len(index))]``, best first.

Score convention (the one Faiss uses):

* ``metric="l2"``: ``D`` holds *squared* Euclidean distances, smallest first.
* ``metric="ip"``: ``D`` holds inner products, largest first.
* ``metric="cosine"``: vectors are L2-normalised on the way in, and ``D`` holds
  cosine similarities, largest first.

``k`` is capped at the index size, so a huge ``k`` costs nothing. When an
approximate index finds fewer than ``min(k, len(index))`` results (its probed
buckets hold too few vectors) the row is padded with id ``-1`` and the worst
possible score: ``+inf`` for l2, ``-inf`` for ip and cosine.

Inside, every index works with one sign: *smaller is better*. Subclasses
return a "key" (squared L2, or minus the similarity) and the base class flips
the sign back, which keeps each algorithm free of ``if metric == ...`` branches.

**Safe under concurrency.** Everything a search reads lives in one object,
``self._state`` (a dict of arrays, ids included). ``search`` takes that
reference once and never writes to the index: its settings come with the call
(``params=``) and its statistics go to a callback (``stats=``). ``add`` and
``remove`` take a lock (one writer at a time), compute a complete new state
without touching the old one, and commit it with a single assignment. So any
number of threads can search while one thread writes: each search sees the
index before or after a write, never half of one; and a write that fails at
any point leaves the index exactly as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from visual_search.errors import VectorIndexError
from visual_search.index.validation import (
    METRICS,
    as_float32_matrix,
    check_k,
    check_model_version,
    check_new_ids,
    check_params_mapping,
    check_remove_ids,
    expect_array,
    normalize_rows,
    positive_int,
)

State = dict[str, Any]
EMPTY_IDS = np.empty(0, dtype=np.int64)


class BaseIndex:
    """Common behaviour; subclasses implement ``_train``, ``_add``, ``_search``, ``_remove`` and the file hooks.

    State: ``self._state`` maps names to arrays, and always holds ``"ids"`` (int64,
    one per stored vector, in the order they were added). Subclasses may refer to a
    vector by its *row* (position in ``ids``). On ``remove`` the surviving rows keep
    their order and are renumbered 0..n-1. ``_add`` and ``_remove`` receive the
    current state and return a new one; they must not modify the arrays they are given.
    """

    kind: ClassVar[str] = ""
    #: Metrics the structure supports (others raise at construction).
    supported_metrics: ClassVar[tuple[str, ...]] = METRICS
    #: Whether ``train`` must be called before ``add``.
    needs_training: ClassVar[bool] = False
    #: Whether search returns the true nearest neighbours (used by the conformance suite).
    exact: ClassVar[bool] = False
    #: Names of the knobs ``search(..., params={...})`` accepts; their stored defaults are attributes.
    search_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dim: int, metric: str = "l2") -> None:
        self.dim = positive_int(dim, "dim", high=2**20)
        if metric not in METRICS:
            raise VectorIndexError(f"metric must be one of {METRICS}, got {metric!r}")
        if metric not in self.supported_metrics:
            raise VectorIndexError(f"{self.kind!r} does not support metric {metric!r}; it supports {self.supported_metrics}")
        self.metric = metric
        self.is_trained = not self.needs_training
        #: The embedding model whose vectors this index holds (``Encoder.version``), or None.
        self.model_version: str | None = None
        self._write_lock = threading.Lock()
        self._state: State = {"ids": EMPTY_IDS, **self._empty_state()}

    # ----------------------------------------------------------------- public API
    def __len__(self) -> int:
        return len(self._state["ids"])

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}{', ' + params if params else ''}; n={len(self)})"

    @property
    def ids(self) -> np.ndarray:
        """The stored ids, in the order they were added (a read-only view)."""
        view = self._state["ids"].view()
        view.flags.writeable = False
        return view

    def params(self) -> dict[str, Any]:
        """The construction parameters (what ``save`` records and ``load_index`` replays)."""
        return {}

    def train(self, x: Any) -> BaseIndex:
        """Learn what the structure needs from sample vectors (centroids, codebooks, a mean).

        Does nothing for structures that need no training. Returns ``self``.

        Raises:
            VectorIndexError: bad vectors, or the index already holds vectors (their codes or
                lists come from the current training; build a new index to re-train).
        """
        x = self._prepare(as_float32_matrix(x, "training vectors", self.dim), "training vectors")
        with self._write_lock:
            if self.needs_training and len(self):
                raise VectorIndexError(
                    f"the {self.kind!r} index already holds {len(self)} vectors encoded with its current training; "
                    "build a new index to re-train"
                )
            if self.needs_training:
                if len(x) == 0:
                    raise VectorIndexError("training vectors: got 0 vectors")
                trained = self._train(x)  # computed aside; committed with one assignment
                self._state = {**self._state, **trained}
                self.is_trained = True
        return self

    def add(self, x: Any, ids: Any = None, model_version: str | None = None) -> BaseIndex:
        """Store vectors under ``ids`` (default: consecutive ids after the largest stored one). Returns ``self``.

        Args:
            x: float ``[n, dim]``.
            ids: int ``[n]``, each in 0..int64 max, not already stored (None: consecutive defaults).
            model_version: the model that made ``x``; refused if the index holds another model's
                vectors. The first vectors added to an empty index without a model version
                name it.

        Raises:
            VectorIndexError: bad vectors or ids, an untrained index, or another model's
                vectors. Nothing is added then, and a failure at any later point also
                leaves the index exactly as it was.
        """
        x = as_float32_matrix(x, "x", self.dim)
        self._check_model(model_version, "x")
        with self._write_lock:
            if not self.is_trained:
                raise VectorIndexError(f"{self.kind!r} index must be trained before add: call index.train(x) first")
            state = self._state
            ids = check_new_ids(ids, len(x), state["ids"])
            if len(x) == 0:
                return self
            new = {**state, **self._add(state, self._prepare(x, "x"), ids), "ids": np.concatenate([state["ids"], ids])}
            if self.model_version is None and model_version is not None and not len(state["ids"]):
                self.model_version = model_version  # the first vectors name the model of all that follow
            self._state = new  # the commit: one assignment
        return self

    def search(
        self,
        q: Any,
        k: int,
        params: dict[str, Any] | None = None,
        stats: Callable[[dict[str, float]], Any] | None = None,
        model_version: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best stored vectors for each query.

        Args:
            q: float ``[nq, dim]`` queries.
            k: how many results per query; capped at ``len(self)``.
            params: search-time knobs for this call only (e.g. ``{"nprobe": 16}``); the
                names are ``type(index).search_params``, and the index's stored values
                (``index.nprobe``) are the defaults.
            stats: called once with a dict of search statistics (e.g. leaves visited);
                ``stats=info.update`` fills a dict ``info``.
            model_version: the model that made ``q``; refused if the index holds another model's vectors.

        Returns:
            ``(D, I)``: float32 scores and int64 ids, ``[nq, min(k, len(self))]``, best first.
        """
        state = self._state  # one snapshot for the whole call: a concurrent write cannot tear it
        q = as_float32_matrix(q, "queries", self.dim)
        k = check_k(k)
        self._check_model(model_version, "queries")
        settings = self._settings(params)
        n = len(state["ids"])
        if n == 0:
            raise VectorIndexError(f"the {self.kind!r} index is empty: add vectors before searching")
        kk = min(k, n)
        if kk == 0 or len(q) == 0:
            return np.empty((len(q), kk), np.float32), np.empty((len(q), kk), np.int64)
        if stats is not None and not callable(stats):
            raise VectorIndexError(f"stats must be a callable that takes a dict (e.g. info.update), got {type(stats).__name__}")
        info: dict[str, float] = {}
        keys, ids = self._search(state, self._prepare(q, "queries"), kk, settings, info)
        keys = keys.astype(np.float32, copy=False)
        keys[ids < 0] = np.inf
        if stats is not None:
            stats(info)
        return self._keys_to_scores(keys), ids

    def remove(self, ids: Any) -> int:
        """Remove the vectors stored under ``ids``; ids not present are ignored. Returns how many went."""
        ids = check_remove_ids(ids)
        with self._write_lock:
            state = self._state
            drop = np.isin(state["ids"], ids)
            n = int(drop.sum())
            if n:
                self._state = {**state, **self._remove(state, drop), "ids": state["ids"][~drop]}
        return n

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory: vectors or codes, the structure, and 8 per id."""
        state = self._state
        return int(self._structure_bytes(state)) + state["ids"].nbytes

    def save(self, path) -> Any:
        """Write the index to ``path`` atomically (a temporary file, then a rename). Returns the path."""
        from visual_search.index.io import write_index_file

        return write_index_file(path, self)

    # ------------------------------------------------------------ for subclasses
    def _settings(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """The stored search defaults overridden by this call's ``params``, validated."""
        given = check_params_mapping(params, self.search_params, self.kind)
        merged = {name: getattr(self, name) for name in self.search_params} | given
        return self._check_search_params(merged)

    def _check_search_params(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Validate (and normalise) search settings; the constructor runs the same check on the defaults."""
        return settings

    def _check_model(self, version: str | None, name: str) -> None:
        version = check_model_version(version, f"{name}: model_version")
        if version is not None and self.model_version is not None and version != self.model_version:
            raise VectorIndexError(
                f"{name} come from model {version!r}, but the index holds embeddings of model {self.model_version!r}; "
                "embed with the index's model, or build the index again with the new one"
            )

    def _prepare(self, x: np.ndarray, name: str) -> np.ndarray:
        """Normalise for cosine; identity otherwise."""
        return normalize_rows(x, name) if self.metric == "cosine" else x

    def _keys_to_scores(self, keys: np.ndarray) -> np.ndarray:
        """Internal keys (smaller is better) to public scores: l2 unchanged, similarities negated back."""
        return keys if self.metric == "l2" else -keys

    @staticmethod
    def _rows_to_ids(state: State, rows: np.ndarray) -> np.ndarray:
        """Map internal rows to stored ids, keeping -1 as -1."""
        out = np.full(rows.shape, -1, dtype=np.int64)
        ok = rows >= 0
        out[ok] = state["ids"][rows[ok]]
        return out

    def _empty_state(self) -> State:
        """The arrays of an empty index (besides ``ids``)."""
        raise NotImplementedError

    def _train(self, x: np.ndarray) -> State:
        """Return the trained entries (centroids, codebooks, a mean) to merge into the state.

        Searches read them from the state, like everything else, so a search that
        overlaps a re-training (of an emptied index) never mixes old codes with new codebooks.
        """
        raise NotImplementedError

    def _add(self, state: State, x: np.ndarray, ids: np.ndarray) -> State:
        """Return the entries that change when ``x`` is added (rows ``len(state) ..``), new arrays only;
        they are merged over ``state``, and ``ids`` is set by the caller."""
        raise NotImplementedError

    def _search(self, state: State, q: np.ndarray, k: int, settings: dict[str, Any], info: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(keys, ids)`` of shape ``[nq, k]``: keys ascending, id -1 where nothing was found.

        ``settings`` are the validated search parameters; statistics go into ``info``.
        """
        raise NotImplementedError

    def _remove(self, state: State, drop: np.ndarray) -> State:
        """Return the entries that change when the rows where ``drop`` is True go (the rest are
        renumbered in order); merged over ``state`` like ``_add``'s."""
        raise NotImplementedError

    def _structure_bytes(self, state: State) -> int:
        raise NotImplementedError

    def _arrays(self, state: State) -> dict[str, np.ndarray]:
        """The state and training to save, as named arrays (``ids`` is saved by the caller)."""
        raise NotImplementedError

    def _restore(self, arrays: dict[str, np.ndarray], n: int, where: str) -> State:
        """Check the saved arrays against the header and ``n`` stored ids; set the training; return the state."""
        raise NotImplementedError


class StaticIndex(BaseIndex):
    """For structures built once from all the vectors (trees, Annoy).

    They keep the float32 vectors and rebuild the structure inside every ``add`` and
    ``remove`` (never lazily inside ``search``): bulk-load, then query, as with
    scikit-learn's trees and Annoy. Subclasses implement ``_build(vectors)`` and
    ``_query(built, vectors, q, k, settings, info) -> (keys, rows)``.
    """

    def _empty_state(self) -> State:
        return {"vectors": np.empty((0, self.dim), np.float32), "built": None}

    def _add(self, state: State, x: np.ndarray, ids: np.ndarray) -> State:
        vectors = np.concatenate([state["vectors"], x])
        return {"vectors": vectors, "built": self._build(vectors)}

    def _remove(self, state: State, drop: np.ndarray) -> State:
        vectors = state["vectors"][~drop]
        return {"vectors": vectors, "built": self._build(vectors) if len(vectors) else None}

    def _search(self, state, q, k, settings, info):
        keys, rows = self._query(state["built"], state["vectors"], q, k, settings, info)
        return keys.astype(np.float32), self._rows_to_ids(state, rows)

    def _structure_bytes(self, state: State) -> int:
        return state["vectors"].nbytes + (self._built_bytes(state["built"]) if state["built"] is not None else 0)

    def _arrays(self, state: State) -> dict[str, np.ndarray]:
        return {"vectors": state["vectors"]}

    def _restore(self, arrays, n, where):
        vectors = expect_array(arrays, "vectors", np.float32, (n, self.dim), where)
        return {"vectors": vectors, "built": self._build(vectors) if n else None}

    def _build(self, vectors: np.ndarray) -> Any:
        raise NotImplementedError

    def _built_bytes(self, built: Any) -> int:
        return 0

    def _query(self, built: Any, vectors: np.ndarray, q: np.ndarray, k: int, settings: dict, info: dict) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(keys, rows)``, ``[nq, k]``, ascending; rows -1 where nothing was found."""
        raise NotImplementedError

    def _l2_to_keys(self, squared: np.ndarray) -> np.ndarray:
        """Squared L2 to this index's key. For cosine the vectors are unit length, so
        ``||q - x||^2 = 2 - 2 cos`` and the key (minus the cosine) is ``d^2 / 2 - 1``."""
        return squared / 2 - 1 if self.metric == "cosine" else squared
