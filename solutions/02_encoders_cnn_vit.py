"""Solutions to chapter 02's checked exercises (notebooks/02_encoders_cnn_vit.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch02.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

import numpy as np


def sq_distances(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared L2 between unit rows from one matrix product: ||a - b||^2 = 2 - 2 cos(a, b)."""
    a = A / np.linalg.norm(A, axis=1, keepdims=True)
    b = B / np.linalg.norm(B, axis=1, keepdims=True)
    return 2 - 2 * (a @ b.T)


def whitened_path_size(conv_layers: int, width: int, image_size: int, whitening_dim: int, in_channels: int = 1) -> int:
    """The conv trunk's parameters plus the whitening's mean and projection; the neck never runs for this layer."""
    total, c_in = 0, in_channels
    for i in range(conv_layers):
        c = width * 2**i
        total += 9 * c_in * c + 2 * c  # 3x3 conv c_in -> c (no bias) + BatchNorm2d (scale, shift)
        total += 9 * c * c + 2 * c  # 3x3 conv c -> c + BatchNorm2d
        c_in = c
    side = image_size // 2 ** (conv_layers - 1)  # conv_layers - 1 max-pools, each flooring
    map_size = c_in * side * side
    return total + map_size + map_size * whitening_dim  # mean, then the projection matrix


def cnn_macs(conv_layers: int, width: int, fc_width: int, embedding_dim: int, image_size: int = 28, in_channels: int = 1) -> int:
    """Multiply-adds of the convolutions and linear layers for one image (batch norm, ReLU, pooling left out)."""
    total, c_in, side = 0, in_channels, image_size
    for i in range(conv_layers):
        c = width * 2**i
        total += 9 * c_in * c * side * side + 9 * c * c * side * side  # two 3x3 convs at this block's map size
        c_in = c
        if i < conv_layers - 1:
            side //= 2  # the 2x2 max-pool between blocks
    return total + c_in * fc_width + fc_width * embedding_dim


def vit_tokens(image_size: int, patch_size: int) -> int:
    """One token per patch, plus the class token."""
    return (image_size // patch_size) ** 2 + 1
