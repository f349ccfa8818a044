"""Checks for chapter 01, the problem and preprocessing: resize error, per-class statistics, a UI box, a robust loader."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from visual_search import preprocess
from visual_search.exercises._core import Mismatch, call, checker, expect_close, expect_equal, expect_pair


def _blobs(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """``n`` uint8 images with a dark background and a bright, textured blob: a little like Fashion-MNIST."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((n, height, width), dtype=np.uint8)
    for k in range(n):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        ry, rx = rng.uniform(0.15, 0.4) * height, rng.uniform(0.15, 0.4) * width
        blob = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
        texture = rng.uniform(0.5, 1.0, size=(height, width))  # knit, print, stripes: the detail a resize loses
        out[k] = np.clip(255 * blob * texture * rng.uniform(0.4, 1.0), 0, 255).astype(np.uint8)
    return out


@checker
def resize_error(answer: Callable[[np.ndarray, int], float], rng: np.random.Generator) -> int:
    """``answer(images, size)`` -> mean |resize to size x size and back to H x W - original|, in grey levels."""
    for i in range(6):
        n, height, width = int(rng.integers(1, 5)), int(rng.integers(12, 33)), int(rng.integers(12, 33))
        if i == 0:
            width = height  # one square case first, like Fashion-MNIST
        size = int(rng.integers(4, min(height, width)))
        images = _blobs(rng, n, height, width)
        want = float(np.mean([np.abs(preprocess.resize(preprocess.resize(x, size), (height, width)).astype(np.int64) - x).mean()
                              for x in images]))
        case = f"case {i + 1} ({n} images of {height}x{width} (H x W), size={size})"
        got = call(answer, images.copy(), size, case=case)
        expect_close(got, want, case,
                     "resize each image with preprocess.resize(x, size), back with preprocess.resize(small, (H, W)) "
                     "(height first), and average |back - x| over every pixel; subtract as int (uint8 - uint8 wraps "
                     "around below 0), and return one float in grey levels (0..255), not scaled to [0, 1]")
    return 6


@checker
def class_mean_std(answer: Callable[[np.ndarray, np.ndarray, int], np.ndarray], rng: np.random.Generator) -> int:
    """``answer(images, labels, n_classes)`` -> float array ``[n_classes, 2]``: each class's pixel mean and std in [0, 1]."""
    for i in range(6):
        n_classes = int(rng.integers(2, 6))
        labels = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, size=int(rng.integers(4, 20)))])
        labels = rng.permutation(labels).astype(np.int64)
        images = _blobs(rng, len(labels), 28, 28)
        want = np.array([preprocess.compute_mean_std(images[labels == c]) for c in range(n_classes)])
        case = f"case {i + 1} ({len(labels)} images, {n_classes} classes)"
        got = call(answer, images.copy(), labels.copy(), n_classes, case=case)
        expect_close(got, want, case,
                     "row c is (mean, std) of every pixel of images[labels == c] after dividing by 255, as "
                     "preprocess.compute_mean_std does: one mean and one population std (ddof=0) over all of the "
                     "class's pixels together, not an average of per-image statistics")
    return 6


@checker
def display_to_image(answer: Callable[[tuple, tuple, tuple], tuple], rng: np.random.Generator) -> int:
    """``answer(box, display_size, image_size)`` -> the box in the stored image's pixels (sizes are (width, height))."""
    for i in range(8):
        image_w, image_h = int(rng.integers(20, 400)), int(rng.integers(20, 400))
        sx, sy = float(rng.choice([0.5, 2.0, 4.0, rng.uniform(0.3, 5)])), float(rng.choice([0.5, 2.0, 4.0, rng.uniform(0.3, 5)]))
        if i == 0:
            image_w, image_h, sx, sy = 56, 56, 4.0, 4.0  # the chapter's outfit, shown at 224 x 224
        display_w, display_h = max(1, round(image_w * sx)), max(1, round(image_h * sy))
        left, right = sorted(rng.choice(display_w + 1, 2, replace=False).tolist())
        top, bottom = sorted(rng.choice(display_h + 1, 2, replace=False).tolist())
        box = (left, top, right, bottom)
        fx, fy = image_w / display_w, image_h / display_h
        want = np.array([left * fx, top * fy, right * fx, bottom * fy])
        case = f"case {i + 1} (box {box} on a {display_w}x{display_h} display of a {image_w}x{image_h} image)"
        got = call(answer, box, (display_w, display_h), (image_w, image_h), case=case)
        expect_close(got, want, case,
                     "sizes are (width, height), Pillow's order; left and right scale by image_width / display_width, "
                     "top and bottom by image_height / display_height; return four floats (crop rounds them), not "
                     "rounded or swapped ones", rtol=1e-9, atol=1e-9)
    return 8


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _uploads(rng: np.random.Generator) -> list[bytes]:
    """Good PNGs (grayscale and RGB) mixed with empty, text and truncated files, at least one good one after a bad one."""
    good = []
    for _ in range(int(rng.integers(3, 8))):
        image = _blobs(rng, 1, int(rng.integers(6, 20)), int(rng.integers(6, 20)))[0]
        good.append(_png(np.stack([image, image // 2, image], axis=-1) if rng.random() < 0.4 else image))
    bad = [b"", b"this is a text file, not a PNG"]
    for _ in range(int(rng.integers(1, 4))):  # a PNG cut off by a dropped connection
        data = good[int(rng.integers(len(good)))]
        bad.append(data[: min(int(rng.integers(60, 90)), len(data) - 30)])
    uploads = [bad[0], good[0]] + [good[k] for k in rng.permutation(np.arange(1, len(good)))]
    for data in bad[1:]:
        uploads.insert(int(rng.integers(0, len(uploads) + 1)), data)
    return uploads


@checker
def load_all(answer: Callable[[list], tuple], rng: np.random.Generator) -> int:
    """``answer(uploads)`` -> ``(images, failures)``: the decoded images in order, and {reason: count} for the rest."""
    for i in range(5):
        uploads = _uploads(rng)
        want_images, want_failures = [], {}
        for data in uploads:
            try:
                want_images.append(preprocess.load_image(data))
            except preprocess.ImageError as e:
                reason = str(e).split(" (")[0]
                want_failures[reason] = want_failures.get(reason, 0) + 1
        case = f"case {i + 1} ({len(uploads)} uploads, {len(uploads) - len(want_images)} of them bad)"
        got = call(answer, list(uploads), case=case)
        images, failures = expect_pair(got, case, "(images, failures)")
        try:
            images = list(images)
        except TypeError:
            raise Mismatch(f"{case}: the images should be a list of arrays, got {type(images).__name__}") from None
        expect_equal(len(images), len(want_images), case + ", the number of images decoded",
                     "decode every upload with preprocess.load_image(data); catch preprocess.ImageError for one "
                     "upload, count it and carry on with the next (never stop at the first bad file)")
        for k, (image, want) in enumerate(zip(images, want_images)):
            expect_equal(np.asarray(image), want, f"{case}, image {k}",
                         "keep what preprocess.load_image returns (uint8 [H, W], every mode converted to grayscale), "
                         "in the order of the uploads")
        expect_equal(dict(failures) if isinstance(failures, dict) else failures, want_failures, case + ", the failures",
                     "the reason is the ImageError's message up to its first ' (' (the details in brackets differ "
                     "from file to file); count each reason (a dict or collections.Counter)")
    return 5
