"""Checks for chapter 02, encoders: cosine and L2 on unit vectors, the served CNN's size, multiply-adds, ViT tokens."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from visual_search import models
from visual_search.exercises._core import call, checker, expect_close, expect_equal


@checker
def sq_distances(answer: Callable[[np.ndarray, np.ndarray], np.ndarray], rng: np.random.Generator) -> int:
    """``answer(A, B)`` -> ``[n, m]`` squared L2 distances between the L2-normalised rows of A and of B."""
    for i in range(8):
        n, m, d = int(rng.integers(1, 6)), int(rng.integers(1, 8)), int(rng.integers(2, 17))
        a = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=(n, 1))  # lengths vary: normalising matters
        b = rng.normal(size=(m, d)) * rng.uniform(0.1, 10, size=(m, 1))
        ua, ub = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
        want = ((ua[:, None, :] - ub[None, :, :]) ** 2).sum(-1)
        case = f"case {i + 1} (A {n}x{d}, B {m}x{d}, rows of lengths between 0.1 and 10)"
        got = call(answer, a.copy(), b.copy(), case=case)
        expect_close(got, want, case,
                     "normalise each row to length 1 first (a / np.linalg.norm(a, axis=1, keepdims=True)); then "
                     "cos = A_unit @ B_unit.T and the squared distance is 2 - 2 cos, shape [len(A), len(B)]",
                     rtol=1e-6, atol=1e-6)
    return 8


def _cnn_config(rng: np.random.Generator, i: int) -> dict:
    if i == 0:
        return {"conv_layers": 3, "width": 16, "image_size": 28, "in_channels": 1}  # the served checkpoint's trunk
    conv_layers = int(rng.integers(1, 5))
    return {"conv_layers": conv_layers, "width": int(rng.choice([4, 8, 16, 24, 32])),
            "image_size": int(rng.choice([16, 20, 28, 30])), "in_channels": int(rng.choice([1, 1, 3]))}


@checker
def whitened_path_size(answer: Callable[[int, int, int, int, int], int], rng: np.random.Generator) -> int:
    """``answer(conv_layers, width, image_size, whitening_dim, in_channels)`` -> numbers the "whitened" layer uses."""
    for i in range(6):
        cfg = _cnn_config(rng, i)
        levels = cfg["conv_layers"] - 1
        map_size = cfg["width"] * 2**levels * (cfg["image_size"] // 2**levels) ** 2
        dim = 64 if i == 0 else int(rng.integers(1, min(map_size, 96) + 1))
        enc = models.build_encoder("cnn", whitening_dim=dim, **cfg)
        want = sum(p.numel() for p in enc.backbone.features.parameters()) + enc.whitening.mean.numel() + enc.whitening.projection.numel()
        case = f"case {i + 1} (conv_layers={cfg['conv_layers']}, width={cfg['width']}, image_size={cfg['image_size']}, " \
               f"whitening_dim={dim}, in_channels={cfg['in_channels']})"
        got = call(answer, cfg["conv_layers"], cfg["width"], cfg["image_size"], dim, cfg["in_channels"], case=case)
        expect_equal(got, want, case,
                     "the conv trunk: per block two bias-free 3x3 convs (9 c_in c_out weights each) and two batch norms "
                     "(2 c each); then the whitening's mean (C*h*w numbers) and projection (C*h*w x whitening_dim), where "
                     "C = width * 2**(conv_layers - 1) and h = w = image_size // 2**(conv_layers - 1) (max-pool floors). "
                     "The neck and the head never run for this layer: leave them out")
    return 6


def _reference_macs(enc: models.Encoder) -> int:
    """Multiply-adds of the backbone's convolutions and linear layers for one image, read off a forward pass."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        total += output[0].numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]

    def linear_hook(module, inputs, output):
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in enc.backbone.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            enc(torch.zeros(1, enc.in_channels, enc.image_size, enc.image_size), layer="embedding")
    finally:
        for handle in handles:
            handle.remove()
    return total


@checker
def cnn_macs(answer: Callable[[int, int, int, int, int, int], int], rng: np.random.Generator) -> int:
    """``answer(conv_layers, width, fc_width, embedding_dim, image_size, in_channels)`` -> multiply-adds for one image."""
    for i in range(6):
        cfg = _cnn_config(rng, i)
        fc_width, embedding_dim = int(rng.choice([32, 64, 128, 256])), int(rng.choice([16, 64, 128]))
        enc = models.build_encoder("cnn", fc_width=fc_width, embedding_dim=embedding_dim, **cfg)
        want = _reference_macs(enc)
        case = f"case {i + 1} (conv_layers={cfg['conv_layers']}, width={cfg['width']}, fc_width={fc_width}, " \
               f"embedding_dim={embedding_dim}, image_size={cfg['image_size']}, in_channels={cfg['in_channels']})"
        got = call(answer, cfg["conv_layers"], cfg["width"], fc_width, embedding_dim, cfg["image_size"], cfg["in_channels"], case=case)
        expect_equal(got, want, case,
                     "each 3x3 conv (padding 1, so the map keeps its size) costs 9 c_in c_out H W; block i runs at "
                     "image_size // 2**i (the 2x2 max-pool floors), with c = width * 2**i; then the neck's two linear "
                     "layers cost in x out each (c_last x fc_width, fc_width x embedding_dim). Count multiply-adds only: "
                     "no batch norm, ReLU, pooling or biases")
    return 6


@checker
def vit_tokens(answer: Callable[[int, int], int], rng: np.random.Generator) -> int:
    """``answer(image_size, patch_size)`` -> the tokens a ViT's transformer blocks receive (patches plus the class token)."""
    for i in range(6):
        patch, grid = (7, 4) if i == 0 else (int(rng.integers(1, 17)), int(rng.integers(1, 11)))
        image_size = patch * grid
        vit = models.build_encoder("vit", image_size=image_size, patch_size=patch, depth=1, width=8, heads=2)
        want = int(vit.backbone.features.seq_length)
        case = f"case {i + 1} (image_size={image_size}, patch_size={patch})"
        expect_equal(call(answer, image_size, patch, case=case), want, case,
                     "the image is cut into (image_size // patch_size) ** 2 patches, one token each, and the class "
                     "token is put in front: one more")
    return 6
