"""SimCLR's image augmentations, batched: every image gets its own random crop, flip, rotation, colour change and blur.

A contrastive "augmentation" positive (chapter 03) is two random views of one
image; SimCLR (chapter 04, ``visual_search.train``) makes them at every training
step with ``augment_batch``. The views are made here, at training time, so the
ids of an augmentation positive (``contrastive.positives_from_augmentation``)
look trivial: ``(i, i)``.

Why its own module: ``torchvision.transforms.v2`` draws one set of random
parameters per call, so on a batch every image would get the same crop; doing it
per image in a Python loop is slow. ``augment_batch`` draws per-image parameters
and applies them in a few batched tensor operations.

Errors: bad input raises ``visual_search.errors.ContrastiveError`` (augmentation
is part of the contrastive-training family of errors; there is no separate
augmentation error), with a message that names the parameter.

Data flow: this module imports nothing from the library but ``errors`` and
``_checks``; ``contrastive`` and ``train`` use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from visual_search._checks import check_real
from visual_search.errors import ContrastiveError


def _check_interval(value: object, name: str, *, high: float | None = None) -> tuple[float, float]:
    """``value`` as a ``(lo, hi)`` pair of finite numbers with ``0 < lo <= hi`` (``<= high`` if given), or ContrastiveError."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ContrastiveError(f"{name} must be a (lo, hi) pair of numbers, got {value!r}")
    lo, hi = (check_real(v, f"{name}[{i}]", low=0, high=high, low_open=True, error=ContrastiveError) for i, v in enumerate(value))
    if lo > hi:
        raise ContrastiveError(f"{name} must be a (lo, hi) pair with lo <= hi, got {value!r}")
    return lo, hi


def _check_images(x: object) -> torch.Tensor:
    """``x`` if it is a finite float tensor ``[N >= 1, C >= 1, H >= 1, W >= 1]``, else ContrastiveError."""
    if not isinstance(x, torch.Tensor):
        raise ContrastiveError(f"x: expected float images [N, C, H, W], got {type(x).__name__}")
    if x.ndim != 4 or not x.is_floating_point() or x.numel() == 0:
        raise ContrastiveError(f"x: expected float images [N, C, H, W] (none of them 0), got {x.dtype} {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise ContrastiveError("x: the images contain NaN or infinite values")
    return x


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    crop_scale: tuple[float, float] = (0.35, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    max_rotation: float = 15.0,
    brightness: float = 0.4,
    contrast: float = 0.4,
    blur_p: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 1.2),
) -> torch.Tensor:
    """SimCLR augmentations with independent random parameters for every image, in a few batched ops.

    ``torchvision.transforms.v2`` draws one set of parameters per call, so calling it
    on a batch gives every image the same crop. Here each image gets its own random
    resized crop, flip and rotation (one ``affine_grid`` + ``grid_sample``), its own
    brightness and contrast factors (broadcast arithmetic), and, with probability
    ``blur_p``, its own Gaussian blur (a grouped convolution).

    Args:
        x: float images in [0, 1], ``[N, C, H, W]``, finite.
        generator: a seeded CPU ``torch.Generator`` for reproducible views (None: torch's global one).
        crop_scale: ``(lo, hi)`` range of the crop's area as a fraction of the image, ``0 < lo <= hi <= 1``.
        crop_ratio: ``(lo, hi)`` range of the crop's aspect ratio, ``0 < lo <= hi``.
        flip_p: probability of a horizontal flip, in [0, 1].
        max_rotation: rotations are uniform in +-this many degrees, >= 0.
        brightness, contrast: factors are uniform in [1 - b, 1 + b]; b in [0, 1).
        blur_p: probability of blurring an image, in [0, 1].
        blur_sigma: ``(lo, hi)`` range of the blur's standard deviation in pixels, ``0 < lo <= hi``.

    Returns:
        A new tensor of the same shape, dtype and device, values in [0, 1].

    Raises:
        ContrastiveError: if ``x`` is not a non-empty finite float ``[N, C, H, W]`` tensor, the
            generator is not a CPU ``torch.Generator``, or a parameter is out of its range.
    """
    x = _check_images(x)
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        got = f"a generator on {generator.device}" if isinstance(generator, torch.Generator) else type(generator).__name__
        raise ContrastiveError(f"generator must be a CPU torch.Generator or None, got {got}")
    crop_scale = _check_interval(crop_scale, "crop_scale", high=1.0)
    crop_ratio = _check_interval(crop_ratio, "crop_ratio")
    blur_sigma = _check_interval(blur_sigma, "blur_sigma")
    flip_p = check_real(flip_p, "flip_p", low=0, high=1, error=ContrastiveError)
    blur_p = check_real(blur_p, "blur_p", low=0, high=1, error=ContrastiveError)
    max_rotation = check_real(max_rotation, "max_rotation", low=0, error=ContrastiveError)
    brightness = check_real(brightness, "brightness", low=0, high=1, high_open=True, error=ContrastiveError)
    contrast = check_real(contrast, "contrast", low=0, high=1, high_open=True, error=ContrastiveError)
    n, c, h, w = x.shape
    dev = x.device

    def uniform(lo: float, hi: float, size: int = n) -> torch.Tensor:
        # drawn on the CPU (a CPU generator gives the same views on any device), then moved
        return torch.rand(size, generator=generator, dtype=x.dtype).to(dev) * (hi - lo) + lo

    # Geometry: where each output pixel samples the input, in [-1, 1] coordinates.
    area = uniform(*crop_scale)
    log_ratio = uniform(math.log(crop_ratio[0]), math.log(crop_ratio[1]))
    crop_w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    crop_h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    centre_x = (uniform(-1, 1) * (1 - crop_w))
    centre_y = (uniform(-1, 1) * (1 - crop_h))
    angle = uniform(-max_rotation, max_rotation) * math.pi / 180
    flip = torch.where(uniform(0, 1) < flip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([crop_w * cos * flip, -crop_h * sin, centre_x], 1), torch.stack([crop_w * sin * flip, crop_h * cos, centre_y], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Photometry: brightness scales, contrast stretches around each image's mean.
    out = out * uniform(1 - brightness, 1 + brightness).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * uniform(1 - contrast, 1 + contrast).view(n, 1, 1, 1) + mean

    # Blur: a 5x5 Gaussian per image (sigma ~0 means no blur), as one grouped convolution.
    sigma = torch.where(uniform(0, 1) < blur_p, uniform(*blur_sigma), torch.full((n,), 1e-3, device=dev))
    offsets = torch.arange(-2, 3, device=dev, dtype=x.dtype)
    k1 = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    kernel = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, dim=0).unsqueeze(1)  # [N*C, 1, 5, 5]
    out = F.conv2d(F.pad(out.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="replicate"), kernel, groups=n * c).reshape(n, c, h, w)
    return out.clamp(0.0, 1.0)


__all__ = ["augment_batch"]
