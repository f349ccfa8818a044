"""The index file format: a checksummed container (``visual_search.container``) around an ``.npz``.

The JSON header records the kind, dim, metric, construction parameters, whether
the index is trained, and the model version of the embeddings it holds; the
payload holds the ids and the structure's arrays.

A checksum proves that the file is the one that was written, not that it makes
sense: someone can edit a file and recompute it. So ``load_index`` also checks
that everything agrees with the header before using it: the parameters are
replayed through ``build_index`` (which range-checks each one), every array must
have the dtype and shape the header implies, ids must be distinct and
non-negative, rows and list offsets must stay inside the data. An inconsistent
file is refused with ``VectorIndexError`` even when its checksum is right.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from visual_search.container import read_container, write_container
from visual_search.errors import VectorIndexError
from visual_search.index.base import BaseIndex
from visual_search.index.registry import REGISTRY, accepted_params, build_index
from visual_search.index.validation import METRICS, expect_array

#: First bytes of every saved index; anything else is "not an index file".
MAGIC = b"VSINDEX\x00"
#: Bumped when the layout changes. Version 2: the checksum covers the version and header length.
FORMAT_VERSION = 2
OLDEST_READABLE = 2


def write_index_file(path: str | os.PathLike, index: BaseIndex) -> Path:
    """Write ``index`` to ``path`` atomically. Returns the path."""
    state = index._state  # one snapshot: a concurrent add cannot tear what is written
    arrays = {"ids": state["ids"], **{f"state.{k}": v for k, v in index._arrays(state).items()}}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    header = {
        "kind": index.kind, "dim": index.dim, "metric": index.metric, "params": index.params(),
        "is_trained": index.is_trained, "model_version": index.model_version,
    }
    try:
        return write_container(path, MAGIC, FORMAT_VERSION, header, buffer.getvalue())
    except TypeError as err:
        raise VectorIndexError(f"cannot save {index!r}: a parameter is not JSON-serialisable ({err})") from None


def load_index(path: str | os.PathLike) -> BaseIndex:
    """Read an index written by ``save``, checking that it is whole and consistent.

    Raises:
        VectorIndexError: the file is missing, not an index file, from another format
            version, truncated, altered (checksum), or inconsistent with its own header.
    """
    path = Path(path)
    _, header, payload = read_container(path, MAGIC, (OLDEST_READABLE, FORMAT_VERSION), VectorIndexError, "index file")
    where = str(path)
    kind, dim, metric, params = header.get("kind"), header.get("dim"), header.get("metric"), header.get("params")
    if not isinstance(kind, str) or kind not in REGISTRY:
        raise VectorIndexError(f"{where}: index kind {kind!r} is not available here; known: {sorted(REGISTRY)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or metric not in METRICS or not isinstance(params, dict):
        raise VectorIndexError(f"{where}: the header's dim {dim!r}, metric {metric!r} or params {params!r} are not valid")
    if not isinstance(header.get("is_trained"), bool):
        raise VectorIndexError(f"{where}: the header's is_trained must be true or false, got {header.get('is_trained')!r}")
    unknown = sorted(set(params) - set(accepted_params(kind)))
    if unknown:
        raise VectorIndexError(f"{where}: the header's params {unknown} are not parameters of a {kind!r} index")
    try:
        index = build_index(kind, dim, metric, model_version=header.get("model_version"), **params)
    except VectorIndexError as err:
        raise VectorIndexError(f"{where}: the header does not describe a valid index ({err})") from None
    arrays = _read_arrays(payload, where)
    ids = expect_array(arrays, "ids", np.int64, (None,), where)
    if len(ids) and (ids.min() < 0 or len(np.unique(ids)) != len(ids)):
        raise VectorIndexError(f"{where}: saved ids must be distinct and non-negative")
    if len(ids) and index.needs_training and not header["is_trained"]:
        raise VectorIndexError(f"{where}: an untrained {kind!r} index cannot hold {len(ids)} vectors")
    index.is_trained = header["is_trained"] or not index.needs_training
    state_arrays = {name.removeprefix("state."): value for name, value in arrays.items() if name.startswith("state.")}
    state_arrays["ids"] = ids  # for kinds that keep their own copy of the ids (Faiss)
    try:
        state = index._restore(state_arrays, len(ids), where)
    except VectorIndexError:
        raise
    except (ValueError, RuntimeError, TypeError, IndexError, OverflowError, MemoryError) as err:  # a library refusing the saved structure
        raise VectorIndexError(f"{where}: the saved structure cannot be restored ({type(err).__name__}: {err})") from None
    state["ids"] = ids
    index._state = state
    return index


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_arrays(payload: bytes, where: str) -> dict[str, np.ndarray]:
    """The payload's arrays, refusing members that are compressed, hold objects, or claim more
    data than they carry (an edited ``.npy`` header could otherwise make NumPy allocate terabytes)."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise VectorIndexError(f"{where}: saved array {info.filename!r} is compressed; index files store arrays as they are")
                with archive.open(info) as member:
                    read_header = _NPY_HEADER_READERS.get(np.lib.format.read_magic(member))
                    if read_header is None:
                        raise VectorIndexError(f"{where}: saved array {info.filename!r} has an unknown .npy version")
                    shape, _, dtype = read_header(member)
                    if dtype.hasobject or int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > info.file_size:
                        raise VectorIndexError(f"{where}: saved array {info.filename!r} claims shape {shape} of {dtype}, more than its {info.file_size:,} bytes")
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except VectorIndexError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, MemoryError, OverflowError) as err:
        raise VectorIndexError(f"{where}: the saved arrays cannot be read ({type(err).__name__}: {err})") from None
