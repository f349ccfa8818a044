"""The registry of index kinds, and ``build_index``, the one way to make an index by name."""

from __future__ import annotations

import inspect
from typing import Any

from visual_search.errors import VectorIndexError
from visual_search.index.base import BaseIndex
from visual_search.index.validation import check_model_version

#: kind -> class; filled by ``@register``.
REGISTRY: dict[str, type[BaseIndex]] = {}


def register(cls: type[BaseIndex]) -> type[BaseIndex]:
    """Class decorator: make ``cls`` buildable as ``build_index(cls.kind, ...)``."""
    REGISTRY[cls.kind] = cls
    return cls


def accepted_params(kind: str) -> list[str]:
    """The construction parameters of ``kind`` (besides dim and metric)."""
    return [p for p in inspect.signature(REGISTRY[kind].__init__).parameters if p not in ("self", "dim", "metric")]


def build_index(kind: str, dim: int, metric: str = "l2", *, model_version: str | None = None, **params: Any) -> BaseIndex:
    """Create an empty index of ``kind`` (see ``REGISTRY`` for the kinds).

    Args:
        kind: e.g. ``"exact"``, ``"kdtree"``, ``"lsh"``, ``"ivf"``, ``"pq"``, ``"ivfpq"``,
            ``"faiss"``, ``"annoy"``, ``"scann"``, ``"sklearn-kdtree"``, ``"sklearn-balltree"``.
        dim: vector dimension.
        metric: ``"l2"``, ``"ip"`` or ``"cosine"``.
        model_version: the embedding model whose vectors the index will hold
            (``Encoder.version``); saved with the index, and queries or vectors from
            another model are then refused.
        **params: the kind's own parameters (e.g. ``nlist=1024, nprobe=16``), each
            checked here, where it is given.

    Raises:
        VectorIndexError: an unknown kind or parameter, a parameter out of range, or a metric the kind lacks.
    """
    if not isinstance(kind, str) or kind not in REGISTRY:
        raise VectorIndexError(f"unknown index kind {kind!r}; choose from {sorted(REGISTRY)}")
    accepted = accepted_params(kind)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise VectorIndexError(f"{kind!r} index: unknown parameter(s) {unknown}; it accepts {accepted}")
    index = REGISTRY[kind](dim, metric, **params)
    index.model_version = check_model_version(model_version)
    return index
