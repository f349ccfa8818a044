"""Turn whatever a user uploads into the tensor an encoder expects.

The steps, in the order a serving system applies them:

1. ``load_image``: decode any common file into **one colour mode** (grayscale
   "L" by default, or "RGB"), applying EXIF rotation and flattening alpha onto
   white, so the model never sees CMYK, palettes or 16-bit data.
2. ``crop``: keep only the user's box (Pinterest-style "search inside this image").
3. ``resize``: every model needs one fixed input size.
4. ``to_unit_float``: scale uint8 pixels 0..255 to floats in [0, 1].
5. ``normalize``: z-score with the training set's mean and std, so inputs are
   centred near 0 with unit variance, which keeps optimisation well behaved.

``make_transform`` composes 3-5 with ``torchvision.transforms.v2`` for one image;
``preprocess_batch`` does the same to a whole uint8 array at once.

Every bad input raises ``ImageError`` naming the file or array and the problem.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from visual_search._checks import check_int, check_real
from visual_search.errors import ImageError  # noqa: F401  (re-exported: raised here, importable from here)

#: Mean and std of the Fashion-MNIST train split's pixels after scaling to [0, 1]
#: (``compute_mean_std(load_fashion_mnist("train")[0])``; a test re-derives them).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

#: Refuse images with more pixels than this before decoding them (a
#: "decompression bomb" is a tiny file that expands to gigabytes).
DEFAULT_MAX_PIXELS = 40_000_000

MODES = ("L", "RGB")

# What Pillow raises on corrupt data varies by format and version.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)




def load_image(
    path: str | Path | bytes, mode: str = "L", max_pixels: int = DEFAULT_MAX_PIXELS, background: int = 255
) -> np.ndarray:
    """Decode an image file (or the bytes of one, as a server receives an upload) into a uint8 array in a single colour mode.

    Handles grayscale, RGB, RGBA and LA (alpha composited on ``background``), palette
    images, a transparent colour key on any mode, CMYK, 16-bit images, and EXIF
    orientation. Animated files give their first frame. Pillow's integer mode
    "I" is read as 16-bit (0..65535), which is how Pillow opens 16-bit PNGs and
    TIFFs; float images ("F") are read as 0..1 when their maximum is at most 1,
    else as 0..255. Colour becomes grayscale with Pillow's ITU-R 601-2 weights
    (L = 0.299 R + 0.587 G + 0.114 B).

    Args:
        path: the image file, or its contents as ``bytes`` (messages then call it "upload").
        mode: "L" for grayscale ``[H, W]`` or "RGB" for ``[H, W, 3]``.
        max_pixels: refuse images larger than this (width x height) before decoding.
            Pillow's own limit (``Image.MAX_IMAGE_PIXELS``) applies as well.
        background: grey level 0..255 that transparent pixels are composited onto.
            White (255) is how a browser shows them; Fashion-MNIST's own
            background is black (0), so a model trained on it may want 0.

    Returns:
        A new uint8 array.

    Raises:
        ImageError: for a missing, empty, non-image, truncated or corrupt file,
            a decompression bomb, or an unsupported mode.
    """
    if mode not in MODES:
        raise ImageError(f"mode must be one of {MODES}, got {mode!r}")
    background = check_int(background, "background", low=0, high=255, error=ImageError)
    max_pixels = check_int(max_pixels, "max_pixels", low=1, error=ImageError)
    if isinstance(path, (bytes, bytearray, memoryview)):
        source: Path | io.BytesIO = io.BytesIO(bytes(path))
        path = "upload"  # what messages call it
        if not source.getbuffer().nbytes:
            raise ImageError(f"{path}: empty file (0 bytes)")
    else:
        source = path = Path(path)
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns at MAX_IMAGE_PIXELS and errors at twice that; we refuse both.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{path}: {width}x{height} = {width * height:,} pixels exceeds max_pixels={max_pixels:,} "
                        "(possible decompression bomb); refusing to decode it"
                    )
                if width == 0 or height == 0:
                    raise ImageError(f"{path}: image has zero size ({width}x{height})")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_mode(img, mode, path, background)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"{path}: decompression bomb refused ({e})") from e
        except UnidentifiedImageError as e:
            raise ImageError(f"{path}: not an image file, or a format Pillow cannot read") from e
        except _DECODE_ERRORS as e:
            raise ImageError(f"{path}: truncated or corrupt image data ({e})") from e


def _to_mode(img: Image.Image, mode: str, path: Path | str, background: int) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to uint8 "L" or "RGB"."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit data (Pillow may open 16-bit PNGs as "I"): map 0..65535 onto 0..255.
        wide = np.asarray(img).astype(np.int64)
        if wide.min() < 0 or wide.max() > 65535:
            raise ImageError(f"{path}: integer image values {wide.min()}..{wide.max()} are outside 16-bit range")
        img = Image.fromarray(np.round(wide / 257.0).astype(np.uint8), mode="L")
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ImageError(f"{path}: floating-point image contains NaN or infinity")
        if values.max() <= 1.0:
            values = values * 255.0
        img = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:  # alpha, or a transparent palette entry/colour key
        rgba = img.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (background, background, background, 255))
        img = Image.alpha_composite(backdrop, rgba).convert("RGB")
    if img.mode != mode:
        # "L" from colour goes through RGB so CMYK, YCbCr and palettes all take one road.
        img = img.convert("RGB") if img.mode not in ("L", "RGB") else img
        img = img.convert(mode)
    return np.array(img, dtype=np.uint8)


def check_image_array(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an image array: ``[H, W]`` or ``[H, W, C]`` with C in (1, 3), non-empty, no NaN.

    Args:
        image: the array to check.
        name: how the error message refers to it.

    Returns:
        The same array, for chaining.

    Raises:
        ImageError: naming the array and what is wrong with it.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ImageError(f"{name}: expected shape [H, W] or [H, W, 1|3], got {list(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{name}: empty image of shape {list(image.shape)}")
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ImageError(f"{name}: contains NaN or infinity")
        return image
    raise ImageError(f"{name}: dtype {image.dtype} is not supported; use uint8 (0..255) or float")


def crop(image: np.ndarray, box: Sequence[float], clip: bool = False) -> np.ndarray:
    """Crop an image to a user's box.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` array.
        box: ``(left, top, right, bottom)`` in pixels, Pillow's convention:
            ``right`` and ``bottom`` are exclusive, so the crop is
            ``image[top:bottom, left:right]``. Fractional values are rounded
            to the nearest pixel edge (halves to even, as Python's ``round``).
        clip: if True, a box that sticks out of the image is clipped to it;
            if False (the default) such a box is an error, because a box from a
            UI that disagrees with the image size usually means a bug upstream.

    Returns:
        A new array holding the crop.

    Raises:
        ImageError: for a malformed box, a zero-size box, or a box outside the image.
    """
    check_image_array(image)
    height, width = image.shape[:2]
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError) as e:
        raise ImageError(f"box {box!r}: expected four numbers (left, top, right, bottom)") from e
    if isinstance(box, (str, bytes)) or len(values) != 4 or not all(np.isfinite(values)):
        raise ImageError(f"box {box!r}: expected four finite numbers (left, top, right, bottom)")
    left, top, right, bottom = (int(round(v)) for v in values)
    if right <= left or bottom <= top:
        raise ImageError(f"box {tuple(box)}: zero-size box (width {right - left}, height {bottom - top})")
    if clip:
        left, top, right, bottom = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
        if right <= left or bottom <= top:
            raise ImageError(f"box {tuple(box)}: does not overlap the {width}x{height} image")
    elif left < 0 or top < 0 or right > width or bottom > height:
        raise ImageError(f"box {tuple(box)}: outside the {width}x{height} image (valid: 0 <= left < right <= {width}, 0 <= top < bottom <= {height})")
    return image[top:bottom, left:right].copy()


def _as_chw_tensor(image: np.ndarray) -> torch.Tensor:
    check_image_array(image)
    x = torch.tensor(image)  # a copy: the caller's array stays untouched (and may be read-only)
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)


def _check_size(size: int | Sequence[int]) -> list[int]:
    """``size`` as ``[height, width]``: an int gives a square; each side must be a positive integer."""
    sides = [size, size] if isinstance(size, (int, np.integer)) else size
    message = f"size must be a positive int or (height, width) of positive ints, got {size!r}"
    if isinstance(sides, (str, bytes)) or not isinstance(sides, (Sequence, np.ndarray)) or len(sides) != 2:
        raise ImageError(message)
    try:
        return [check_int(side, "size", low=1, error=ImageError) for side in sides]
    except ImageError:
        raise ImageError(message) from None


def _check_stats(mean: float, std: float) -> None:
    try:
        check_real(mean, "mean", error=ImageError)
        check_real(std, "std", low=0, low_open=True, error=ImageError)
    except ImageError:
        raise ImageError(f"mean must be finite and std finite and positive, got mean={mean!r}, std={std!r}") from None


def _check_channels(channels: int) -> int:
    """1 (grayscale) or 3 (grayscale repeated into RGB); a bool is not a channel count."""
    try:
        value = check_int(channels, "channels", low=1, high=3, error=ImageError)
    except ImageError:
        value = None
    if value not in (1, 3):
        raise ImageError(f"channels must be 1 or 3, got {channels!r}")
    return value


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an image (bilinear, antialiased) to ``size`` (int: square; or ``(H, W)``).

    Returns:
        An array of the same dtype and channel layout as the input.
    """
    size_hw = _check_size(size)
    out = F.resize(_as_chw_tensor(image), size_hw, antialias=True)
    out = out.permute(1, 2, 0).numpy()
    return out[..., 0] if image.ndim == 2 else out


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """Scale uint8 pixels 0..255 to float32 in [0, 1]; one image or a batch of any shape."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ImageError(f"images: to_unit_float expects a uint8 array, got {got}")
    return images.astype(np.float32) / 255.0


def normalize(x: np.ndarray, mean: float = FASHION_MNIST_MEAN, std: float = FASHION_MNIST_STD) -> np.ndarray:
    """Z-score: ``(x - mean) / std`` with the training set's statistics."""
    _check_stats(mean, std)
    return ((np.asarray(x, dtype=np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)


def compute_mean_std(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of uint8 images after scaling to [0, 1], over every pixel.

    Computed in float64 chunks so 60,000 images need little memory.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.size == 0:
        raise ImageError(f"images: expected a non-empty uint8 array, got {images.dtype} with shape {list(images.shape)}")
    flat = images.reshape(len(images), -1)
    total = total_sq = 0.0
    for start in range(0, len(flat), 10_000):
        chunk = flat[start : start + 10_000].astype(np.float64) / 255.0
        total += chunk.sum()
        total_sq += np.square(chunk).sum()
    mean = total / flat.size
    return float(mean), float(np.sqrt(total_sq / flat.size - mean**2))


def make_transform(
    size: int | tuple[int, int] = 28,
    mean: float = FASHION_MNIST_MEAN,
    std: float = FASHION_MNIST_STD,
    channels: int = 1,
) -> v2.Compose:
    """Build the torchvision v2 pipeline for one ``[H, W]`` or ``[H, W, C]`` uint8 image.

    The first step rejects anything but a valid uint8 image, so the serving path
    is exactly as strict as ``preprocess_batch``.

    Args:
        size: output height and width.
        mean: z-score mean (per channel, the same for every channel).
        std: z-score std.
        channels: 1 for grayscale models, 3 for models that expect RGB
            (grayscale is repeated across the three channels).

    Returns:
        A callable mapping an image to a float32 tensor ``[channels, size, size]``.
    """
    channels = _check_channels(channels)
    size_hw = _check_size(size)
    _check_stats(mean, std)
    return v2.Compose(
        [
            v2.Lambda(_require_uint8_image),
            v2.ToImage(),
            v2.Grayscale(num_output_channels=channels),
            v2.Resize(size_hw, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([mean] * channels, [std] * channels),
            v2.ToPureTensor(),
        ]
    )


def _require_uint8_image(image: np.ndarray) -> np.ndarray:
    check_image_array(image)
    if image.dtype != np.uint8:
        raise ImageError(f"image: expected uint8 pixels 0..255, got {image.dtype} (scaling would be skipped silently)")
    return image


def preprocess_batch(
    images: np.ndarray,
    size: int | tuple[int, int] = 28,
    mean: float = FASHION_MNIST_MEAN,
    std: float = FASHION_MNIST_STD,
    channels: int = 1,
) -> torch.Tensor:
    """Resize, scale and normalise a batch of grayscale uint8 images at once.

    Gives the same numbers as applying ``make_transform`` to each image.

    Args:
        images: uint8 ``[N, H, W]``.
        size, mean, std, channels: as in ``make_transform``.

    Returns:
        float32 tensor ``[N, channels, size, size]``.

    Raises:
        ImageError: for the wrong dtype or shape, or an empty batch.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ImageError(f"images: expected a uint8 array [N, H, W], got {got}")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ImageError(f"images: empty batch of shape {list(images.shape)}")
    channels = _check_channels(channels)
    size_hw = _check_size(size)
    _check_stats(mean, std)
    x = torch.tensor(images).unsqueeze(1)
    if list(x.shape[-2:]) != size_hw:
        x = F.resize(x, size_hw, antialias=True)
    x = F.normalize(F.to_dtype(x, torch.float32, scale=True), [mean], [std])
    return x.expand(-1, channels, -1, -1).contiguous() if channels == 3 else x
