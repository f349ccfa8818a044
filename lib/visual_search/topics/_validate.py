"""Input checks and the retrieval score every talking point shares, so each module validates the same way.

Messages name the argument and what is wrong with it, as everywhere in the library.
"""

from __future__ import annotations

import numpy as np

from visual_search import data
from visual_search._checks import check_int
from visual_search.errors import TopicsError
from visual_search.index.exact import exact_search
from visual_search.models import Encoder, load_pretrained


def as_array(x: object) -> np.ndarray | None:
    """``x`` as a numpy array if it is an array, list or tuple that makes one (not a ragged list); else None."""
    if not isinstance(x, (np.ndarray, list, tuple)):
        return None
    try:
        return np.asarray(x)
    except (TypeError, ValueError):
        return None


def vectors(x: object, name: str = "vectors", dim: int | None = None, dtype: type = np.float32,
            dim_note: str = "as the other vectors") -> np.ndarray:
    """A non-empty finite float ``[N, D]`` matrix (of width ``dim`` if given), as ``dtype``."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype.kind != "f" or 0 in x.shape:
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
        raise TopicsError(f"{name} must be a non-empty float array [N, D], got {got}")
    if dim is not None and x.shape[1] != dim:
        raise TopicsError(f"{name} must have {dim} columns ({dim_note}), got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise TopicsError(f"{name} contains NaN or infinity")
    return x.astype(dtype, copy=False)


def labels(values: object, name: str, length: int | None = None) -> np.ndarray:
    """Non-negative integer class labels ``[N]`` (``length`` of them if given), as int64."""
    array = as_array(values)
    if array is None or array.ndim != 1 or array.dtype.kind not in "iu" or len(array) == 0:
        got = f"{array.dtype} {list(array.shape)}" if array is not None else type(values).__name__
        raise TopicsError(f"{name} must be a non-empty integer array [N], got {got}")
    if length is not None and len(array) != length:
        raise TopicsError(f"{name} must have {length} entries (one per vector), got {len(array)}")
    if array.min() < 0:
        raise TopicsError(f"{name} must be class labels >= 0, got {int(array.min())}")
    return array.astype(np.int64)


def sample_or_default(sample: object) -> data.Sample:
    """The committed sample when ``sample`` is None; otherwise ``sample``, which must be a ``data.Sample``."""
    sample = data.load_sample() if sample is None else sample
    if not isinstance(sample, data.Sample):
        raise TopicsError(f"sample must be a visual_search.data.Sample, got {type(sample).__name__}")
    return sample


def encoder_or_default(encoder: object) -> Encoder:
    """The committed encoder when ``encoder`` is None; otherwise ``encoder``, which must be an ``Encoder``."""
    encoder = load_pretrained() if encoder is None else encoder
    if not isinstance(encoder, Encoder):
        raise TopicsError(f"encoder must be a visual_search.models.Encoder, got {type(encoder).__name__}")
    return encoder


def drop_self(ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` ids other than the row's own (a row of ``k + 1`` results from searching a set in itself)."""
    keep = ids != np.arange(len(ids))[:, None]
    keep[keep.sum(axis=1) > k, -1] = False  # the row did not contain itself (a tie pushed it out): drop the last instead
    return ids[keep].reshape(len(ids), k)


def class_precision_at_k(query_vectors: np.ndarray, query_labels: np.ndarray, gallery_vectors: np.ndarray, gallery_labels: np.ndarray,
                         k: int = 10, leave_one_out: bool = False) -> float:
    """Mean share of each query's top ``k`` gallery items (exact cosine search) that has the query's class.

    With ``leave_one_out`` the queries are the gallery itself (row q is gallery item q) and
    each query's own item is left out of its results.
    """
    query_vectors = vectors(query_vectors, "query_vectors")
    gallery_vectors = vectors(gallery_vectors, "gallery_vectors", query_vectors.shape[1])
    query_labels = labels(query_labels, "query_labels", len(query_vectors))
    gallery_labels = labels(gallery_labels, "gallery_labels", len(gallery_vectors))
    if leave_one_out and len(query_vectors) != len(gallery_vectors):
        raise TopicsError(f"leave_one_out needs the gallery as the queries, got {len(query_vectors)} queries for {len(gallery_vectors)} items")
    k = check_int(k, "k", low=1, high=len(gallery_vectors) - bool(leave_one_out), error=TopicsError)
    _, ids = exact_search(query_vectors, gallery_vectors, k + bool(leave_one_out), metric="cosine")
    if leave_one_out:
        ids = drop_self(ids, k)
    return float((gallery_labels[ids] == query_labels[:, None]).mean())
