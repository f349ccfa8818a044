"""Checks for chapter 06, quantisation: PQ encoding, ADC tables and distances, code sizes and compression."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from visual_search.exercises._core import call, checker, expect_close, expect_equal
from visual_search.index.pq import ProductQuantizer


def _random_pq(rng: np.random.Generator, max_m: int = 8) -> tuple[ProductQuantizer, str]:
    """A ProductQuantizer with random codebooks (no training needed to encode or build tables)."""
    m, dsub, nbits = int(rng.integers(1, max_m + 1)), int(rng.integers(1, 6)), int(rng.integers(1, 9))
    pq = ProductQuantizer(m * dsub, m=m, nbits=nbits)
    pq.codebooks = rng.standard_normal((m, 2**nbits, dsub)).astype(np.float32)
    return pq, f"dim {m * dsub}, m={m} sub-quantizers of {dsub} dims, nbits={nbits} ({2**nbits} centroids each)"


def _code_size(dim: int, m: int, nbits: int) -> int:
    import faiss  # imported here: only this check needs it, and importing the checks should stay cheap

    return int(faiss.ProductQuantizer(dim, m, nbits).code_size)


@checker
def pq_encode(answer: Callable[[np.ndarray, np.ndarray], np.ndarray], rng: np.random.Generator) -> int:
    """``answer(x, codebooks)`` -> codes ``[n, m]``: in each slice, the nearest centroid of that slice's codebook."""
    for i in range(8):
        pq, setting = _random_pq(rng)
        x = rng.standard_normal((int(rng.integers(1, 60)), pq.dim)).astype(np.float32)
        case = f"case {i + 1} ({len(x)} vectors, {setting})"
        got = call(answer, x.copy(), pq.codebooks.copy(), case=case)
        want = pq.encode(x).astype(np.int64)
        hint = ("codebooks has shape [m, 2**nbits, dim // m]; slice j of x is x[:, j*dsub:(j+1)*dsub]; its code is "
                "the argmin over codebooks[j] of the squared distance; return shape [n, m], one column per slice")
        codes = np.asarray(got)
        if codes.shape != want.shape or not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0 or codes.max() >= 2**pq.nbits:
            expect_equal(got, want, case, hint)
        # Any nearest centroid is right: with 1-d slices and 256 centroids, near-ties are common and
        # float32 rounding may pick either. So compare distances (in float64), not code numbers.
        dsub = pq.dim // pq.m
        for j in range(pq.m):
            d = ((x[:, None, j * dsub:(j + 1) * dsub].astype(np.float64) - pq.codebooks[j][None].astype(np.float64)) ** 2).sum(-1)
            best = d.min(axis=1)
            chosen = d[np.arange(len(x)), codes[:, j]]
            bad = np.flatnonzero(chosen > best + 1e-5 * (1 + best))
            if bad.size:
                r = int(bad[0])
                expect_equal(codes[r], want[r], f"{case}, vector {r}, slice {j} (its code is {int(codes[r, j])} at squared distance "
                             f"{chosen[r]:.5g}; the nearest centroid is at {best[r]:.5g})", hint)
    return 8


@checker
def adc_tables(answer: Callable[[np.ndarray, np.ndarray], np.ndarray], rng: np.random.Generator) -> int:
    """``answer(q, codebooks)`` -> tables ``[nq, m, 2**nbits]``: squared L2 from each query slice to each centroid."""
    for i in range(8):
        pq, setting = _random_pq(rng)
        q = rng.standard_normal((int(rng.integers(1, 5)), pq.dim)).astype(np.float32)
        case = f"case {i + 1} ({len(q)} queries, {setting})"
        expect_close(call(answer, q.copy(), pq.codebooks.copy(), case=case), pq.tables(q, "l2"), case,
                     "tables[i, j, c] = ||q_i[j*dsub:(j+1)*dsub] - codebooks[j, c]||^2 (squared, no square root); "
                     "shape [nq, m, 2**nbits]", rtol=1e-3, atol=1e-4)
    return 8


@checker
def adc_distance(answer: Callable[[np.ndarray, np.ndarray], np.ndarray], rng: np.random.Generator) -> int:
    """``answer(table, codes)`` -> ``[n]``: one query's ADC distance to each code, the sum of m table entries."""
    for i in range(8):
        pq, setting = _random_pq(rng)
        q = rng.standard_normal((1, pq.dim)).astype(np.float32)
        table = pq.tables(q, "l2")[0]  # [m, ksub]
        codes = rng.integers(0, pq.ksub, (int(rng.integers(1, 80)), pq.m)).astype(np.uint8)
        case = f"case {i + 1} ({len(codes)} codes, {setting})"
        expect_close(call(answer, table.copy(), codes.copy(), case=case), pq.adc(table[None], codes)[0], case,
                     "table has shape [m, 2**nbits] and codes [n, m]; the distance of code row c is "
                     "sum over j of table[j, c[j]] (m look-ups, no vector arithmetic); return shape [n]",
                     rtol=1e-4, atol=1e-5)
    return 8


@checker
def pq_code_bytes(answer: Callable[[int, int], int], rng: np.random.Generator) -> int:
    """``answer(m, nbits)`` -> bytes of one PQ code when the m codes of nbits bits are packed: Faiss's ``code_size``."""
    settings = [(8, 8), (16, 4), (3, 5)] + [(int(rng.integers(1, 129)), int(rng.integers(1, 13))) for _ in range(7)]
    for i, (m, nbits) in enumerate(settings):
        case = f"case {i + 1} (m={m}, nbits={nbits})"
        expect_equal(call(answer, m, nbits, case=case), _code_size(4 * m, m, nbits), case,
                     "m codes of nbits bits are m * nbits bits, packed into whole bytes: round up, "
                     "(m * nbits + 7) // 8 (so m=3, nbits=5 is 15 bits, 2 bytes)")
    return 10


@checker
def compression_ratio(answer: Callable[[int, int, int, int], float], rng: np.random.Generator) -> int:
    """``answer(dim, m, nbits, id_bytes)`` -> (float32 vector + id) bytes over (packed PQ code + id) bytes."""
    for i in range(10):
        m = int(rng.choice([4, 8, 16, 32, 64]))
        dim, nbits = m * int(rng.choice([1, 2, 4, 8, 12])), int(rng.choice([4, 6, 8]))
        id_bytes = 0 if i == 0 else int(rng.choice([0, 4, 8]))
        want = (4 * dim + id_bytes) / (_code_size(dim, m, nbits) + id_bytes)
        case = f"case {i + 1} (dim={dim}, m={m}, nbits={nbits}, {id_bytes}-byte ids)"
        expect_close(call(answer, dim, m, nbits, id_bytes, case=case), want, case,
                     "float32 stores 4 * dim bytes; a PQ code is (m * nbits + 7) // 8 bytes; both also store the id, "
                     "so the ratio is (4 * dim + id_bytes) / (code bytes + id_bytes)", rtol=1e-9)
    return 10
