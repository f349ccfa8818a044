"""Checks for chapter 07, offline metrics: the five metrics by hand, two variants, and a bootstrap interval.

Every case is a small random ranked list (ids 0..14, sometimes with repeats, sometimes shorter
than k) with a random relevant set or 0-5 grades; the expected value comes from
``visual_search.metrics``, so an answer passes when it follows the library's conventions
(section 7.2.7): repeats score once, positions past the end of the list are misses, and a
query with nothing relevant scores 0.0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from visual_search import metrics
from visual_search.exercises._core import call, checker, expect_close

POOL = 15  # ids are 0..14


def _ranked(rng: np.random.Generator, repeats: bool) -> list[int]:
    """A ranked list of 1..10 ids; with ``repeats``, ids may occur more than once."""
    n = int(rng.integers(1, 11))
    return [int(i) for i in rng.choice(POOL, size=n, replace=repeats)]


def _relevant(rng: np.random.Generator, empty: bool = False) -> set[int]:
    if empty:
        return set()
    return {int(i) for i in rng.choice(POOL, size=int(rng.integers(1, 8)), replace=False)}


def _grades(rng: np.random.Generator, zero: bool = False) -> dict[int, int]:
    ids = rng.choice(POOL, size=int(rng.integers(1, 10)), replace=False)
    return {int(i): 0 if zero else int(rng.choice([0, 1, 3, 5, 2, 4])) for i in ids}


def _binary_cases(rng: np.random.Generator, n: int, with_k: bool):
    """(ranked, relevant, k, description): plain lists first, then repeats, a k beyond the list, no relevant items."""
    for i in range(n):
        repeats = i >= n // 2
        ranked = _ranked(rng, repeats)
        relevant = _relevant(rng, empty=(i == n - 1))
        k = int(rng.integers(1, 13)) if with_k else None
        if with_k and i == n - 2:
            k = len(ranked) + int(rng.integers(1, 4))  # deeper than the list
        what = f"ranked={ranked}, relevant={sorted(relevant)}" + (f", k={k}" if with_k else "")
        yield ranked, relevant, k, f"case {i + 1} ({what})"


def _edge_hint(ranked: list, relevant: set, k: int | None) -> str:
    notes = []
    if len(set(ranked)) < len(ranked):
        notes.append("an id repeated in the list scores only at its first position (later copies are misses that still use up a position)")
    if k is not None and k > len(ranked):
        notes.append("positions past the end of the list are misses")
    if not relevant:
        notes.append("with no relevant items the metric is 0.0")
    return "; ".join(notes)


@checker
def reciprocal_rank(answer: Callable[[list, set], float], rng: np.random.Generator) -> int:
    """``answer(ranked, relevant)`` -> 1 / position of the first relevant id (positions start at 1), or 0.0."""
    n = 10
    for ranked, relevant, _, case in _binary_cases(rng, n, with_k=False):
        got = call(answer, list(ranked), set(relevant), case=case)
        hint = "positions start at 1, so a hit at index i of the list gives 1 / (i + 1); no relevant id in the list gives 0.0"
        expect_close(got, metrics.reciprocal_rank(ranked, relevant), case, "; ".join(filter(None, [hint, _edge_hint(ranked, relevant, None)])))
    return n


@checker
def precision_at_k(answer: Callable[[list, set, int], float], rng: np.random.Generator) -> int:
    """``answer(ranked, relevant, k)`` -> (relevant ids among the first k positions) / k."""
    n = 12
    for ranked, relevant, k, case in _binary_cases(rng, n, with_k=True):
        got = call(answer, list(ranked), set(relevant), k, case=case)
        hint = "count the distinct relevant ids in ranked[:k] and divide by k, not by len(ranked[:k])"
        expect_close(got, metrics.precision_at_k(ranked, relevant, k), case, "; ".join(filter(None, [hint, _edge_hint(ranked, relevant, k)])))
    return n


@checker
def average_precision(answer: Callable[[list, set, int | None], float], rng: np.random.Generator) -> int:
    """``answer(ranked, relevant, k=None)`` -> the sum of P@i over relevant positions i <= k, over #relevant."""
    n = 12
    for i, (ranked, relevant, k, case) in enumerate(_binary_cases(rng, n, with_k=True)):
        if i % 3 == 0:  # the whole list
            k, case = None, case.replace(f", k={k})", ", k=None)")
        got = call(answer, list(ranked), set(relevant), k, case=case)
        hint = ("at each position i (1-based, i <= k) that holds a new relevant id, add (hits so far) / i; divide the sum by "
                "len(relevant), the relevant items in total, returned or not")
        expect_close(got, metrics.average_precision(ranked, relevant, k), case, "; ".join(filter(None, [hint, _edge_hint(ranked, relevant, k)])))
    return n


