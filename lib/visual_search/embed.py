"""The embedding step of the pipeline: uint8 images in, float32 unit vectors out.

``embed(encoder, images)`` applies the encoder's own preprocessing (its input
size, channels, mean and std), runs it in batches without gradients, and
returns a float32 ``[N, D]`` array, ready for an index. Offline it embeds the
whole gallery; online, the embedding service calls it on one query.

``raw_pixel_embeddings(images)`` is the baseline that needs no model: the z-scored
pixels themselves, flattened and L2-normalised. Every learned encoder must beat it.

``fit_whitening(encoder, images)`` fits a CNN's "whitened" layer on unlabelled
images: a PCA whitening of its conv map (see ``visual_search.models``).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm  # plain text bars: work in a terminal and in Jupyter without ipywidgets

from visual_search._checks import check_int
from visual_search.models import LAYERS, Encoder, ModelError, Whitening
from visual_search.preprocess import ImageError, preprocess_batch


@torch.no_grad()
def embed(encoder: Encoder, images: np.ndarray, batch_size: int = 256, layer: str | None = None, progress: bool | None = None) -> np.ndarray:
    """Embed uint8 images ``[N, H, W]`` (as ``load_fashion_mnist`` returns them).

    The encoder runs in eval mode (BatchNorm uses its running statistics), and
    every module's training flag is put back as it was afterwards, also when
    this raises, so ``embed`` can be called in the middle of training.

    Args:
        encoder: any ``Encoder`` (see ``visual_search.models``).
        images: uint8 ``[N, H, W]``; resized to the encoder's input size if needed.
        batch_size: images per forward pass (memory vs speed).
        layer: "pooled", "embedding", "head" or "whitened" (default: the encoder's ``retrieval_layer``);
            the head is offered only to measure that it retrieves worse.
        progress: show a tqdm bar (default: only for more than 20 batches).

    Returns:
        float32 ``[N, D]`` with unit-length rows.

    Raises:
        ImageError: for images of the wrong dtype or shape.
        ModelError: for a bad batch size or layer, or something that is not an Encoder.
    """
    if not isinstance(encoder, Encoder):
        raise ModelError(f"encoder: expected a visual_search.models.Encoder, got {type(encoder).__name__}")
    batch_size = check_int(batch_size, "batch_size", low=1, error=ModelError)
    if layer is not None and layer not in LAYERS:
        raise ModelError(f"layer must be one of {LAYERS}, got {layer!r}")
    _check_images(images)
    return _in_batches(encoder, images, batch_size, lambda x: encoder(x, layer=layer), progress, "embedding")


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ImageError(f"images: expected a uint8 array [N, H, W], got {got}")
    if len(images) == 0:
        raise ImageError("images: empty batch, nothing to embed")


def _in_batches(encoder: Encoder, images: np.ndarray, batch_size: int, forward, progress: bool | None, verb: str) -> np.ndarray:
    """Run ``forward`` (preprocessed batch -> tensor) over ``images`` in eval mode and without gradients."""
    device = next(encoder.parameters()).device
    parts = []
    starts = range(0, len(images), batch_size)
    show = progress if progress is not None else len(starts) > 20
    modes = [(module, module.training) for module in encoder.modules()]  # each module's own flag, not just the top one
    try:
        encoder.eval()
        for start in tqdm(starts, desc=f"{verb} {len(images):,} images", disable=not show, leave=False):
            batch = images[start : start + batch_size]
            x = preprocess_batch(batch, size=encoder.image_size, mean=encoder.mean, std=encoder.std, channels=encoder.in_channels)
            with torch.no_grad():
                parts.append(forward(x.to(device)).float().cpu().numpy())
    finally:
        for module, training in modes:
            module.training = training
    return np.concatenate(parts)


def conv_maps(encoder: Encoder, images: np.ndarray, batch_size: int = 256, progress: bool | None = None) -> np.ndarray:
    """A CNN's last conv map before global pooling, flattened and L2-normalised: float32 ``[N, C*h*w]``.

    What the "whitened" layer is fitted on and applied to (``Encoder.feature_map``), offered
    on its own so the layer can be taken apart (chapter 04).

    Raises:
        ModelError: for an encoder that is not a CNN or a bad batch size.
        ImageError: for images that are not uint8 ``[N, H, W]``.
    """
    if not isinstance(encoder, Encoder):
        raise ModelError(f"encoder: expected a visual_search.models.Encoder, got {type(encoder).__name__}")
    if encoder.name != "cnn":
        raise ModelError(f"conv_maps: only the cnn has a whitened layer, not {encoder.name!r}")
    batch_size = check_int(batch_size, "batch_size", low=1, error=ModelError)
    _check_images(images)
    return _in_batches(encoder, images, batch_size, encoder.feature_map, progress, "conv map of")


def refit_whitening(encoder: Encoder, images: np.ndarray) -> Encoder:
    """Refit a whitened encoder's whitening on ``images`` at its own size (a no-op for an encoder without one).

    For any encoder whose weights changed (training) or were never fitted (a fresh build from a
    whitened config): the conv map moved, so the old fit, or none, no longer describes it.
    """
    if encoder.whitening is not None:
        fit_whitening(encoder, images, dim=encoder.config["whitening_dim"])
    return encoder


def fit_whitening(encoder: Encoder, images: np.ndarray, dim: int = 64, batch_size: int = 256, progress: bool | None = None) -> Encoder:
    """Fit a CNN's "whitened" retrieval layer on unlabelled images, in place, and make it the retrieval layer.

    The layer is the last conv map before global pooling (``Encoder.feature_map``,
    e.g. 64 channels x 7 x 7 = 3,136 values for the committed CNN), reduced by a PCA
    with whitening (scikit-learn's ``PCA(whiten=True)``) to ``dim`` values. Why: global
    average pooling throws away *where* a pattern is, which raw pixels keep, and the
    map's first principal directions carry most of its variance, so without whitening
    a few of them decide every cosine. No labels are used, so a model trained without
    labels stays self-supervised. Refit after any training: the map changes with the weights.

    Args:
        encoder: a "cnn" ``Encoder``; its ``whitening``, ``retrieval_layer`` ("whitened")
            and ``config`` (``whitening_dim``) are set, so a saved copy loads the same way.
        images: uint8 ``[N, H, W]``, more than ``dim`` of them (the gallery, typically).
        dim: the size of the whitened layer (1..the map's size).
        batch_size: images per forward pass.
        progress: show a tqdm bar (default: only for more than 20 batches).

    Returns:
        The same encoder.

    Raises:
        ModelError: for an encoder that is not a CNN, a bad dim or batch size, too
            few images, or a map with fewer than ``dim`` directions that vary.
        ImageError: for images that are not uint8 ``[N, H, W]``.
    """
    from sklearn.decomposition import PCA

    maps = conv_maps(encoder, images, batch_size, progress)
    dim = check_int(dim, "dim", low=1, high=maps.shape[1], error=ModelError)
    if len(images) <= dim:
        raise ModelError(f"images: fitting a {dim}-d whitening needs more than {dim} images, got {len(images)}")
    pca = PCA(n_components=dim, whiten=True, svd_solver="covariance_eigh").fit(maps)
    varying = int(np.sum(pca.explained_variance_ > 1e-6))  # rows are unit-length: below 1e-6 is float32 noise
    if varying < dim:
        raise ModelError(f"images: the conv map varies in only {varying} directions over these {len(images)} images; use dim <= {varying}")
    whitening = Whitening(maps.shape[1], dim)
    whitening.mean.copy_(torch.from_numpy(pca.mean_.astype(np.float32)))
    whitening.projection.copy_(torch.from_numpy((pca.components_.T / np.sqrt(pca.explained_variance_)).astype(np.float32)))
    whitening.n_fitted.fill_(len(images))
    encoder.whitening = whitening.to(next(encoder.parameters()).device)
    encoder.retrieval_layer = "whitened"
    encoder.config = {**encoder.config, "whitening_dim": dim, "retrieval_layer": "whitened"}
    return encoder


def raw_pixel_embeddings(images: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline: z-score the pixels, flatten them and L2-normalise, float32 ``[N, H*W]``.

    It needs no training, so it is the floor every learned encoder must beat.

    Raises:
        ImageError: for images that are not uint8 ``[N, H, W]``.
    """
    x = preprocess_batch(images).flatten(1)
    return torch.nn.functional.normalize(x, dim=1).numpy()
