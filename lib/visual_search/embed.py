"""The embedding step of the pipeline: uint8 images in, float32 unit vectors out.

``embed(encoder, images)`` applies the encoder's own preprocessing (its input
size, channels, mean and std), runs it in batches without gradients, and
returns a float32 ``[N, D]`` array, ready for an index. Offline it embeds the
whole gallery; online, the embedding service calls it on one query.

``raw_pixel_embeddings(images)`` is the baseline that needs no model: the z-scored
pixels themselves, flattened and L2-normalised. Every learned encoder must beat it.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm  # plain text bars: work in a terminal and in Jupyter without ipywidgets

from visual_search._checks import check_int
from visual_search.models import LAYERS, Encoder, ModelError
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
        layer: "pooled", "embedding" or "head" (default: the encoder's ``retrieval_layer``);
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
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ImageError(f"images: expected a uint8 array [N, H, W], got {got}")
    if len(images) == 0:
        raise ImageError("images: empty batch, nothing to embed")
    device = next(encoder.parameters()).device
    parts = []
    starts = range(0, len(images), batch_size)
    show = progress if progress is not None else len(starts) > 20
    modes = [(module, module.training) for module in encoder.modules()]  # each module's own flag, not just the top one
    try:
        encoder.eval()
        for start in tqdm(starts, desc=f"embedding {len(images):,} images", disable=not show, leave=False):
            batch = images[start : start + batch_size]
            x = preprocess_batch(batch, size=encoder.image_size, mean=encoder.mean, std=encoder.std, channels=encoder.in_channels)
            parts.append(encoder(x.to(device), layer=layer).float().cpu().numpy())
    finally:
        for module, training in modes:
            module.training = training
    return np.concatenate(parts)


def raw_pixel_embeddings(images: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline: z-score the pixels, flatten them and L2-normalise, float32 ``[N, H*W]``.

    It needs no training, so it is the floor every learned encoder must beat.

    Raises:
        ImageError: for images that are not uint8 ``[N, H, W]``.
    """
    x = preprocess_batch(images).flatten(1)
    return torch.nn.functional.normalize(x, dim=1).numpy()
