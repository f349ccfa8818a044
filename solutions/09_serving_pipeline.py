"""Solutions to chapter 09's checked exercises (notebooks/09_serving_pipeline.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch09.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

import hashlib

import numpy as np


def fetch_depth(k: int, n: int) -> int:
    """The first fetch: twice k, but at least 40 spare candidates, and never more than the index holds."""
    return min(n, max(2 * k, k + 40))


def visible(records: list, user: str | None, query_hashes: frozenset) -> list[int]:
    """The positions that survive the deleted, blocked, private and query-duplicate rules, in rank order."""
    kept = []
    for j, r in enumerate(records):
        if r is None or r.blocked:
            continue
        if r.private and (user is None or r.owner != user):
            continue
        if r.content_hash in query_hashes:
            continue
        kept.append(j)
    return kept


def collapse_near_duplicates(similarity: np.ndarray, threshold: float) -> list[int]:
    """Greedy in rank order: keep a candidate unless it is above the threshold with one already kept."""
    kept: list[int] = []
    for j in range(len(similarity)):
        if not any(similarity[j, i] > threshold for i in kept):
            kept.append(j)
    return kept


def pixel_hash(pixels: np.ndarray) -> str:
    """SHA-256 of a header naming the dtype and shape, then the pixels' bytes in C order."""
    pixels = np.ascontiguousarray(pixels)
    h = hashlib.sha256(f"{pixels.dtype.str} {list(pixels.shape)}\n".encode())
    h.update(pixels.tobytes())
    return h.hexdigest()


def index_bytes(n: int, dim: int) -> int:
    """n float32 vectors of dim numbers (4 bytes each) plus an 8-byte id each."""
    return n * (4 * dim + 8)
