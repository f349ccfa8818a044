"""Solutions to chapter 07's checked exercises (notebooks/07_offline_metrics.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch07.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

import math

import numpy as np


def _first_hits(ranked, relevant, k=None):
    """Per position up to k: 1 if it holds a relevant id seen there for the first time, else 0."""
    seen, hits = set(), []
    for item in list(ranked)[:k]:
        hits.append(int(item in relevant and item not in seen))
        seen.add(item)
    return hits


def reciprocal_rank(ranked, relevant):
    """1 / (1-based position of the first relevant id), 0.0 if none is ranked."""
    for position, item in enumerate(ranked, start=1):
        if item in relevant:
            return 1.0 / position
    return 0.0


def precision_at_k(ranked, relevant, k):
    """Distinct relevant ids in the first k positions, over k (missing positions are misses)."""
    return sum(_first_hits(ranked, relevant, k)) / k


def average_precision(ranked, relevant, k=None):
    """Sum of P@i at each relevant position i <= k, over the number of relevant items in total."""
    if not relevant:
        return 0.0
    total, found = 0.0, 0
    for position, hit in enumerate(_first_hits(ranked, relevant, k), start=1):
        if hit:
            found += 1
            total += found / position
    return total / len(relevant)


def _dcg(gains):
    return sum(g / math.log2(i + 1) for i, g in enumerate(gains, start=1))


def _ndcg(ranked, grades, k, gain):
    ideal = _dcg(sorted((gain(g) for g in grades.values()), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    seen, gains = set(), []
    for item in list(ranked)[:k]:
        gains.append(0 if item in seen else gain(grades.get(item, 0)))
        seen.add(item)
    return _dcg(gains) / ideal


def ndcg_at_k(ranked, grades, k):
    """DCG@k with gain = grade, over the DCG@k of all graded ids sorted by grade."""
    return _ndcg(ranked, grades, k, lambda g: g)


def ndcg_exp_at_k(ranked, grades, k):
    """The same with the exponential gain 2**grade - 1, in the DCG and the ideal DCG alike."""
    return _ndcg(ranked, grades, k, lambda g: 2**g - 1)


def ap_at_k_min(ranked, relevant, k):
    """AP@k's sum of precisions, divided by min(k, #relevant): a perfect top k scores 1."""
    if not relevant:
        return 0.0
    return average_precision(ranked, relevant, k) * len(relevant) / min(k, len(relevant))


def bootstrap_ci(per_query, n_boot, seed):
    """Percentile 95% interval of the mean: resample the queries with replacement n_boot times."""
    per_query = np.asarray(per_query, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_query), size=(n_boot, len(per_query)))
    low, high = np.percentile(per_query[idx].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)