def _grade_cases(rng: np.random.Generator, n: int):
    for i in range(n):
        ranked = _ranked(rng, repeats=i >= n // 2)
        grades = _grades(rng, zero=(i == n - 1))
        k = len(ranked) + 2 if i == n - 2 else int(rng.integers(1, 11))
        yield ranked, grades, k, f"case {i + 1} (ranked={ranked}, grades={grades}, k={k})"


def _grade_hint(ranked: list, grades: dict, k: int) -> str:
    notes = ["ungraded ids have gain 0", "IDCG@k sorts ALL graded ids by grade (returned or not), then takes the first k"]
    if len(set(ranked[:k])) < len(ranked[:k]):
        notes.append("a repeated id has gain 0 after its first position")
    if not any(grades.values()):
        notes.append("when every grade is 0, IDCG is 0 and the answer is 0.0")
    return "; ".join(notes)


@checker
def ndcg_at_k(answer: Callable[[list, dict, int], float], rng: np.random.Generator) -> int:
    """``answer(ranked, grades, k)`` -> DCG@k / IDCG@k with gain = grade and discount log2(i + 1)."""
    n = 12
    for ranked, grades, k, case in _grade_cases(rng, n):
        got = call(answer, list(ranked), dict(grades), k, case=case)
        expect_close(got, metrics.ndcg_at_k(ranked, grades, k), case,
                     "DCG@k = sum over positions i = 1..k of grade_i / log2(i + 1); " + _grade_hint(ranked, grades, k))
    return n


def _ndcg_exp(ranked: list, grades: dict, k: int) -> float:
    """nDCG@k with the gain 2**grade - 1, from the library's dcg_at_k."""
    ideal = metrics.dcg_at_k(sorted((2**g - 1 for g in grades.values()), reverse=True), k)
    if ideal == 0:
        return 0.0
    seen: set = set()
    gains = []
    for item in ranked[:k]:
        gains.append(0 if item in seen else 2 ** grades.get(item, 0) - 1)
        seen.add(item)
    return metrics.dcg_at_k(gains, k) / ideal


@checker
def ndcg_exp_at_k(answer: Callable[[list, dict, int], float], rng: np.random.Generator) -> int:
    """``answer(ranked, grades, k)`` -> nDCG@k with the exponential gain 2**grade - 1."""
    n = 12
    for ranked, grades, k, case in _grade_cases(rng, n):
        got = call(answer, list(ranked), dict(grades), k, case=case)
        expect_close(got, _ndcg_exp(ranked, grades, k), case,
                     "the gain is 2**grade - 1 (grade 0 -> 0, grade 5 -> 31) in BOTH the DCG and the ideal DCG; " + _grade_hint(ranked, grades, k))
    return n


@checker
def ap_at_k_min(answer: Callable[[list, set, int], float], rng: np.random.Generator) -> int:
    """``answer(ranked, relevant, k)`` -> AP@k divided by min(k, #relevant) instead of #relevant."""
    n = 12
    for ranked, relevant, k, case in _binary_cases(rng, n, with_k=True):
        want = metrics.average_precision(ranked, relevant, k) * len(relevant) / min(k, len(relevant)) if relevant else 0.0
        got = call(answer, list(ranked), set(relevant), k, case=case)
        hint = ("the numerator is AP@k's (the sum of P@i over relevant positions i <= k); only the denominator changes, "
                "to min(k, len(relevant)), so a perfect top k scores 1.0")
        expect_close(got, want, case, "; ".join(filter(None, [hint, _edge_hint(ranked, relevant, k)])))
    return n


def _bootstrap(per_query: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_query), size=(n_boot, len(per_query)))
    low, high = np.percentile(per_query[idx].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


@checker
def bootstrap_ci(answer: Callable[[np.ndarray, int, int], tuple], rng: np.random.Generator) -> int:
    """``answer(per_query, n_boot, seed)`` -> the percentile 95% interval (low, high) of the mean over queries."""
    n = 6
    for i in range(n):
        size = int(rng.integers(5, 80))
        per_query = rng.beta(2, 5, size=size) if i % 2 == 0 else rng.normal(0.05, 0.2, size=size)  # scores or paired differences
        n_boot, seed = int(rng.choice([200, 500, 1000])), int(rng.integers(0, 10_000))
        case = f"case {i + 1} ({size} per-query values with mean {per_query.mean():.4f}, n_boot={n_boot}, seed={seed})"
        got = call(answer, per_query.copy(), n_boot, seed, case=case)
        expect_close(got, _bootstrap(per_query, n_boot, seed), case,
                     "return (low, high); draw every resample at once with rng = np.random.default_rng(seed) and "
                     "rng.integers(0, n, size=(n_boot, n)) (indices WITH replacement), average each row, and take "
                     "np.percentile(means, [2.5, 97.5])")
    return n
