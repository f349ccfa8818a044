"""Production libraries behind the same interface: Faiss, Annoy and scikit-learn's trees.

Use these when you outgrow the hand-written indexes: they are the twins the
conformance suite and ``bench ann`` compare ours against.

* ``"faiss"``: any ``faiss.index_factory`` string, e.g. ``"Flat"``, ``"IVF1024,Flat"``,
  ``"IVF256,PQ98"``, ``"HNSW32"``, ``"LSH"``; run-time knobs such as ``nprobe`` or
  ``efSearch`` go in ``search_params`` (the defaults) or ``search(..., params=...)``.
* ``"annoy"``: Spotify's forest of random-projection trees (``n_trees``, ``search_k``).
* ``"sklearn-kdtree"`` / ``"sklearn-balltree"``: exact trees from scikit-learn.

Errors these libraries raise because of the caller's input (a factory string Faiss
cannot parse, too few training vectors, a saved structure they refuse) come out
as ``VectorIndexError`` naming the parameter, never as a raw library exception.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

import numpy as np

from visual_search._checks import check_int
from visual_search.errors import VectorIndexError
from visual_search.index.base import BaseIndex, StaticIndex
from visual_search.index.registry import register
from visual_search.index.validation import expect_array, positive_int


def _faiss():
    import faiss  # imported lazily: only the Faiss-backed kinds need it

    return faiss


def _last_line(err: Exception) -> str:
    return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__


#: Search parameters per Faiss index family: name -> (lowest, highest) accepted value.
_FAISS_KNOBS = {
    "ivf": {"nprobe": (1, 2**31 - 1), "max_codes": (0, 2**62)},
    "hnsw": {"efSearch": (1, 100_000)},
    "pq": {"polysemous_ht": (0, 8 * 4096)},
}


@register
class FaissIndex(BaseIndex):
    """A Faiss index from a factory string, storing our ids as Faiss ids.

    Args:
        factory: a ``faiss.index_factory`` description (default ``"Flat"``: exact).
        search_params: default run-time parameters, e.g. ``{"nprobe": 16}`` for IVF or
            ``{"efSearch": 64}`` for HNSW; ``search(..., params=...)`` overrides them for
            one call. Each is passed to Faiss as a ``SearchParameters`` object with the
            call, never set on the shared index, so concurrent searches cannot interfere.

    Scores are what Faiss returns, in this package's convention: squared L2 for
    l2, similarities for ip and cosine; for ``"LSH"`` they are Hamming distances
    between binary codes (Faiss's IndexLSH does not re-rank).

    Writes copy the Faiss index (``faiss.clone_index``), add or remove there, and
    commit the copy, so a failed write changes nothing and searches never see a
    half-written index. That costs one copy per ``add``: add in large batches.
    """

    kind = "faiss"

    def __init__(self, dim: int, metric: str = "l2", factory: str = "Flat", search_params: dict | None = None) -> None:
        if not isinstance(factory, str) or not factory.strip():
            raise VectorIndexError(f"faiss: factory must be a non-empty index_factory string, got {factory!r}")
        if factory.replace(" ", "").upper().startswith("IDMAP"):
            raise VectorIndexError(f"faiss: factory {factory!r}: leave out 'IDMap'; this wrapper maps ids itself")
        for graph, degree in re.findall(r"(HNSW|NSG)(\d+)", factory):
            if int(degree) < 2:  # Faiss accepts these, then aborts, crashes or hangs at the first add
                raise VectorIndexError(f"faiss: factory {factory!r}: {graph} needs at least 2 neighbours per node, got {degree}")
        self.factory = factory
        super().__init__(dim, metric)
        faiss = _faiss()
        metric_type = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        try:
            index = faiss.index_factory(self.dim, factory, metric_type)
        except RuntimeError as err:
            raise VectorIndexError(f"faiss: cannot build factory string {factory!r} for dim={self.dim}: {_last_line(err)}") from None
        # IVF indexes store ids in their lists; other kinds get an id map around them.
        self._family = self._family_of(index)
        self._state["faiss"] = index if faiss.try_extract_index_ivf(index) is not None else faiss.IndexIDMap2(index)
        self.needs_training = not index.is_trained
        self.is_trained = index.is_trained
        self.search_params = tuple(_FAISS_KNOBS.get(self._family, {}))
        self._defaults: dict[str, Any] = {}
        if search_params is not None and not isinstance(search_params, dict):
            raise VectorIndexError(f"faiss {factory!r}: search_params must be a dict, got {type(search_params).__name__}")
        self.set_search_params(**(search_params or {}))

    @staticmethod
    def _family_of(index) -> str:
        faiss = _faiss()
        if faiss.try_extract_index_ivf(index) is not None:
            return "ivf"
        inner = faiss.downcast_index(index)
        if isinstance(inner, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(inner, faiss.IndexPQ):
            return "pq"
        return "other"

    def __getattr__(self, name: str) -> Any:  # the stored defaults read like attributes (index.nprobe)
        defaults = self.__dict__.get("_defaults", {})
        if name in defaults:
            return defaults[name]
        if name in self.__dict__.get("search_params", ()):
            return None
        raise AttributeError(name)

    def _check_search_params(self, settings: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, value in settings.items():
            if value is None:
                continue
            low, high = _FAISS_KNOBS[self._family][name]
            out[name] = check_int(value, f"faiss {self.factory!r}: search parameter {name}", low=low, high=high, error=VectorIndexError)
        return out

    def _empty_state(self):
        return {}  # the Faiss index itself is put in by __init__

    def params(self) -> dict:
        return {"factory": self.factory, "search_params": dict(self._defaults)}

    def set_search_params(self, **params: Any) -> FaissIndex:
        """Change the default run-time knobs (``nprobe``, ``efSearch``, ...) without rebuilding. Returns ``self``.

        Raises:
            VectorIndexError: a knob this kind of Faiss index does not have, or a value out of range.
        """
        unknown = sorted(set(params) - set(self.search_params))
        if unknown:
            raise VectorIndexError(
                f"faiss {self.factory!r}: unknown search parameter(s) {unknown}; this index accepts {list(self.search_params)}"
            )
        self._defaults = {**self._defaults, **self._check_search_params(params)}
        return self

    def _faiss_params(self, settings: dict[str, Any]):
        faiss = _faiss()
        if not settings:
            return None
        cls = {"ivf": faiss.SearchParametersIVF, "hnsw": faiss.SearchParametersHNSW, "pq": faiss.SearchParametersPQ}[self._family]
        return cls(**settings)

    @property
    def faiss_index(self):
        """The underlying Faiss index, for anything this wrapper does not expose (treat it as read-only)."""
        return self._state["faiss"]

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as err:
            raise VectorIndexError(f"faiss {self.factory!r}: {what} failed: {_last_line(err)}") from None

    def _train(self, x: np.ndarray):
        trained = _faiss().clone_index(self._state["faiss"])
        self._call("training", trained.train, x)
        return {"faiss": trained}

    def _add(self, state, x, ids):
        index = _faiss().clone_index(state["faiss"])
        self._call("add", index.add_with_ids, x, ids)
        return {"faiss": index}

    def _search(self, state, q, k, settings, info):
        scores, ids = self._call("search", state["faiss"].search, q, k, params=self._faiss_params(settings))
        keys = scores if self.metric == "l2" else -scores
        return keys.astype(np.float32), ids.astype(np.int64)

    def _remove(self, state, drop):
        index = _faiss().clone_index(state["faiss"])
        try:
            index.remove_ids(np.ascontiguousarray(state["ids"][drop]))
        except RuntimeError as err:
            raise VectorIndexError(f"faiss {self.factory!r} cannot remove vectors ({_last_line(err)}); rebuild the index without them") from None
        return {"faiss": index}

    def memory_bytes(self) -> int:
        """The serialised Faiss index (vectors or codes, structure, and Faiss's own ids)."""
        return len(_faiss().serialize_index(self._state["faiss"]))

    def _arrays(self, state):
        return {"faiss": _faiss().serialize_index(state["faiss"])}

    def _restore(self, arrays, n, where):
        faiss = _faiss()
        blob = expect_array(arrays, "faiss", np.uint8, (None,), where)
        try:
            index = faiss.deserialize_index(blob)
        except RuntimeError as err:
            raise VectorIndexError(f"{where}: the saved Faiss index cannot be read ({_last_line(err)})") from None
        if index.d != self.dim or index.ntotal != n or index.is_trained != self.is_trained:
            raise VectorIndexError(
                f"{where}: the saved Faiss index (d={index.d}, {index.ntotal} vectors, trained={index.is_trained}) "
                f"disagrees with the header (dim={self.dim}, {n} ids, trained={self.is_trained})"
            )
        if not np.array_equal(np.sort(self._faiss_ids(index)), np.sort(arrays["ids"])):
            raise VectorIndexError(f"{where}: the ids inside the saved Faiss index are not the file's ids")
        return {"faiss": index}

    @staticmethod
    def _faiss_ids(index) -> np.ndarray:
        """The ids Faiss itself returns from a search: its id map, or the ids in its inverted lists."""
        faiss = _faiss()
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            return faiss.vector_to_array(index.id_map).astype(np.int64)
        lists = ivf.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(lists.nlist) if lists.list_size(i)]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


@register
class AnnoyIndex(StaticIndex):
    """Spotify's Annoy: a forest of random-projection trees, searched together.

    Args:
        n_trees: more trees, higher recall, bigger index and slower build (1..10,000).
        search_k: nodes inspected per query (-1: ``n_trees * k``); the run-time knob, a
            search parameter.
        seed: Annoy's random seed (same seed and data give the same forest).

    The wrapper keeps the float32 vectors as well, to rebuild after ``add`` or ``remove``
    (Annoy cannot change a built forest); ``memory_bytes`` counts both.
    """

    kind = "annoy"
    search_params = ("search_k",)
    _ANNOY_METRIC = {"l2": "euclidean", "ip": "dot", "cosine": "angular"}

    def __init__(self, dim: int, metric: str = "l2", n_trees: int = 50, search_k: int = -1, seed: int = 0) -> None:
        self.n_trees = positive_int(n_trees, "annoy: n_trees", high=10_000)
        self.search_k = self._check_search_params({"search_k": search_k})["search_k"]
        self.seed = check_int(seed, "annoy: seed", low=0, high=2**31 - 1, error=VectorIndexError)  # a C int in Annoy
        super().__init__(dim, metric)

    def _check_search_params(self, settings):
        value = settings["search_k"]
        if value != -1:
            value = check_int(value, "annoy: search_k (or -1 for n_trees * k)", low=1, high=2**31 - 1, error=VectorIndexError)
        return {"search_k": int(value)}

    def params(self) -> dict:
        return {"n_trees": self.n_trees, "search_k": self.search_k, "seed": self.seed}

    def _build(self, vectors: np.ndarray) -> Any:
        from annoy import AnnoyIndex as Annoy

        forest = Annoy(self.dim, self._ANNOY_METRIC[self.metric])
        forest.set_seed(self.seed)
        for row, vector in enumerate(vectors):
            forest.add_item(row, vector)
        forest.build(self.n_trees, n_jobs=1)
        fd, tmp = tempfile.mkstemp(suffix=".ann")
        os.close(fd)
        try:  # Annoy reports no size; its saved file is its in-memory layout
            forest.save(tmp)
            size = os.path.getsize(tmp)
            forest.unload()
            forest.load(tmp)
        finally:
            os.unlink(tmp)  # the mapping stays valid after unlink on POSIX
        return forest, size

    def _built_bytes(self, built) -> int:
        return built[1]

    def _query(self, built, vectors, q, k, settings, info):
        forest = built[0]
        keys = np.full((len(q), k), np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i, vector in enumerate(q):
            found, dist = forest.get_nns_by_vector(vector, k, search_k=settings["search_k"], include_distances=True)
            rows[i, : len(found)], keys[i, : len(found)] = found, dist
        if self.metric == "l2":
            keys = keys**2  # Annoy returns the distance, not its square
        elif self.metric == "ip":
            keys = -keys
        else:
            keys = keys**2 / 2 - 1  # angular distance = sqrt(2 - 2 cos)
        return keys, rows


class _SklearnTree(StaticIndex):
    """scikit-learn's exact KDTree / BallTree (Euclidean; cosine via unit vectors)."""

    exact = True
    supported_metrics = ("l2", "cosine")
    _cls_name = ""

    def __init__(self, dim: int, metric: str = "l2", leaf_size: int = 40) -> None:
        self.leaf_size = positive_int(leaf_size, f"{self.kind}: leaf_size", high=10**7)
        super().__init__(dim, metric)

    def params(self) -> dict:
        return {"leaf_size": self.leaf_size}

    def _build(self, vectors: np.ndarray) -> Any:
        from sklearn import neighbors

        return getattr(neighbors, self._cls_name)(vectors, leaf_size=self.leaf_size)

    def _built_bytes(self, built) -> int:
        return sum(a.nbytes for a in built.get_arrays())

    def _query(self, built, vectors, q, k, settings, info):
        dist, rows = built.query(q, k=k)
        return self._l2_to_keys(dist**2), rows


@register
class SklearnKDTreeIndex(_SklearnTree):
    """scikit-learn's compiled KD-tree: the twin of the hand-written ``"kdtree"``."""

    kind = "sklearn-kdtree"
    _cls_name = "KDTree"


@register
class SklearnBallTreeIndex(_SklearnTree):
    """scikit-learn's ball tree: exact, and prunes with spheres instead of boxes."""

    kind = "sklearn-balltree"
    _cls_name = "BallTree"
