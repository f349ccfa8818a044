"""Production libraries behind the same interface: Faiss, Annoy and scikit-learn's trees.

Use these when you outgrow the hand-written indexes: they are the twins the
conformance suite and ``bench ann`` compare ours against.

* ``"faiss"``: any ``faiss.index_factory`` string, e.g. ``"Flat"``, ``"IVF1024,Flat"``,
  ``"IVF256,PQ98"``, ``"HNSW32"``, ``"LSH"``; run-time knobs such as ``nprobe`` or
  ``efSearch`` go in ``search_params``.
* ``"annoy"``: Spotify's forest of random-projection trees (``n_trees``, ``search_k``).
* ``"sklearn-kdtree"`` / ``"sklearn-balltree"``: exact trees from scikit-learn.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from visual_search.index.base import BaseIndex, StaticIndex, VectorIndexError, register


def _faiss():
    import faiss  # imported lazily: only the Faiss-backed kinds need it

    return faiss


@register
class FaissIndex(BaseIndex):
    """A Faiss index from a factory string, storing our ids as Faiss ids.

    Args:
        factory: a ``faiss.index_factory`` description (default ``"Flat"``: exact).
        search_params: run-time parameters set through ``faiss.ParameterSpace``,
            e.g. ``{"nprobe": 16}`` for IVF or ``{"efSearch": 64}`` for HNSW.

    Scores are what Faiss returns, in this package's convention: squared L2 for
    l2, similarities for ip and cosine; for ``"LSH"`` they are Hamming distances
    between binary codes (Faiss's IndexLSH does not re-rank).
    """

    kind = "faiss"

    def __init__(self, dim: int, metric: str = "l2", factory: str = "Flat", search_params: dict | None = None) -> None:
        super().__init__(dim, metric)
        faiss = _faiss()
        self.factory, self.search_params = factory, dict(search_params or {})
        metric_type = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        try:
            index = faiss.index_factory(dim, factory, metric_type)
        except RuntimeError as err:
            raise VectorIndexError(f"faiss: cannot build factory string {factory!r} for dim={dim}: {str(err).splitlines()[-1]}") from None
        # IVF indexes store ids in their lists; other kinds get an id map around them.
        self._index = index if faiss.try_extract_index_ivf(index) is not None else faiss.IndexIDMap2(index)
        self._apply_search_params()
        self.needs_training = not self._index.is_trained
        self.is_trained = self._index.is_trained

    def _apply_search_params(self) -> None:
        space = _faiss().ParameterSpace()
        for name, value in self.search_params.items():
            try:
                space.set_index_parameter(self._index, name, value)
            except RuntimeError as err:
                raise VectorIndexError(f"faiss {self.factory!r}: cannot set search parameter {name}={value!r}: {str(err).splitlines()[-1]}") from None

    def params(self) -> dict:
        return {"factory": self.factory, "search_params": self.search_params}

    def set_search_params(self, **params: Any) -> "FaissIndex":
        """Change run-time knobs (``nprobe``, ``efSearch``, ...) without rebuilding. Returns ``self``."""
        self.search_params.update(params)
        self._apply_search_params()
        return self

    @property
    def faiss_index(self):
        """The underlying Faiss index, for anything this wrapper does not expose."""
        return self._index

    def _train(self, x: np.ndarray) -> None:
        self._index.train(x)

    def _add(self, x: np.ndarray, rows: np.ndarray) -> None:
        self._index.add_with_ids(x, self._ids[rows])

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self._index.search(q, k)
        keys = scores if self.metric == "l2" else -scores
        return keys.astype(np.float32), ids.astype(np.int64)

    def _remove(self, drop: np.ndarray) -> None:
        try:
            self._index.remove_ids(np.ascontiguousarray(self._ids[drop]))
        except RuntimeError as err:
            raise VectorIndexError(f"faiss {self.factory!r} cannot remove vectors ({str(err).splitlines()[-1]}); rebuild the index without them") from None

    def memory_bytes(self) -> int:
        """The serialised Faiss index (vectors or codes, structure, and Faiss's own ids)."""
        return len(_faiss().serialize_index(self._index))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"faiss": _faiss().serialize_index(self._index)}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._index = _faiss().deserialize_index(arrays["faiss"])
        self._apply_search_params()


@register
class AnnoyIndex(StaticIndex):
    """Spotify's Annoy: a forest of random-projection trees, searched together.

    Args:
        n_trees: more trees, higher recall, bigger index and slower build.
        search_k: nodes inspected per query (default -1: ``n_trees * k``); the run-time knob.
        seed: Annoy's random seed (same seed and data give the same forest).

    The wrapper keeps the float32 vectors as well, to rebuild after ``add`` or ``remove``
    (Annoy cannot change a built forest); ``memory_bytes`` counts both.
    """

    kind = "annoy"
    _ANNOY_METRIC = {"l2": "euclidean", "ip": "dot", "cosine": "angular"}

    def __init__(self, dim: int, metric: str = "l2", n_trees: int = 50, search_k: int = -1, seed: int = 0) -> None:
        super().__init__(dim, metric)
        self.n_trees, self.search_k, self.seed = int(n_trees), int(search_k), int(seed)
        self._annoy_bytes = 0

    def params(self) -> dict:
        return {"n_trees": self.n_trees, "search_k": self.search_k, "seed": self.seed}

    def _build(self) -> Any:
        from annoy import AnnoyIndex as Annoy

        forest = Annoy(self.dim, self._ANNOY_METRIC[self.metric])
        forest.set_seed(self.seed)
        for row, vector in enumerate(self._vectors):
            forest.add_item(row, vector)
        forest.build(self.n_trees, n_jobs=1)
        fd, tmp = tempfile.mkstemp(suffix=".ann")
        os.close(fd)
        try:  # Annoy reports no size; its saved file is its in-memory layout
            forest.save(tmp)
            self._annoy_bytes = os.path.getsize(tmp)
            forest.unload()
            forest.load(tmp)
        finally:
            os.unlink(tmp)  # the mapping stays valid after unlink on POSIX
        return forest

    def _query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        keys = np.full((len(q), k), np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i, vector in enumerate(q):
            found, dist = self._built.get_nns_by_vector(vector, k, search_k=self.search_k, include_distances=True)
            rows[i, : len(found)], keys[i, : len(found)] = found, dist
        if self.metric == "l2":
            keys = keys**2  # Annoy returns the distance, not its square
        elif self.metric == "ip":
            keys = -keys
        else:
            keys = keys**2 / 2 - 1  # angular distance = sqrt(2 - 2 cos)
        return keys, rows

    def _structure_bytes(self) -> int:
        self.build()
        return self._vectors.nbytes + self._annoy_bytes


class _SklearnTree(StaticIndex):
    """scikit-learn's exact KDTree / BallTree (Euclidean; cosine via unit vectors)."""

    exact = True
    supported_metrics = ("l2", "cosine")
    _cls_name = ""

    def __init__(self, dim: int, metric: str = "l2", leaf_size: int = 40) -> None:
        super().__init__(dim, metric)
        self.leaf_size = int(leaf_size)

    def params(self) -> dict:
        return {"leaf_size": self.leaf_size}

    def _build(self) -> Any:
        from sklearn import neighbors

        return getattr(neighbors, self._cls_name)(self._vectors, leaf_size=self.leaf_size)

    def _query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, rows = self._built.query(q, k=k)
        return self._l2_to_keys(dist**2), rows

    def _structure_bytes(self) -> int:
        self.build()
        tree = sum(a.nbytes for a in self._built.get_arrays()) if self._built is not None else 0
        return self._vectors.nbytes + tree


@register
class SklearnKDTreeIndex(_SklearnTree):
    kind = "sklearn-kdtree"
    _cls_name = "KDTree"


@register
class SklearnBallTreeIndex(_SklearnTree):
    kind = "sklearn-balltree"
    _cls_name = "BallTree"
