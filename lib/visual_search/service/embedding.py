"""The embedding service: upload bytes in, one L2-normalised embedding out.

    bytes --load_image--> uint8 pixels --crop(box)--> the user's region --embed--> unit vector

It holds one encoder, loaded once, and names its model version (``Encoder.version``,
a hash of the weights and preprocessing), which every index entry, log row and
response carries: vectors from two models must never be compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from visual_search.embed import embed
from visual_search.errors import ImageError, ServiceError
from visual_search.models import Encoder, ModelError
from visual_search.preprocess import DEFAULT_MAX_PIXELS, crop, load_image, preprocess_batch

#: Uploads are decoded with a smaller pixel limit than files on disk (16 MP: a phone photo passes): a server must not
#: let one request decode a 40-megapixel image (about 40 MB of grayscale, and the time).
MAX_UPLOAD_PIXELS = min(DEFAULT_MAX_PIXELS, 16_000_000)


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    """Parse ``"left,top,right,bottom"`` (pixels of the uploaded image); None or "" means no box.

    Raises:
        ServiceError: not four finite numbers, or a box with no area.
    """
    if text is None or not str(text).strip():
        return None
    parts = str(text).split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ServiceError(f"box {text!r}: expected four numbers 'left,top,right,bottom'") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ServiceError(f"box {text!r}: expected four finite numbers 'left,top,right,bottom'")
    left, top, right, bottom = values
    if right <= left or bottom <= top:
        raise ServiceError(f"box {text!r}: right must exceed left and bottom must exceed top")
    return values  # type: ignore[return-value]


class EmbeddingService:
    """Decode, crop and embed queries with one encoder.

    Args:
        encoder: a ``visual_search.models.Encoder`` (e.g. ``load_pretrained()``).
        max_pixels: refuse uploads with more pixels than this before decoding them.
    """

    def __init__(self, encoder: Encoder, max_pixels: int = MAX_UPLOAD_PIXELS) -> None:
        if not isinstance(encoder, Encoder):
            raise ModelError(f"encoder: expected a visual_search.models.Encoder, got {type(encoder).__name__}")
        self.encoder = encoder.eval()
        self.model_version = encoder.version  # computed once: it hashes every weight
        self.max_pixels = max_pixels

    @property
    def dim(self) -> int:
        """Length of the embeddings (the retrieval layer's width)."""
        with torch.no_grad():
            return int(self.encoder(torch.zeros(1, self.encoder.in_channels, self.encoder.image_size, self.encoder.image_size)).shape[1])

    def decode(self, data: bytes) -> np.ndarray:
        """Upload bytes to grayscale uint8 pixels ``[H, W]``.

        Raises:
            ImageError: empty, not an image, truncated or corrupt, or too many pixels.
        """
        return load_image(data, mode="L", max_pixels=self.max_pixels)

    @staticmethod
    def crop(pixels: np.ndarray, box: Sequence[float] | None) -> np.ndarray:
        """The user's box of ``pixels`` (None: all of it).

        A box that sticks out of the image is clipped to it (a drag on a web page
        easily ends past the edge); one that misses the image entirely is refused.

        Raises:
            ServiceError: a box that does not overlap the image.
        """
        if box is None:
            return pixels
        try:
            return crop(pixels, box, clip=True)
        except ImageError as err:
            raise ServiceError(str(err)) from None

    def embed_pixels(self, pixels: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Embed one image ``[H, W]`` (returns ``[D]``) or a list or array of images (returns ``[N, D]``).

        Images of different sizes are embedded in groups of one size, each resized
        by the encoder's own preprocessing.
        """
        if isinstance(pixels, np.ndarray) and pixels.ndim == 2:
            # The per-request path, without embed()'s batching, progress bar and mode bookkeeping (about 0.4 ms
            # of a 0.9 ms call for the committed CNN): the service keeps its encoder in eval mode for good.
            # tests/test_service.py checks that it gives what embed() gives.
            enc = self.encoder
            x = preprocess_batch(pixels[None], size=enc.image_size, mean=enc.mean, std=enc.std, channels=enc.in_channels)
            with torch.inference_mode():
                return enc(x)[0].float().numpy()
        images = list(pixels)
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        for rows in groups.values():
            vecs = embed(self.encoder, np.stack([images[i] for i in rows]), progress=len(rows) > 20_000)
            for i, v in zip(rows, vecs):
                out[i] = v
        return np.stack(out).astype(np.float32)  # type: ignore[arg-type]

    def embed_upload(self, data: bytes, box: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole path for one upload: ``(embedding [D], decoded pixels, the crop that was embedded)``."""
        pixels = self.decode(data)
        region = self.crop(pixels, box)
        return self.embed_pixels(region), pixels, region
