"""Small plotting helpers shared by the notebooks and benchmarks (matplotlib only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from visual_search.config import figures_dir


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    ncols: int = 10,
    size: float = 1.3,
    cmap: str = "gray",
    suptitle: str | None = None,
    title_colors: Sequence[str] | None = None,
):
    """Show images in a grid (grayscale by default) and return the figure.

    Args:
        images: ``[H, W]`` or ``[H, W, 3]`` arrays (uint8, or floats in any range).
        titles: one short title per image.
        ncols: images per row.
        size: inches per image.
        cmap: colour map for 2-D images.
        suptitle: a title over the whole grid.
        title_colors: one matplotlib colour per title (e.g. green for a relevant result).
    """
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.15), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (ax, img) in enumerate(zip(axes.ravel(), images)):
        ax.imshow(img, cmap=cmap if np.ndim(img) == 2 else None)
        if titles is not None:
            colour = {"color": title_colors[i]} if title_colors is not None else {}
            ax.set_title(titles[i], fontsize=8, **colour)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def save_figure(fig, name: str, dpi: int = 110) -> Path:
    """Save a figure as ``<figures dir>/<name>.png`` and return the path."""
    path = figures_dir() / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
