"""SimCLR's batched augmentations: shape, range, per-image parameters, determinism, and refused parameters."""

from __future__ import annotations

import pytest
import torch

from visual_search import augment, contrastive
from visual_search.augment import augment_batch
from visual_search.errors import ContrastiveError


def _images(n: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_augment_batch_preserves_shape_and_range():
    x = _images(6)
    out = augment_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_augment_batch_gives_each_image_its_own_parameters():
    one = torch.zeros(1, 1, 28, 28)
    one[..., 6:22, 10:18] = 1.0
    out = augment_batch(one.repeat(8, 1, 1, 1), torch.Generator().manual_seed(0))
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat)
    assert (distances[~torch.eye(8, dtype=torch.bool)] > 1e-3).all()  # no two copies got the same view


def test_augment_batch_is_deterministic_with_a_seeded_generator():
    x = _images(4)
    a = augment_batch(x, torch.Generator().manual_seed(7))
    b = augment_batch(x, torch.Generator().manual_seed(7))
    c = augment_batch(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_batch_keeps_float64():
    x = _images(4, dtype=torch.float64)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64 and out.shape == x.shape


def test_identity_settings_keep_the_image():
    # no crop, flip, rotation, colour change or blur: the output is the input (up to the 1e-3 "no blur" kernel)
    x = _images(3)
    identity = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip_p": 0.0, "max_rotation": 0.0, "brightness": 0.0, "contrast": 0.0, "blur_p": 0.0}
    torch.testing.assert_close(augment_batch(x, torch.Generator().manual_seed(0), **identity), x, atol=1e-5, rtol=0)


def test_the_boundary_values_are_accepted():
    x = _images(2)
    out = augment_batch(x, None, crop_scale=(1.0, 1.0), flip_p=1.0, blur_p=1.0, max_rotation=0, blur_sigma=(2.0, 2.0), brightness=0.99, contrast=0.0)
    assert out.shape == x.shape


def test_contrastive_reexports_the_same_function():
    assert contrastive.augment_batch is augment.augment_batch


_X = torch.full((2, 1, 8, 8), 0.5)
_NAN = _X.clone()
_NAN[1, 0, 3, 3] = float("nan")
_INF = _X.clone()
_INF[0, 0, 0, 0] = float("inf")


@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), {}, "x: expected float images"),
        (torch.zeros(1, 8, 8), {}, "x: expected float images"),
        (torch.zeros(0, 1, 8, 8), {}, r"x: expected float images .*\[0, 1, 8, 8\]"),
        (_X.numpy(), {}, "x: expected float images .* got ndarray"),
        (_NAN, {}, "x: the images contain NaN or infinite values"),
        (_INF, {}, "x: the images contain NaN or infinite values"),
        (_X, {"generator": 7}, "generator must be a CPU torch.Generator or None, got int"),
        (_X, {"crop_scale": (0.0, 1.0)}, r"crop_scale\[0\] must be a finite number in \(0, 1.0\]"),
        (_X, {"crop_scale": (0.5, 1.5)}, r"crop_scale\[1\] must be a finite number in \(0, 1.0\]"),
        (_X, {"crop_scale": (0.9, 0.5)}, "crop_scale must be a .* with lo <= hi"),
        (_X, {"crop_scale": 0.5}, "crop_scale must be a .lo, hi. pair"),
        (_X, {"crop_scale": (0.2, 0.5, 1.0)}, "crop_scale must be a .lo, hi. pair"),
        (_X, {"crop_scale": (0.5, float("nan"))}, r"crop_scale\[1\] must be a finite number"),
        (_X, {"crop_ratio": (-1.0, 2.0)}, r"crop_ratio\[0\] must be a finite number > 0"),
        (_X, {"crop_ratio": (2.0, 0.5)}, "crop_ratio must be a .* with lo <= hi"),
        (_X, {"blur_sigma": (0.0, 1.0)}, r"blur_sigma\[0\] must be a finite number > 0"),
        (_X, {"blur_sigma": "ab"}, "blur_sigma must be a .lo, hi. pair"),
        (_X, {"flip_p": 1.5}, r"flip_p must be a finite number in \[0, 1\]"),
        (_X, {"flip_p": True}, r"flip_p must be a finite number in \[0, 1\]"),
        (_X, {"blur_p": -0.1}, r"blur_p must be a finite number in \[0, 1\]"),
        (_X, {"max_rotation": -5.0}, "max_rotation must be a finite number >= 0"),
        (_X, {"max_rotation": float("inf")}, "max_rotation must be a finite number >= 0"),
        (_X, {"brightness": 1.0}, r"brightness must be a finite number in \[0, 1\)"),
        (_X, {"brightness": -0.2}, r"brightness must be a finite number in \[0, 1\)"),
        (_X, {"contrast": 1.2}, r"contrast must be a finite number in \[0, 1\)"),
        (_X, {"contrast": None}, r"contrast must be a finite number in \[0, 1\)"),
    ],
)
def test_bad_input_raises(x, kwargs, message):
    with pytest.raises(ContrastiveError, match=message):
        augment_batch(x, **kwargs)
