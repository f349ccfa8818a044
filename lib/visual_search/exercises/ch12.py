"""Checks for chapter 12, the mock interview: back-of-the-envelope numbers an interviewer expects on the spot."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from visual_search.exercises._core import call, checker, expect_close
from visual_search.scale import capacity


@checker
def embedding_storage_tb(answer: Callable[[float, int, int], float], rng: np.random.Generator) -> int:
    """``answer(images, dim, bytes_per_number)`` -> terabytes (1e12 bytes) of one copy of the raw embeddings."""
    for i in range(8):
        images, dim = float(10 ** rng.uniform(9, 11.5)), int(rng.choice([32, 64, 128, 256, 512]))
        nbytes = int(rng.choice([1, 2, 4]))
        want = capacity.plan(images, dim, "exact", 1, 256, storage_copies=1)["embedding_bytes"] * nbytes / 4 / 1e12
        case = f"case {i + 1} ({images:.3g} images, {dim}-d, {nbytes} bytes a number)"
        expect_close(call(answer, images, dim, nbytes, case=case), want, case,
                     "images x dim x bytes_per_number bytes, divided by 1e12 (a terabyte here is 10**12 bytes, not 2**40)")
    return 8


@checker
def slow_query_share(answer: Callable[[float, int], float], rng: np.random.Generator) -> int:
    """``answer(p_slow, shards)`` -> the share of queries that wait on at least one slow shard (shards independent)."""
    for i in range(8):
        p, shards = float(rng.uniform(0.0001, 0.05)), int(rng.choice([1, 10, 100, 1000]))
        # the closed form, checked against a simulation of the fan-out so the check tests the idea, not a formula
        sim = (np.random.default_rng(i).random((20_000, min(shards, 100))) < p).any(axis=1).mean() if shards <= 100 else None
        want = 1 - (1 - p) ** shards
        assert sim is None or abs(sim - want) < 0.02
        case = f"case {i + 1} (each shard slow with probability {p:.4f}, {shards} shards)"
        expect_close(call(answer, p, shards, case=case), want, case,
                     "a query is fast only if every shard is fast: 1 - (1 - p_slow) ** shards; with many shards the "
                     "tail of one machine becomes the median of the fan-out")
    return 8


@checker
def gpu_days(answer: Callable[[float, float], float], rng: np.random.Generator) -> int:
    """``answer(images, images_per_s_per_gpu)`` -> GPU-days to embed the gallery once."""
    for i in range(8):
        images, rate = float(10 ** rng.uniform(9, 11.5)), float(rng.choice([2_000, 10_000, 20_000, 50_000]))
        want = capacity.plan(images, 64, "exact", 1, 256, gpu_images_per_s=rate)["embed_gpu_days"]
        case = f"case {i + 1} ({images:.3g} images at {rate:,.0f} images/s per GPU)"
        expect_close(call(answer, images, rate, case=case), want, case, "images / rate seconds, / 86,400 seconds a day")
    return 8
