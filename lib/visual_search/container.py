"""The checksummed file container that index files and encoder checkpoints share.

Layout (all integers little-endian)::

    MAGIC (8 bytes) | uint32 format version | uint64 header length | SHA-256 (32 bytes)
    | JSON header | payload

The SHA-256 covers everything after it *and* the version and header length before
it, so no byte of the file can change unnoticed: a flipped bit, a truncation, an
edited header or a bumped version number all fail the check. The header is a JSON
object that must record ``payload_bytes``; the payload is whatever the writer
chose (an ``.npz`` for indexes, ``torch.save`` bytes for checkpoints).

A checksum only proves the file is the one that was written. Someone who edits a
file can recompute it, so readers must still check that what they read is
consistent (shapes, dtypes, ranges) before using it; see ``index.io`` and
``models``.

Files are written atomically: a temporary file in the same folder, flushed,
fsynced and renamed over the target, so a crash never leaves half a file and a
concurrent reader sees the old file or the new one, never a mixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from visual_search.errors import VisualSearchError

_PREFIX = struct.Struct("<8sIQ32s")  # magic, version, header length, digest


def _digest(version: int, header: bytes, payload: bytes) -> bytes:
    h = hashlib.sha256(struct.pack("<IQ", version, len(header)))
    h.update(header)
    h.update(payload)
    return h.digest()


def write_container(path: str | os.PathLike, magic: bytes, version: int, header: dict[str, Any], payload: bytes) -> Path:
    """Write ``header`` and ``payload`` to ``path`` atomically, with the checksum. Returns the path.

    Args:
        path: the target file (its folder is created).
        magic: 8 bytes that say what kind of file this is.
        version: the format version the reader checks.
        header: JSON-serialisable metadata; ``payload_bytes`` is added.
        payload: the data.
    """
    if len(magic) != 8:
        raise VisualSearchError(f"magic must be 8 bytes, got {magic!r}")
    header_bytes = json.dumps({**header, "payload_bytes": len(payload)}, sort_keys=True).encode()
    blob = _PREFIX.pack(magic, version, len(header_bytes), _digest(version, header_bytes, payload)) + header_bytes + payload
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_container(
    path: str | os.PathLike,
    magic: bytes,
    versions: tuple[int, int],
    error: type[VisualSearchError],
    what: str,
    max_bytes: int | None = None,
) -> tuple[int, dict[str, Any], bytes]:
    """Read and verify a file written by ``write_container``.

    Args:
        path: the file.
        magic: the expected first 8 bytes.
        versions: ``(oldest, newest)`` format versions this reader understands.
        error: the exception class to raise (``VectorIndexError``, ``ModelError``).
        what: how to call the file in messages ("index file", "checkpoint").
        max_bytes: refuse larger files before reading them (None: no limit).

    Returns:
        ``(version, header, payload)``.

    Raises:
        error: the file is missing, not this kind of file, truncated or padded,
            altered (checksum), or from a format version outside ``versions``.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise error(f"{path}: {size:,} bytes is larger than the {max_bytes:,} a {what} may have")
    blob = path.read_bytes()
    if blob[: len(magic)] != magic:
        raise error(f"{path}: not a visual_search {what} (it starts with {blob[:8]!r}, expected {magic!r})")
    if len(blob) < _PREFIX.size:
        raise error(f"{path}: truncated ({len(blob)} bytes, shorter than the fixed {_PREFIX.size}-byte prefix)")
    _, version, header_len, digest = _PREFIX.unpack_from(blob)
    if _PREFIX.size + header_len > len(blob):
        raise error(f"{path}: truncated (the header alone needs {header_len:,} bytes)")
    header_bytes = blob[_PREFIX.size : _PREFIX.size + header_len]
    payload = blob[_PREFIX.size + header_len :]
    if _digest(version, header_bytes, payload) != digest:
        raise error(f"{path}: checksum mismatch; the file is truncated, altered or damaged")
    oldest, newest = versions
    if version > newest:
        raise error(f"{path}: written by format version {version}; this library reads versions {oldest} to {newest} (upgrade visual_search)")
    if version < oldest:
        raise error(f"{path}: written by format version {version}, which this library no longer reads (oldest: {oldest}); build and save it again")
    try:
        header = json.loads(header_bytes)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("payload_bytes") != len(payload):
        raise error(f"{path}: corrupt header (not a JSON object recording the payload's {len(payload):,} bytes)")
    return version, header, payload
