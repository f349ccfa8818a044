"""Checks for chapter 05, exact vs approximate nearest neighbours: exact top-k, recall, LSH's odds, IVF lists."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from visual_search.exercises._core import call, checker, expect_close, expect_equal, expect_pair
from visual_search.index.exact import exact_search
from visual_search.index.kmeans import assign
from visual_search.index.measure import recall_at_k


def _pair(got, case: str, hint: str) -> tuple:
    """``got`` must be a pair ``(D, I)``; anything else fails with expected/got."""
    return expect_pair(got, case, "(D, I)", hint)


@checker
def exact_topk(answer: Callable[[np.ndarray, np.ndarray, int], tuple], rng: np.random.Generator) -> int:
    """``answer(base, queries, k)`` -> ``(D, I)``: squared L2 distances and row numbers of the k nearest, nearest first."""
    for i in range(8):
        n, d, nq = int(rng.integers(5, 120)), int(rng.integers(2, 24)), int(rng.integers(1, 6))
        k = int(rng.integers(1, min(n, 12) + 1))
        base = rng.standard_normal((n, d)).astype(np.float32)
        queries = rng.standard_normal((nq, d)).astype(np.float32)
        want_d, want_i = exact_search(queries, base, k, metric="l2")
        case = f"case {i + 1} ({n} base vectors of {d} dims, {nq} queries, k={k})"
        got = _pair(call(answer, base.copy(), queries.copy(), k, case=case), case,
                    "return a pair (D, I), each of shape [len(queries), k]")
        hint = ("per query: d = ((base - q) ** 2).sum(axis=1), then the k smallest, smallest first "
                "(np.argsort(d, kind='stable')[:k]); I holds row numbers of base, not distances")
        ids = np.asarray(got[1])
        if ids.shape != want_i.shape or not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= n:
            expect_equal(ids, want_i, case + ", the ids I", hint)
        # Two base vectors at (nearly) the same distance may come in either order, so an id differs
        # from the reference only where its true distance equals the reference's at that rank.
        true_d = ((base[ids].astype(np.float64) - queries[:, None].astype(np.float64)) ** 2).sum(-1)
        if not (np.allclose(true_d, want_d, rtol=1e-4, atol=1e-4) and all(len(set(row)) == k for row in ids.tolist())):
            expect_equal(ids, want_i, case + ", the ids I", hint)
        expect_close(got[0], want_d, case + ", the distances D",
                     "D holds squared Euclidean distances (no square root), in the same order as I", rtol=1e-3, atol=1e-4)
    return 8


@checker
def ann_recall(answer: Callable[[np.ndarray, np.ndarray], float], rng: np.random.Generator) -> int:
    """``answer(found, truth)`` -> recall@k: the mean over queries of |found row ∩ truth row| / k."""
    for i in range(10):
        nq, k = int(rng.integers(1, 8)), int(rng.integers(1, 11))
        truth = np.stack([rng.choice(50, k, replace=False) for _ in range(nq)]).astype(np.int64)
        found = truth.copy()
        for row in found:
            row[:] = rng.permutation(row)  # the order inside a top k does not matter for recall
            miss = rng.random(k) < rng.uniform(0, 0.8)
            row[miss] = rng.integers(50, 100, int(miss.sum()))  # ids that are not true neighbours
        if i % 3 == 2:
            found[:, -1] = -1  # padding: an index that found fewer than k
        case = f"case {i + 1} ({nq} queries, k={k})"
        expect_close(call(answer, found.copy(), truth.copy(), case=case), recall_at_k(found, truth), case,
                     "for each query count the ids found that are also in the true top k (as sets: order does not "
                     "matter), divide by k, then average over the queries")
    return 10


@checker
def bit_agreement(answer: Callable[[np.ndarray, np.ndarray], float], rng: np.random.Generator) -> int:
    """``answer(u, v)`` -> the probability that one random hyperplane puts u and v on the same side: 1 - theta/pi."""
    for i in range(10):
        d = int(rng.integers(2, 40))
        u = rng.standard_normal(d)
        if i == 0:
            v = 3.0 * u  # parallel: theta = 0 (a cosine just above 1 in floating point must not crash arccos)
        elif i == 1:
            v = -0.5 * u  # opposite: theta = pi
        else:
            v = u + rng.uniform(0.1, 3.0) * rng.standard_normal(d)
        cos = np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1.0, 1.0)
        case = f"case {i + 1} ({d} dims, cosine {cos:.3f})"
        expect_close(call(answer, u.copy(), v.copy(), case=case), 1 - np.arccos(cos) / np.pi, case,
                     "theta = arccos(u.v / (|u| |v|)), clipped to [-1, 1] before arccos; the answer is 1 - theta / pi "
                     "(1 for parallel vectors, 0 for opposite ones), whatever the vectors' lengths", atol=1e-6)
    return 10


@checker
def candidate_probability(answer: Callable[[float, int, int], float], rng: np.random.Generator) -> int:
    """``answer(p, n_bits, n_tables)`` -> the chance two vectors share a bucket in at least one of L tables of b bits."""
    for i in range(10):
        p = float(rng.uniform(0.5, 0.99))
        b, L = int(rng.integers(1, 33)), int(rng.integers(1, 65))
        if i == 0:
            L = 1  # one table: just p ** b
        case = f"case {i + 1} (p={p:.3f} per bit, {b} bits, {L} table{'s' if L > 1 else ''})"
        expect_close(call(answer, p, b, L, case=case), 1 - (1 - p**b) ** L, case,
                     "one table collides only if all b bits agree: p ** b; it misses with 1 - p ** b; all L independent "
                     "tables miss with (1 - p ** b) ** L; so the answer is 1 - (1 - p ** b) ** L", atol=1e-9)
    return 10


@checker
def nearest_centroid(answer: Callable[[np.ndarray, np.ndarray], np.ndarray], rng: np.random.Generator) -> int:
    """``answer(x, centroids)`` -> for each row of x, the index of its nearest centroid (squared L2): IVF's list."""
    for i in range(8):
        n, d, c = int(rng.integers(1, 200)), int(rng.integers(2, 20)), int(rng.integers(1, 40))
        centroids = rng.standard_normal((c, d)).astype(np.float32) * 2
        x = (centroids[rng.integers(c, size=n)] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)
        case = f"case {i + 1} ({n} vectors of {d} dims, {c} centroids)"
        got = call(answer, x.copy(), centroids.copy(), case=case)
        expect_equal(np.asarray(got), assign(x, centroids)[0], case,
                     "return one int per row of x, shape [len(x)]: argmin over the centroids of ||x - c||^2 "
                     "(axis=1 of the [n, nlist] distance matrix), not the distance itself")
    return 8
