"""Solutions to chapter 10's checked exercises (notebooks/10_scaling_to_billions.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch10.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

import math

import numpy as np


def shards_for_memory(images: float, bytes_per_vector: float, ram_gib: float, usable_fraction: float) -> int:
    """RAM alone: the index's bytes over what one machine may hold, rounded up."""
    index_bytes = images * bytes_per_vector
    per_machine = ram_gib * 2**30 * usable_fraction
    return max(1, math.ceil(index_bytes / per_machine))


def merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The global top k of per-shard top-k lists: concatenate, then a stable sort per query."""
    distances = np.concatenate([d for d, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(ids, order, axis=1)


def qps_factor(exponent: float, growth: float) -> float:
    """qps ~ N**exponent, so a shard ``growth`` times larger serves growth**exponent times the QPS."""
    return growth**exponent


def replicas(qps: float, qps_per_core: float, cores: int, utilisation: float, min_replicas: int) -> int:
    """Each replica holds every shard and serves qps_per_core x cores x utilisation queries/s."""
    return max(min_replicas, math.ceil(qps / (qps_per_core * cores * utilisation)))
