"""The galleries the service can start with: all 70,000 Fashion-MNIST images, or the committed sample.

Ids are stable, so a click log or a bookmark means the same image on every machine:
``full`` gives train image i the id i and test image j the id 60,000 + j;
``sample`` gives the sample's gallery images ids 0..1,999 (its ``gallery_index``
says which train images they are).
"""

from __future__ import annotations

import numpy as np

from visual_search.data import load_fashion_mnist, load_sample
from visual_search.errors import ServiceError
from visual_search.service.core import Gallery

GALLERIES = ("full", "sample")


def load_gallery(name: str) -> Gallery:
    """The ``full`` (70k) or ``sample`` (2k) gallery, with labels and sources.

    Raises:
        ServiceError: an unknown name. DataError: the data cannot be loaded.
    """
    if name == "full":
        train, train_labels = load_fashion_mnist("train")
        test, test_labels = load_fashion_mnist("test")
        sources = [f"train:{i}" for i in range(len(train))] + [f"test:{j}" for j in range(len(test))]
        return Gallery(np.concatenate([train, test]), np.concatenate([train_labels, test_labels]), sources, name="full")
    if name == "sample":
        s = load_sample()
        return Gallery(s.gallery_images, s.gallery_labels, [f"train:{i}" for i in s.gallery_index], name="sample")
    raise ServiceError(f"gallery must be one of {GALLERIES}, got {name!r}")
