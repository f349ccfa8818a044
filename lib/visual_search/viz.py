"""Plotting helpers shared by the notebooks and benchmarks (matplotlib only).

``image_grid`` and ``save_figure`` for any chapter; ``plot_scores`` draws the
offline metrics of ``evalset.score_rankings`` (chapter 07 and the baseline
benchmark); ``plot_kdtree_dimensions`` draws ``index.measure.kdtree_dimensions``
(chapter 05 and the ANN benchmark). The plots take plain dicts and lists, so
this module is a leaf: it needs nothing from the library but the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

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


def plot_scores(scores: dict[str, dict], title: str, oracle: str = "ideal (oracle)"):
    """Bars per metric for each method, the oracle as dashed ceilings; nDCG@k against k. Returns the figure.

    Args:
        scores: ``{method: {metric: value, ..., "nDCG@k": {k: value}}}``, as
            ``evalset.score_rankings`` returns it.
        title: the bar chart's title.
        oracle: the method drawn as ceilings rather than bars (``evalset.ORACLE``).
    """
    names = [m for m in scores[oracle] if m != "nDCG@k"]
    methods = [m for m in scores if m != oracle]
    ks = list(scores[oracle]["nDCG@k"])
    fig, (bars, curve) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(methods)
    x = np.arange(len(names))
    for i, method in enumerate(methods):
        drawn = bars.bar(x + (i - (len(methods) - 1) / 2) * width, [scores[method][m] for m in names], width, label=method)
        bars.bar_label(drawn, fmt="%.2f", fontsize=7, padding=1)
        curve.plot([int(k) for k in ks], [scores[method]["nDCG@k"][k] for k in ks], marker="o", label=method)
    bars.hlines([scores[oracle][m] for m in names], x - 0.45, x + 0.45, colors="black", linestyles="dashed", label="best possible (oracle)")
    bars.set_xticks(x, names)
    bars.set_ylim(0, 1.22)
    bars.set_title(title)
    bars.legend(fontsize=8, loc="upper center", ncol=len(methods) + 1)
    curve.set_xscale("log")
    curve.set_xticks([int(k) for k in ks], [str(k) for k in ks])
    curve.set_xlabel("k")
    curve.set_ylabel("mean nDCG@k")
    curve.set_ylim(0, 1)
    curve.set_title("nDCG@k on 0-5 graded relevance (oracle = 1)")
    curve.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_kdtree_dimensions(rows: list[dict]):
    """Speed-up over exact search, and leaves scanned per query, against dimension. Returns the figure.

    ``rows`` as ``index.measure.kdtree_dimensions`` returns them (``dim``,
    ``kdtree_speedup``, ``sklearn_speedup``, ``leaves_visited``, ``leaves``).
    """
    fig, (speed, leaves) = plt.subplots(1, 2, figsize=(12, 4))
    dims = [r["dim"] for r in rows]
    speed.plot(dims, [r["kdtree_speedup"] for r in rows], "-o", label="KD-tree (written here)")
    speed.plot(dims, [r["sklearn_speedup"] for r in rows], "--s", label="scikit-learn KD-tree")
    speed.axhline(1, color="k", linewidth=0.8)
    speed.set(xscale="log", yscale="log", xlabel="dimension (PCA of Fashion-MNIST pixels)", ylabel="QPS / exact search QPS (log)",
              title="KD-tree speed-up over exact search (above 1 = faster)")
    speed.legend()
    leaves.plot(dims, [r["leaves_visited"] for r in rows], "-o")
    leaves.set(xscale="log", yscale="log", xlabel="dimension", ylabel="leaves scanned per query (log)",
               title=f"Pruning weakens: leaves scanned of {rows[0]['leaves']:,}")
    for ax in (speed, leaves):
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def show_markdown(text: str) -> str:
    """Show ``text`` as Markdown in a notebook (plain text elsewhere) and return it.

    The course's prose quotes numbers from results through this helper, so a sentence such as
    ``show_markdown(f"P@1 rises to {p1:.3f}")`` can never drift from the run that printed it.
    """
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython ships with the course's stack
        print(text)
        return text
    if get_ipython() is None:
        print(text)
    else:
        display(Markdown(text))
    return text
