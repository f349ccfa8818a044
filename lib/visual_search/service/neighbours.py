"""The nearest-neighbour service: any ``visual_search.index`` behind one small interface.

It answers "the k' stored vectors most similar to this one", where k' is larger
than the k the user asked for (**over-fetching**): re-ranking then drops blocked,
private and duplicate images, and there must still be k left. ``overfetch(k, n)``
says how many to ask for first; ``core.VisualSearchService`` asks again for more,
up to the whole index, in the rare case the rules dropped too many.

``IndexSpec`` names an index kind with its build and search parameters, so the
service's choice is one value that a benchmark can measure and a test can check
(``DEFAULT_SPEC``: see its comment for why it is the default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visual_search.index import BaseIndex, build_index


@dataclass(frozen=True)
class IndexSpec:
    """An index kind with construction ``params`` and per-call ``search`` knobs.

    ``min_train`` is the fewest vectors worth training the structure on: below it
    (the 2,000-image sample) the service falls back to an exact index, because
    an IVF with more lists than points per list is all overhead.
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    min_train: int = 0

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in {**self.params, **self.search}.items()]
        return self.kind + (f"({', '.join(parts)})" if parts else "")

    def build(self, vectors: np.ndarray, ids: np.ndarray, model_version: str) -> BaseIndex:
        """A new index of this spec over ``vectors`` (trained on them when the kind needs it)."""
        spec = self if len(vectors) >= max(1, self.min_train) else EXACT_SPEC  # nothing to train on: exact
        index = build_index(spec.kind, vectors.shape[1], metric="cosine", **spec.params)
        if index.needs_training:
            index.train(vectors)
        index.add(vectors, ids, model_version=model_version)
        index.model_version = model_version  # also for an empty gallery, whose add names no model
        return index


EXACT_SPEC = IndexSpec("exact")
#: The service's default over the 70k gallery: the kind that ``python -m visual_search.bench serve``
#: measured fastest at one-query p50 latency with recall@10 >= 0.95 on one thread, among the kinds
#: that support ``remove`` (uploads and deletes must be visible at once, so a static structure that
#: rebuilds on every write is out). ``tests/test_service.py`` checks it against results/bench_serve.json,
#: up to the benchmark's noise: the candidates are within hundredths of a millisecond of each other and trade
#: places between runs, so the test accepts a p50 within 25% of the fastest. The whitened checkpoint spreads its
#: vectors more evenly than the pooled one did, so IVF256 needs nprobe 16 for recall 0.956 (nprobe 4: 0.845).
DEFAULT_SPEC = IndexSpec("faiss", {"factory": "IVF256,Flat"}, {"nprobe": 16}, min_train=10_000)


def overfetch(k: int, n: int) -> int:
    """How many candidates to fetch for ``k`` results from an index of ``n``: ``max(2k, k + 40)``, at most ``n``."""
    return min(n, max(2 * k, k + 40))


class NeighbourService:
    """Searches one index with fixed per-call knobs.

    Args:
        index: any ``BaseIndex`` holding unit vectors (metric "cosine": scores are similarities).
        search: knobs passed with every call (e.g. ``{"nprobe": 8}``); those the index does not have
            (an exact fallback has none) are left out.
        label: how responses and figures name this index.
    """

    def __init__(self, index: BaseIndex, search: dict[str, Any] | None = None, label: str | None = None) -> None:
        self.index = index
        self.search_params = {k: v for k, v in (search or {}).items() if k in index.search_params}  # once, not per query
        self.label = label or index.kind

    def __len__(self) -> int:
        return len(self.index)

    @property
    def model_version(self) -> str | None:
        return self.index.model_version

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [k'], ids [k'])`` of the ``k`` most similar stored vectors (fewer if the index is smaller), best first."""
        if len(self.index) == 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        scores, ids = self.index.search(vector[None], k, params=self.search_params or None)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]
