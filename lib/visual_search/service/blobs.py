"""A content-addressed folder of image files: ``<root>/<first 2 hex digits>/<sha256>.png``.

The name of a file is the SHA-256 of the pixels inside it (``catalog.content_hash``),
so the same image uploaded twice is stored once, a write is idempotent, and a file
can never be half-replaced by another image. Writes go to a temporary file that is
renamed into place, so a crash leaves either the whole file or none of it.

Files hold the *decoded* pixels (grayscale PNG), the form every later step reads:
re-embedding with a new model starts here, not from the original upload bytes.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from visual_search.errors import NotFoundError
from visual_search.service.catalog import content_hash

#: Uploads are stored (and indexed) at most this many pixels a side: the encoder sees 28 x 28, the page
#: shows thumbnails, and a re-embedding job reads thousands of files at once, so a 25-megapixel original
#: would cost memory and time for nothing.
MAX_STORED_SIDE = 256


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` pixels as the bytes of a PNG file: what a client uploads, and what the store keeps."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def stored_form(pixels: np.ndarray, max_side: int = MAX_STORED_SIDE) -> np.ndarray:
    """``pixels`` shrunk (aspect kept, Pillow's deterministic Lanczos) so neither side exceeds ``max_side``.

    Deterministic, so the same upload always gives the same stored pixels and content hash:
    that is how a query recognises an image the gallery holds (``query_duplicate``).
    """
    height, width = pixels.shape[:2]
    if max(height, width) <= max_side:
        return pixels
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))


class BlobStore:
    """Image files by content hash, under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the file of this content hash lives (whether or not it exists)."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise NotFoundError(f"content hash {digest!r}: not a SHA-256 hex digest")
        return self.root / digest[:2] / f"{digest}.png"

    def put(self, pixels: np.ndarray, durable: bool = False) -> str:
        """Store uint8 ``[H, W]`` pixels (if not already there); returns their content hash.

        Args:
            pixels: what to store (see ``stored_form``).
            durable: fsync the file and its folder before returning, so an acknowledged upload survives
                a power cut too, not only a process crash (the bulk gallery build skips it: it can be redone).
        """
        digest = content_hash(pixels)
        path = self.path(digest)
        if not path.exists() or path.stat().st_size == 0:  # an empty file is a write that never finished: redo it
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(png_bytes(pixels))
                    if durable:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, path)
                if durable:
                    folder = os.open(path.parent, os.O_RDONLY)
                    try:
                        os.fsync(folder)
                    finally:
                        os.close(folder)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return digest

    def png_bytes(self, digest: str) -> bytes:
        """The stored PNG file's bytes.

        Raises:
            NotFoundError: no file for this hash.
        """
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"content hash {digest}: no stored image file") from None

    def pixels(self, digest: str) -> np.ndarray:
        """The stored pixels, uint8 ``[H, W]``."""
        try:
            with Image.open(self.path(digest)) as img:
                return np.asarray(img.convert("L"))
        except FileNotFoundError:
            raise NotFoundError(f"content hash {digest}: no stored image file") from None

    def discard(self, digest: str) -> None:
        """Delete the file of this hash, if it exists."""
        self.path(digest).unlink(missing_ok=True)
