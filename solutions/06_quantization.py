"""Solutions to chapter 06's checked exercises (notebooks/06_quantization.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch06.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

import numpy as np


def pq_encode(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Cut x into m slices; in each, the index of the nearest centroid of that slice's codebook."""
    m, _, dsub = codebooks.shape
    codes = np.empty((len(x), m), np.int64)
    for j in range(m):
        part = x[:, j * dsub:(j + 1) * dsub]  # [n, dsub]
        d = ((part[:, None, :] - codebooks[j][None, :, :]) ** 2).sum(axis=2)  # [n, ksub]
        codes[:, j] = d.argmin(axis=1)
    return codes


def adc_tables(q: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Per query and slice, the squared distance from the query's slice to every centroid of that slice."""
    m, _, dsub = codebooks.shape
    parts = q.reshape(len(q), m, dsub)  # [nq, m, dsub]
    return ((parts[:, :, None, :] - codebooks[None]) ** 2).sum(axis=3)  # [nq, m, ksub]


def adc_distance(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Sum over slices of the table entry each code picks: m look-ups per stored vector."""
    m = table.shape[0]
    return table[np.arange(m), codes.astype(np.int64)].sum(axis=1)


def pq_code_bytes(m: int, nbits: int) -> int:
    """m codes of nbits bits, packed, rounded up to whole bytes."""
    return (m * nbits + 7) // 8


def compression_ratio(dim: int, m: int, nbits: int, id_bytes: int) -> float:
    """(float32 vector + id) over (packed PQ code + id): the id caps the saving."""
    return (4 * dim + id_bytes) / (pq_code_bytes(m, nbits) + id_bytes)
