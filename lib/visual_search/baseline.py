"""The raw-pixel baseline: embed an image as its own normalised pixels, rank by cosine.

It needs no training, so it is the floor every learned encoder must beat. The
search is exact (every query against every gallery image); chapter 05 replaces
it with the index module's exact and approximate indexes.
"""

from __future__ import annotations

import numpy as np
import torch

from visual_search.preprocess import preprocess_batch


class SearchError(ValueError):
    """Bad input to a search: wrong shapes or dtypes, NaN, or k outside 1..gallery size."""


def raw_pixel_embeddings(images: np.ndarray) -> np.ndarray:
    """Z-score the pixels, flatten them and L2-normalise: float32 ``[N, H*W]``."""
    x = preprocess_batch(images).flatten(1)
    return torch.nn.functional.normalize(x, dim=1).numpy()


def cosine_rank(queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine similarity of L2-normalised float32 rows.

    Args:
        queries: float32 ``[Q, D]``, unit rows.
        gallery: float32 ``[G, D]``, unit rows.
        k: results per query, 1..G.
        chunk: queries per matrix product (memory is chunk x G floats).

    Returns:
        ``(similarities float32 [Q, k], ids int64 [Q, k])``, best first; ties go to the lower id.
    """
    for name, x in (("queries", queries), ("gallery", gallery)):
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
            raise SearchError(f"{name}: expected a float32 numpy array, got {got}")
        if not np.isfinite(x).all():
            raise SearchError(f"{name}: contains NaN or infinity")
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise SearchError(f"queries {list(queries.shape)} and gallery {list(gallery.shape)} must be [N, D] with the same D")
    if len(gallery) == 0:
        raise SearchError("gallery: empty, nothing to search")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(gallery):
        raise SearchError(f"k must be an integer in 1..{len(gallery)} (the gallery size), got {k!r}")
    out_sims = np.empty((len(queries), k), dtype=np.float32)
    out_ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):  # bounded memory: [chunk, G] similarities at a time
        sims = queries[start : start + chunk] @ gallery.T
        if k < len(gallery):  # select the top k in O(G), then sort only those
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            order = np.lexsort((part, -np.take_along_axis(sims, part, axis=1)), axis=1)  # by similarity, then id
            ids = np.take_along_axis(part, order, axis=1)
        else:
            ids = np.argsort(-sims, axis=1, kind="stable")
        out_ids[start : start + chunk] = ids
        out_sims[start : start + chunk] = np.take_along_axis(sims, ids, axis=1)
    return out_sims, out_ids
