"""Solutions to chapter 01's checked exercises (notebooks/01_problem_and_preprocessing.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch01.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from visual_search import preprocess


def resize_error(images: np.ndarray, size: int) -> float:
    """Mean |resize(resize(x, size), (H, W)) - x| over every pixel of every image, in grey levels."""
    height, width = images.shape[1:]
    errors = []
    for x in images:
        back = preprocess.resize(preprocess.resize(x, size), (height, width))
        errors.append(np.abs(back.astype(np.int64) - x.astype(np.int64)).mean())  # int: uint8 - uint8 wraps around
    return float(np.mean(errors))


def class_mean_std(images: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Row c: the mean and std of every pixel (scaled to [0, 1]) of the images of class c."""
    return np.array([preprocess.compute_mean_std(images[labels == c]) for c in range(n_classes)])


def display_to_image(box: tuple, display_size: tuple, image_size: tuple) -> tuple:
    """Scale a (left, top, right, bottom) box from display pixels to stored-image pixels; sizes are (width, height)."""
    left, top, right, bottom = box
    fx, fy = image_size[0] / display_size[0], image_size[1] / display_size[1]
    return (left * fx, top * fy, right * fx, bottom * fy)


def load_all(uploads: list[bytes]) -> tuple[list[np.ndarray], dict[str, int]]:
    """Decode every upload; skip the bad ones, counting them by the message's reason, and never stop early."""
    images, failures = [], Counter()
    for data in uploads:
        try:
            images.append(preprocess.load_image(data))
        except preprocess.ImageError as e:
            failures[str(e).split(" (")[0]] += 1  # the details in brackets differ from file to file
    return images, dict(failures)
