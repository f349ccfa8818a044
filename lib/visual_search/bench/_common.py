"""What every benchmark writes the same way: the JSON file, the figure paths, the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from visual_search import config


def machine(**extra) -> dict:
    """The interpreter, processor and core count (plus ``extra``): numbers are only comparable on one machine."""
    return {"python": platform.python_version(), "processor": platform.machine(), "cpus": os.cpu_count(), **extra}


def relative(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root, as the JSON records it (README links work)."""
    return os.path.relpath(path, config.REPO_ROOT)


def write_result(name: str, out: dict) -> Path:
    """Write ``out`` as ``<results dir>/<name>.json`` (``config.results_dir()``: ``results/``, or
    ``build/results-fast/`` in fast mode, or ``VISUAL_SEARCH_RESULTS``) and return the path."""
    path = config.results_dir() / f"{name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path
