"""Checks for chapter 10, scaling to billions: memory shards, the exact merge, the growth fit, replicas."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from visual_search.exercises._core import call, checker, expect_close, expect_equal, expect_pair
from visual_search.index.kernels import merge_topk
from visual_search.scale import capacity

KINDS = ("exact", "ivf", "ivfpq:m=16", "ivfpq:m=8", "hnsw")


def _plan_case(rng: np.random.Generator) -> tuple[dict, str]:
    images = float(10 ** rng.uniform(8, 11.5))
    index = KINDS[int(rng.integers(len(KINDS)))]
    ram = float(rng.choice([64, 128, 256, 512]))
    qps = float(rng.choice([1_000, 5_000, 20_000, 50_000]))
    fraction = round(float(rng.uniform(0.5, 0.9)), 2)
    p = capacity.plan(images, 64, index, qps, ram, memory_fraction=fraction)
    return p, f"{index} at {images:.3g} images, {ram:g} GiB machines, {fraction:g} usable, {qps:,.0f} QPS"


@checker
def shards_for_memory(answer: Callable[[float, float, float, float], int], rng: np.random.Generator) -> int:
    """``answer(images, bytes_per_vector, ram_gib, usable_fraction)`` -> the shards RAM alone requires."""
    for i in range(8):
        p, case = _plan_case(rng)
        got = call(answer, p["images"], p["bytes_per_vector"], p["ram_gb"], p["assumptions"]["memory_fraction"], case=f"case {i + 1} ({case})")
        expect_equal(got, p["shards_for_memory"], f"case {i + 1} ({case})",
                     "index bytes = images x bytes per vector; one machine holds ram_gib x 2**30 x usable_fraction bytes; "
                     "round up (math.ceil), and never fewer than 1 shard")
    return 8


@checker
def merge(answer: Callable[[list, int], tuple], rng: np.random.Generator) -> int:
    """``answer(parts, k)``: per-shard ``(D, I)`` pairs (squared L2, ascending) -> the global top-k ``(D, I)``."""
    for i in range(10):
        nq, k, n_shards = int(rng.integers(1, 5)), int(rng.integers(1, 6)), int(rng.integers(1, 5))
        parts = []
        for shard in range(n_shards):
            d = np.sort(rng.random((nq, k)).astype(np.float32), axis=1)
            parts.append((d, (rng.permutation(1000)[: nq * k].reshape(nq, k) * 10 + shard).astype(np.int64)))
        want_d, want_i = merge_topk([p[0] for p in parts], [p[1] for p in parts], k)
        case = f"case {i + 1} ({n_shards} shards, {nq} queries, k={k})"
        got = call(answer, [(d.copy(), ids.copy()) for d, ids in parts], k, case=case)
        expect_pair(got, case, "(D, I)", "return a pair (D, I), each of shape [nq, k]")
        expect_equal(np.asarray(got[1]), want_i, case + ", the ids I",
                     "concatenate the shards' lists along axis 1, then keep each query's k smallest distances "
                     "(np.argsort(..., axis=1, kind='stable')[:, :k]) and take the ids at the same positions")
        expect_close(got[0], want_d, case + ", the distances D")
    return 10


@checker
def qps_factor(answer: Callable[[float, float], float], rng: np.random.Generator) -> int:
    """``answer(exponent, growth)`` -> the factor one core's QPS changes by when its shard grows ``growth``-fold."""
    for i in range(8):
        exponent, growth = float(rng.uniform(-1.2, 0.0)), float(rng.choice([2, 10, 100, 1000]))
        case = f"case {i + 1} (exponent {exponent:.3f}, shard {growth:g}x larger)"
        expect_close(call(answer, exponent, growth, case=case), growth**exponent, case,
                     "qps ~ N**exponent, so qps(growth N) / qps(N) = growth**exponent (below 1: a larger shard is slower)")
    return 8


@checker
def replicas(answer: Callable[[float, float, int, float, int], int], rng: np.random.Generator) -> int:
    """``answer(qps, qps_per_core, cores, utilisation, min_replicas)`` -> replicas of the whole shard set."""
    for i in range(8):
        p, case = _plan_case(rng)
        a = p["assumptions"]
        got = call(answer, p["qps_target"], p["qps_per_core"], a["cores"], a["utilisation"], a["min_replicas"], case=f"case {i + 1} ({case})")
        expect_equal(got, p["replicas"], f"case {i + 1} ({case})",
                     "one replica serves qps_per_core x cores x utilisation queries/s (every query visits every shard once); "
                     "divide, round up, and keep at least min_replicas")
    return 8
