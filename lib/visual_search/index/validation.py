"""Checks on what users hand an index: vectors, ids, k, search parameters, model versions.

Every check raises ``VectorIndexError`` with a message that names the input and
says what is wrong, *before* anything is changed, so a refused call leaves the
index exactly as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from visual_search._checks import check_int
from visual_search.errors import VectorIndexError

METRICS = ("l2", "ip", "cosine")
#: Larger coordinates are refused: their squares, summed over a vector, would overflow
#: float32 (about 3.4e38) in a distance computation long before they meant anything.
MAX_ABS_VALUE = 1e15
#: Saved float arrays may hold squared norms and sums of them, but nothing near float32's limit.
MAX_STORED_VALUE = 1e36
#: The largest id (int64); -1 is reserved for "no result".
MAX_ID = np.iinfo(np.int64).max


def as_float32_matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 ``[n, dim]`` array, or raise ``VectorIndexError``.

    Accepts any real floating dtype (float16/32/64; converted, like Faiss's Python
    wrapper does) and any memory layout. Refuses integers, booleans and complex
    numbers (say ``x.astype(np.float32)`` if that is what you mean: silent casts of
    uint8 pixels are a classic source of overflow bugs), 1-D input, a wrong
    dimension, NaN or inf (they would poison every distance they touch), and
    absurdly large values (above ``MAX_ABS_VALUE``: their distances overflow).

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
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        bad = "NaN" if np.isnan(x[row]).any() else "inf"
        raise VectorIndexError(f"{name}: row {row} contains {bad}; every value must be finite")
    if x.size and x.dtype.itemsize > 2 and np.abs(x).max() > MAX_ABS_VALUE:  # float16 cannot hold such values
        row = int(np.flatnonzero((np.abs(x) > MAX_ABS_VALUE).any(axis=1))[0])
        raise VectorIndexError(
            f"{name}: row {row} has a value of magnitude {float(np.abs(x[row]).max()):.3g}, above {MAX_ABS_VALUE:g}; "
            "distances between such vectors overflow float32 (scale or normalise the vectors)"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def normalize_rows(x: np.ndarray, name: str) -> np.ndarray:
    """L2-normalise each row (for ``metric="cosine"``); a zero row has no direction and is refused."""
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)  # float64: no overflow for huge values
    if (norms == 0).any():
        row = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise VectorIndexError(f"{name}: row {row} is the zero vector, which has no cosine similarity to anything")
    return (x / norms).astype(np.float32)


def check_k(k: Any) -> int:
    """``k`` must be a non-negative integer; any size is fine (searches cap it at the index size)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 0:
        raise VectorIndexError(f"k must be a non-negative integer, got {k!r}")
    return int(k)


def _as_id_array(ids: Any, name: str) -> np.ndarray:
    """Integer ids as int64, refusing floats, booleans and values outside 0..int64 max *before* casting
    (a cast would wrap them silently)."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise VectorIndexError(f"{name}: expected a 1-D integer array, got shape {ids.shape}")
    if ids.size == 0:
        return ids.astype(np.int64)
    if ids.dtype.kind == "O":  # Python ints too large for int64 land here
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
            raise VectorIndexError(f"{name}: expected integers, got dtype {ids.dtype}")
    elif ids.dtype.kind not in "iu":
        raise VectorIndexError(f"{name}: expected integers, got dtype {ids.dtype}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high > MAX_ID:
        bad = low if low < 0 else high
        raise VectorIndexError(f"{name}: id {bad} is outside 0..{MAX_ID} (int64)")
    return ids.astype(np.int64)


def check_new_ids(ids: Any, n: int, stored: np.ndarray) -> np.ndarray:
    """The ids for ``n`` new vectors: given ones checked, or consecutive ones after the largest stored id.

    Raises:
        VectorIndexError: ids of the wrong shape or type, negative, above the int64
            maximum, repeated, already stored; or no room for default ids after
            the largest stored one.
    """
    if ids is None:
        start = int(stored.max()) + 1 if len(stored) else 0
        if n and start > MAX_ID - (n - 1):
            raise VectorIndexError(
                f"ids: the largest stored id is {start - 1}, so {n} consecutive default ids would pass the int64 "
                f"maximum {MAX_ID}; pass ids explicitly"
            )
        return np.arange(start, start + n, dtype=np.int64)
    if np.shape(ids) != (n,):
        raise VectorIndexError(f"ids: expected shape ({n},) to match the vectors, got {np.shape(ids)}")
    arr = np.asarray(ids)
    if n and arr.dtype.kind in "iu" and arr.min() < 0:
        raise VectorIndexError(f"ids: must be non-negative (-1 marks 'no result'), got {int(arr.min())}")
    ids = _as_id_array(arr, "ids")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise VectorIndexError(f"ids: id {int(unique[counts > 1][0])} appears more than once in this batch")
    present = np.isin(ids, stored)
    if present.any():
        raise VectorIndexError(f"ids: id {int(ids[present][0])} is already in the index (remove it first to replace it)")
    return ids


def check_remove_ids(ids: Any) -> np.ndarray:
    """Ids to remove: a 1-D integer array. Ids that cannot be stored (negative, beyond int64) are
    ignored like any other id that is not present."""
    arr = np.asarray(ids)
    integral = arr.dtype.kind in "iu" or (arr.dtype.kind == "O" and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in arr.ravel()))
    if arr.ndim != 1 or (arr.size and not integral):
        raise VectorIndexError(f"ids to remove: expected a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
    if arr.dtype.kind == "O":
        arr = np.array([int(i) for i in arr if 0 <= int(i) <= MAX_ID], dtype=np.int64)
    elif arr.dtype.kind == "u":
        arr = arr[arr <= MAX_ID]
    return arr[arr >= 0].astype(np.int64)


def check_params_mapping(params: Any, accepted: tuple[str, ...], kind: str) -> dict[str, Any]:
    """``params`` for one search: a mapping whose keys are among ``accepted``."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise VectorIndexError(f"{kind!r} index: params must be a dict of search parameters, got {type(params).__name__}")
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise VectorIndexError(f"{kind!r} index: unknown search parameter(s) {unknown}; it accepts {list(accepted)}")
    return dict(params)


