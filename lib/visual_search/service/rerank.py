"""The re-ranking service: a chain of small rules over the nearest-neighbour candidates.

Each rule takes the candidates (best first) and the query's context and returns the
ones it keeps, in order; ``rerank`` applies them in turn and counts how many each
one dropped, which the API reports as ``dropped``. The default chain:

1. ``deleted``: drop candidates whose catalog row is gone (an index entry can outlive
   its row by a few microseconds during a delete, or until restart after a crash).
2. ``blocked``: drop blocked images (moderation).
   ``moderation`` (only with a moderation model, ``default_rules(moderation=...)``): drop the
   candidates that ``topics.moderation``'s classifier flags, from their stored vectors.
3. ``private``: drop private images, except for their owner.
4. ``query_duplicate``: drop exact copies of the query (same content hash), so a query
   never returns itself.
5. ``near_duplicate``: of results whose embeddings have cosine similarity above a
   threshold, keep only the best-ranked (clip-retrieval does this with a range search);
   a page of ten copies of one shirt tells the user nothing.
6. ``top_k``: keep the best k.

A rule is any object with a ``name`` and ``__call__(candidates, context)``; add one
(a freshness boost, a per-owner cap) without touching the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from visual_search._checks import check_real
from visual_search.errors import ServiceError
from visual_search.service.catalog import ImageRecord
from visual_search.topics.moderation import ModerationModel


@dataclass(frozen=True)
class Candidate:
    """One search result on its way to the user: id, similarity score, and its catalog record (None if deleted)."""

    id: int
    score: float
    record: ImageRecord | None


@dataclass(frozen=True)
class QueryContext:
    """What rules may know about the query: who asks, the content hashes of the query, and k."""

    k: int
    user: str | None = None
    query_hashes: frozenset[str] = frozenset()


class Rule(Protocol):
    name: str

    def __call__(self, candidates: list[Candidate], context: QueryContext) -> list[Candidate]: ...


class DropDeleted:
    name = "deleted"

    def __call__(self, candidates, context):
        return [c for c in candidates if c.record is not None]


class DropBlocked:
    name = "blocked"

    def __call__(self, candidates, context):
        return [c for c in candidates if c.record is None or not c.record.blocked]


class DropModerated:
    """Drop the candidates a moderation model flags (``topics.moderation.ModerationModel``), scoring their stored vectors.

    This catches what the upload check cannot: images stored before the model existed (the
    gallery), and a new threshold, which applies at the next search without rewriting the
    catalog. One ``[n, 64]`` matrix-vector product for n candidates: microseconds. A candidate
    whose vector comes from another image model than the classifier's (after a model swap) is
    dropped too: a classifier that cannot read a vector cannot clear it, so until a classifier
    trained on the new model is installed, the rule hides rather than shows.
    """

    name = "moderation"

    def __init__(self, model: ModerationModel) -> None:
        if not isinstance(model, ModerationModel):
            raise ServiceError(f"moderation: expected a topics.moderation.ModerationModel, got {type(model).__name__}")
        self.model = model

    def __call__(self, candidates, context):
        mv = self.model.model_version
        with_vec = [i for i, c in enumerate(candidates) if c.record is not None and c.record.embedding is not None]
        drop = {i for i in with_vec if mv is not None and candidates[i].record.model_version != mv}  # unreadable: hidden
        readable = [i for i in with_vec if i not in drop]
        if readable:
            flagged = self.model.flag(np.stack([candidates[i].record.embedding for i in readable]))
            drop |= {readable[j] for j in np.flatnonzero(flagged)}
        return [c for i, c in enumerate(candidates) if i not in drop]


class DropPrivate:
    name = "private"

    def __call__(self, candidates, context):
        return [c for c in candidates if c.record is None or not c.record.private or (context.user is not None and c.record.owner == context.user)]


class DropQueryDuplicates:
    name = "query_duplicate"

    def __call__(self, candidates, context):
        return [c for c in candidates if c.record is None or c.record.content_hash not in context.query_hashes]


class CollapseNearDuplicates:
    """Keep the best-ranked result of each group whose embeddings are closer than ``threshold`` (cosine).

    Greedy, in rank order: a candidate is dropped if it is within the threshold of any
    candidate already kept. One ``[n, n]`` similarity matrix for the n candidates,
    so it costs microseconds at n = 60. Candidates without an embedding are kept.
    """

    name = "near_duplicate"

    def __init__(self, threshold: float = 0.997) -> None:
        self.threshold = check_real(threshold, "threshold", low=-1.0, high=1.0, error=ServiceError)

    def __call__(self, candidates, context):
        with_vec = [i for i, c in enumerate(candidates) if c.record is not None and c.record.embedding is not None]
        if len(with_vec) < 2:
            return candidates
        vecs = np.stack([candidates[i].record.embedding for i in with_vec])
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        close = np.triu(vecs @ vecs.T > self.threshold, k=1)  # close[a, b]: b (ranked after a) is within the threshold of a
        better = {}  # for each candidate, the better-ranked candidates it is close to (usually none)
        for a, b in zip(*np.nonzero(close)):
            better.setdefault(int(b), []).append(int(a))
        dropped = set()
        for b in sorted(better):  # in rank order, so we know whether each better-ranked one was kept
            if any(a not in dropped for a in better[b]):
                dropped.add(b)
        drop = {with_vec[row] for row in dropped}
        return [c for i, c in enumerate(candidates) if i not in drop]


class TopK:
    name = "top_k"

    def __call__(self, candidates, context):
        return candidates[: context.k]


def default_rules(near_duplicate_threshold: float = 0.997, moderation: ModerationModel | None = None) -> list[Rule]:
    """The chain in the order the module docstring gives (with ``moderation``: its rule right after ``blocked``)."""
    moderated = [] if moderation is None else [DropModerated(moderation)]
    return [DropDeleted(), DropBlocked(), *moderated, DropPrivate(), DropQueryDuplicates(), CollapseNearDuplicates(near_duplicate_threshold), TopK()]


def rerank(candidates: Sequence[Candidate], context: QueryContext, rules: Sequence[Rule]) -> tuple[list[Candidate], dict[str, int]]:
    """Apply ``rules`` in order. Returns ``(kept candidates, {rule name: how many it dropped})``."""
    kept = list(candidates)
    dropped: dict[str, int] = {}
    for rule in rules:
        before = len(kept)
        kept = rule(kept, context)
        dropped[rule.name] = dropped.get(rule.name, 0) + before - len(kept)
    return kept, dropped

