"""Where things live and which mode the course runs in.

Every other module asks this one for paths instead of hard-coding them, so a
student can move the data, the figures or the cache with one environment
variable and nothing else changes.

Environment variables:
    VISUAL_SEARCH_FAST: "1" runs the same code on small data with few steps
        (CI and ``make test`` set it). Anything else, or unset, is full mode.
    VISUAL_SEARCH_DATA: a folder holding the four Fashion-MNIST IDX files;
        searched before any other source.
    VISUAL_SEARCH_CACHE: where downloads go (default: ``<repo>/.cache``).
    VISUAL_SEARCH_FIGURES: where notebooks and benchmarks save PNGs
        (default: ``<repo>/figures`` in full mode, ``<repo>/build/figures-fast``
        in fast mode, so a fast run never overwrites the committed figures).
    VISUAL_SEARCH_RESULTS: where benchmarks write their JSON (default:
        ``<repo>/results`` in full mode, ``<repo>/build/results-fast`` in fast mode).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (``lib/visual_search/config.py`` is two folders down).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Small committed datasets: the sample and the graded evaluation set.
DATASETS_DIR = REPO_ROOT / "datasets"
#: Benchmark JSON output.
RESULTS_DIR = REPO_ROOT / "results"
#: Where the Debian package ``dataset-fashion-mnist`` installs its files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def is_fast() -> bool:
    """Return True when ``VISUAL_SEARCH_FAST=1``: small data, few steps, same code."""
    return os.environ.get("VISUAL_SEARCH_FAST", "0").strip() == "1"


def cache_dir() -> Path:
    """Return the git-ignored folder for big downloads (whoever writes there creates it)."""
    return Path(os.environ.get("VISUAL_SEARCH_CACHE", REPO_ROOT / ".cache"))


def figures_dir() -> Path:
    """Return the folder figures are saved to, creating it if needed.

    Full mode writes to ``figures/`` (what README.md shows); fast mode writes to
    ``build/figures-fast`` so tests never touch committed files.
    """
    default = REPO_ROOT / ("build/figures-fast" if is_fast() else "figures")
    path = Path(os.environ.get("VISUAL_SEARCH_FIGURES", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """Return the folder benchmark JSON is written to, creating it if needed.

    Full mode writes to ``results/`` (committed); fast mode writes to
    ``build/results-fast`` so a test or a CI run never overwrites a committed result.
    """
    default = REPO_ROOT / "build/results-fast" if is_fast() else RESULTS_DIR
    path = Path(os.environ.get("VISUAL_SEARCH_RESULTS", default))
    path.mkdir(parents=True, exist_ok=True)
    return path
