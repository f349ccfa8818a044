"""Solutions to chapter 12's checked exercises (notebooks/12_mock_interview.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch12.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations


def embedding_storage_tb(images: float, dim: int, bytes_per_number: int) -> float:
    """One copy of the raw embeddings: images x dim x bytes, in terabytes of 10**12 bytes."""
    return images * dim * bytes_per_number / 1e12


def slow_query_share(p_slow: float, shards: int) -> float:
    """A query is fast only if all of its shards are: 1 - (1 - p)^S."""
    return 1 - (1 - p_slow) ** shards


def gpu_days(images: float, images_per_s_per_gpu: float) -> float:
    """Seconds of one GPU to embed every image once, in days."""
    return images / images_per_s_per_gpu / 86_400