def check_model_version(version: Any, name: str = "model_version") -> str | None:
    """A model version is a non-empty string of at most 200 characters, or None."""
    if version is None:
        return None
    if not isinstance(version, str) or not version or len(version) > 200:
        raise VectorIndexError(f"{name} must be a non-empty string of at most 200 characters or None, got {version!r}")
    return version


def positive_int(value: Any, name: str, high: int = 2**31 - 1) -> int:
    """An integer in ``[1, high]``: the most common parameter check of the index package."""
    return check_int(value, name, low=1, high=high, error=VectorIndexError)


def expect_array(arrays: Mapping[str, np.ndarray], name: str, dtype: Any, shape: tuple[int | None, ...], where: str) -> np.ndarray:
    """A saved array must exist with this dtype and shape (None: any length on that axis); for ``load_index``."""
    if name not in arrays:
        raise VectorIndexError(f"{where}: the saved state lacks the array {name!r}")
    a = arrays[name]
    if a.dtype != np.dtype(dtype) or a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise VectorIndexError(f"{where}: saved array {name!r} is {a.dtype} {list(a.shape)}, expected {np.dtype(dtype)} {want}")
    if a.dtype.kind == "f" and a.size and not (np.abs(a) <= MAX_STORED_VALUE).all():  # NaN fails this too
        raise VectorIndexError(f"{where}: saved array {name!r} contains NaN, inf or values beyond {MAX_STORED_VALUE:g}")
    return a


def check_stored_form(matrix: np.ndarray, metric: str, name: str, where: str) -> None:
    """Saved rows in ``kernels.stored_form`` (``[-2x, ||x||^2]`` for l2, ``-x`` otherwise) must be
    consistent: vectors within ``MAX_ABS_VALUE``, and for l2 each stored norm equal to the norm
    of its vector (an edited norm would silently reorder every result)."""
    vectors = matrix[:, :-1] / -2 if metric == "l2" else -matrix
    if vectors.size and np.abs(vectors).max() > MAX_ABS_VALUE:
        raise VectorIndexError(f"{where}: saved array {name!r} holds vectors with values beyond {MAX_ABS_VALUE:g}")
    if metric == "l2" and len(matrix):
        norms = np.einsum("ij,ij->i", vectors.astype(np.float64), vectors.astype(np.float64))
        if not np.allclose(matrix[:, -1], norms, rtol=1e-4, atol=1e-6):
            raise VectorIndexError(f"{where}: saved array {name!r} holds squared norms that do not match its vectors")


def check_rows(rows: np.ndarray, n: int, name: str, where: str) -> None:
    """Saved row numbers must all be in 0..n-1 (an edited file could point outside the data)."""
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise VectorIndexError(f"{where}: saved array {name!r} holds rows {int(rows.min())}..{int(rows.max())}, outside 0..{n - 1}")


def check_offsets(offsets: np.ndarray, n_lists: int, n: int, where: str) -> None:
    """Inverted-list offsets must start at 0, never decrease, and end at the number of stored entries."""
    if offsets.shape != (n_lists + 1,) or offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != n:
        raise VectorIndexError(f"{where}: saved list offsets are inconsistent with {n_lists} lists holding {n} vectors")
