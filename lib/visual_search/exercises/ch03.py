"""Checks for chapter 03, contrastive training data: the data point, click weights, false negatives.

Each check compares the answer with the library: ``contrastive.make_datapoints`` for the
layout of a data point, ``online.position_bias.ips_weights`` for inverse-propensity
weights, and closed forms (written out below) for the effective sample size and the
false-negative rates of random negatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from visual_search.contrastive import make_datapoints, positives_from_labels
from visual_search.exercises._core import call, checker, expect_close, expect_equal
from visual_search.online.position_bias import ips_weights as library_ips_weights
from visual_search.online.position_bias import power_law_theta


@checker
def build_candidates(answer: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], rng: np.random.Generator) -> int:
    """``answer(positive_ids, negative_ids, labels)`` -> the ``[B, n]`` candidates ``make_datapoints`` returns."""
    for i in range(8):
        n_classes, per_class = int(rng.integers(2, 5)), int(rng.integers(3, 8))
        labels = np.repeat(np.arange(n_classes), per_class)
        n_pool = len(labels)
        batch, n = int(rng.integers(1, 6)), int(rng.integers(2, min(7, n_pool - 1)))
        query_ids, positive_ids = positives_from_labels(labels, seed=int(rng.integers(2**31)))
        pick = rng.choice(n_pool, batch, replace=False)
        query_ids, positive_ids = query_ids[pick], positive_ids[pick]
        candidates, positive_index = make_datapoints(query_ids, positive_ids, np.arange(n_pool), n=n, seed=int(rng.integers(2**31)))
        is_positive = np.arange(n)[None, :] == positive_index[:, None]
        negative_ids = candidates[~is_positive].reshape(batch, n - 1)
        case = f"case {i + 1} (B={batch} data points, n={n} candidates, labels {positive_index.tolist()})"
        got = call(answer, positive_ids.copy(), negative_ids.copy(), positive_index.copy(), case=case)
        expect_equal(np.asarray(got) if isinstance(got, list | tuple) else got, candidates, case,
                     "row b holds n = n_negatives + 1 ids: the positive at column labels[b], and the negatives, in their "
                     "order, in the other columns (np.insert(negative_ids[b], labels[b], positive_ids[b]) does one row)")
    return 8


@checker
def ips_weights(answer: Callable[[np.ndarray, float], np.ndarray], rng: np.random.Generator) -> int:
    """``answer(positions, bias)`` -> one inverse-propensity weight per click at 0-based ``positions``."""
    for i in range(8):
        n_shown = int(rng.integers(3, 21))
        bias = float(rng.choice([0.0, 1.0, 2.0, round(float(rng.uniform(0.2, 2.5)), 2)]))
        positions = rng.integers(0, n_shown, size=int(rng.integers(1, 12)))
        want = library_ips_weights(positions + 1, power_law_theta(n_shown, bias), max_weight=np.inf)
        case = f"case {i + 1} (bias {bias:g}, 0-based positions {positions.tolist()})"
        expect_close(call(answer, positions.copy(), bias, case=case), want, case,
                     "a result at 0-based position p is examined with probability 1 / (p + 1) ** bias, and the weight "
                     "is the inverse of that: (p + 1) ** bias (position 0 gets weight 1; mind the + 1)")
    return 8


def _ess(weights: np.ndarray) -> float:
    return float(weights.sum() ** 2 / (weights**2).sum())


@checker
def effective_sample_size(answer: Callable[[np.ndarray], float], rng: np.random.Generator) -> int:
    """``answer(weights)`` -> Kish's effective sample size ``(sum w)**2 / sum w**2``."""
    cases = [("equal weights", np.full(int(rng.integers(2, 20)), float(rng.uniform(0.5, 3.0)))),
             ("one huge weight", np.concatenate([np.ones(int(rng.integers(5, 15))), [1e4]]))]
    for _ in range(6):
        positions = rng.integers(0, 10, size=int(rng.integers(2, 40)))
        bias = float(rng.uniform(0.5, 2.0))
        cases.append((f"IPS weights (p + 1) ** {bias:.2f} of {len(positions)} clicks", (positions + 1.0) ** bias))
    for i, (what, weights) in enumerate(cases):
        case = f"case {i + 1} ({what}: {np.round(weights, 3).tolist()[:8]}{' ...' if len(weights) > 8 else ''})"
        expect_close(call(answer, weights.copy(), case=case), _ess(weights), case,
                     "(sum of the weights) squared over the sum of the squared weights: n for equal weights, "
                     "close to 1 when one weight dominates")
    return len(cases)


def false_negative_closed_form(n_classes: int, per_class: int, n: int) -> tuple[float, float, float]:
    """Random negatives, ``n_classes`` balanced classes of ``per_class`` images, ``n - 1`` negatives per data point.

    The pool is every image but the query and its positive (both of the query's class),
    so ``per_class - 2`` of the ``N - 2`` candidates for a negative share the query's class.
    Returns (rate per negative, expected false negatives per data point, probability of at
    least one), the last from drawing ``n - 1`` without replacement (hypergeometric).
    """
    pool = n_classes * per_class - 2
    same = per_class - 2
    rate = same / pool
    none = math.comb(pool - same, n - 1) / math.comb(pool, n - 1)
    return rate, (n - 1) * rate, 1.0 - none


@checker
def false_negatives(answer: Callable[[int, int, int], tuple[float, float, float]], rng: np.random.Generator) -> int:
    """``answer(n_classes, per_class, n)`` -> (rate, expected per data point, P(at least one)) for random negatives."""
    settings = [(10, 200, 8), (10, 6000, 128)]  # the chapter's fast and full mode, at two n
    for _ in range(6):
        n_classes, per_class = int(rng.integers(2, 30)), int(rng.integers(3, 300))
        settings.append((n_classes, per_class, int(rng.integers(2, min(200, n_classes * per_class - 2) + 1))))
    for i, (n_classes, per_class, n) in enumerate(settings):
        case = f"case {i + 1} ({n_classes} classes of {per_class} images, n={n}: {n - 1} negatives)"
        got = call(answer, n_classes, per_class, n, case=case)
        want = np.array(false_negative_closed_form(n_classes, per_class, n))
        expect_close(got, want, case,
                     "the negatives are drawn from the N - 2 images other than the query and its positive, and "
                     "per_class - 2 of those share the query's class; expected count = (n - 1) x rate; at least one = "
                     "1 - C(pool - same, n - 1) / C(pool, n - 1) (math.comb), since they are drawn without replacement",
                     rtol=1e-6, atol=1e-9)
    return len(settings)
