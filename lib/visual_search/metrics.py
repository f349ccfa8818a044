"""Offline ranking metrics, written by hand because they are the lesson.

Each function scores ONE ranked list; the ``mean_*`` functions average over
many queries. Formulas (k counts positions 1..k):

* reciprocal rank  RR   = 1 / (position of the first relevant item), 0 if none is ranked
* precision        P@k  = (# relevant in the top k) / k
* recall           R@k  = (# relevant in the top k) / (# relevant in total)
* average precision AP  = sum of P@i over the relevant positions i (<= k)
                          / (# relevant in total)
* nDCG             DCG@k = sum_i rel_i / log2(i + 1);  nDCG@k = DCG@k / IDCG@k,
                   where IDCG@k is the DCG of the ideal order of ALL graded candidates.

Arguments:
    ranked: the ids the system returned, best first (any hashable ids).
    relevant: the ids that count as relevant (any collection).
    grades: a mapping from id to an integer grade 0..5; ungraded ids count as 0.

Edge cases, defined once for every function:
    * No relevant items (or all grades 0): every metric returns 0.0, the
      convention scikit-learn uses for nDCG. A mean over queries therefore
      counts such a query as a miss; build eval sets in which every query has
      at least one relevant item (ours does).
    * k larger than the list: positions past the end count as not relevant.
      P@k still divides by k, because the user was promised k results.
    * Duplicate ids in ``ranked``: only the first occurrence can score; later
      repeats count as not relevant (a system gets no credit for showing the
      same image twice) but they still take up a position.
    * k must be a positive integer, grades integers in 0..5; ``ranked`` must be
      an ordered sequence (a list, tuple or 1-D array, not a set, dict or
      string) and ``relevant`` a collection of ids (not a string); ids must be
      hashable. Anything else raises ``MetricError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence

import numpy as np

from visual_search._checks import check_int
from visual_search.errors import MetricError  # noqa: F401  (re-exported: raised here, importable from here)

MIN_GRADE, MAX_GRADE = 0, 5


def _check_k(k: int | None, allow_none: bool = False) -> int | None:
    """``k`` as an int >= 1 (or None, if allowed); the message is the one the module docstring promises."""
    try:
        return check_int(k, "k", low=1, error=MetricError, allow_none=allow_none)
    except MetricError:
        raise MetricError(f"k must be a positive integer{' or None' if allow_none else ''}, got {k!r}") from None


def _check_grades(grades: Mapping[Hashable, int]) -> None:
    if not isinstance(grades, Mapping):
        raise MetricError(f"grades must be a mapping from id to grade, got {type(grades).__name__}")
    if all(type(grade) is int and MIN_GRADE <= grade <= MAX_GRADE for grade in grades.values()):
        return  # the common case, checked in one pass (evaluations call this once per query)
    for item, grade in grades.items():
        check_int(grade, f"grade of id {item!r}", low=MIN_GRADE, high=MAX_GRADE, error=MetricError)


def _ranked_list(ranked: Sequence[Hashable]) -> list[Hashable]:
    """Validate ``ranked`` and return it as a list of hashable ids (numpy scalars become Python ones)."""
    if isinstance(ranked, (set, frozenset, dict, str, bytes)) or not isinstance(ranked, (Sequence, np.ndarray)):
        raise MetricError(f"ranked must be an ordered sequence of ids (list, tuple or 1-D array), got {type(ranked).__name__}")
    if isinstance(ranked, np.ndarray) and ranked.ndim != 1:
        raise MetricError(f"ranked must be 1-D, got an array of shape {list(ranked.shape)}")
    items = ranked.tolist() if isinstance(ranked, np.ndarray) else list(ranked)
    for item in items:
        if not isinstance(item, Hashable):
            raise MetricError(f"ranked contains an unhashable id {item!r}")
    return items


def _relevant_set(relevant: Collection[Hashable]) -> set[Hashable]:
    if isinstance(relevant, (str, bytes)) or not isinstance(relevant, (Collection, np.ndarray)):
        raise MetricError(f"relevant must be a collection of ids (e.g. a set), got {type(relevant).__name__}")
    try:
        return set(relevant.tolist() if isinstance(relevant, np.ndarray) else relevant)
    except TypeError as e:
        raise MetricError(f"relevant contains an unhashable id ({e})") from e


def _hits(ranked: Sequence[Hashable], relevant: set[Hashable], k: int | None) -> list[bool]:
    """Per position (up to k): is this the first occurrence of a relevant id?"""
    seen: set[Hashable] = set()
    hits = []
    for item in _ranked_list(ranked)[:k]:
        hits.append(item in relevant and item not in seen)
        seen.add(item)
    return hits


def reciprocal_rank(ranked: Sequence[Hashable], relevant: Collection[Hashable]) -> float:
    """1 / rank of the first relevant item, or 0.0 if no relevant item is ranked."""
    relevant = _relevant_set(relevant)
    for position, hit in enumerate(_hits(ranked, relevant, None), start=1):
        if hit:
            return 1.0 / position
    return 0.0


def precision_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Fraction of the top k positions that hold a relevant item."""
    _check_k(k)
    return sum(_hits(ranked, _relevant_set(relevant), k)) / k


def recall_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Fraction of all relevant items that appear in the top k (0.0 if none are relevant)."""
    _check_k(k)
    relevant = _relevant_set(relevant)
    if not relevant:
        return 0.0
    return sum(_hits(ranked, relevant, k)) / len(relevant)


def average_precision(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int | None = None) -> float:
    """Sum of P@i at each relevant position i (up to k), divided by the number of relevant items.

    With ``k=None`` the whole list is used. Relevant items that are never
    ranked contribute 0 to the sum but still count in the denominator.
    """
    _check_k(k, allow_none=True)
    relevant = _relevant_set(relevant)
    if not relevant:
        return 0.0
    total, found = 0.0, 0
    for position, hit in enumerate(_hits(ranked, relevant, k), start=1):
        if hit:
            found += 1
            total += found / position  # P@position, since this position is a hit
    return total / len(relevant)


def dcg_at_k(gains: Iterable[float], k: int) -> float:
    """Discounted cumulative gain of gains listed in rank order: sum_i gain_i / log2(i + 1)."""
    _check_k(k)
    return sum(g / math.log2(i + 1) for i, g in enumerate(list(gains)[:k], start=1))


def ndcg_at_k(ranked: Sequence[Hashable], grades: Mapping[Hashable, int], k: int) -> float:
    """DCG@k of the ranking divided by DCG@k of the ideal order of all graded candidates.

    Ungraded ids, and repeats of an id already ranked, have gain 0.
    """
    _check_k(k)
    _check_grades(grades)
    ideal = dcg_at_k(sorted(grades.values(), reverse=True), k)
    if ideal == 0:
        return 0.0
    seen: set[Hashable] = set()
    gains = []
    for item in _ranked_list(ranked)[:k]:
        gains.append(0 if item in seen else grades.get(item, 0))
        seen.add(item)
    return dcg_at_k(gains, k) / ideal


def _mean(per_query: Callable[..., float], ranked_lists: Sequence[Sequence[Hashable]], targets: Sequence, *args) -> float:
    if len(ranked_lists) != len(targets):
        raise MetricError(f"got {len(ranked_lists)} ranked lists but {len(targets)} relevance targets")
    if len(ranked_lists) == 0:
        raise MetricError("cannot average over zero queries")
    return float(np.mean([per_query(r, t, *args) for r, t in zip(ranked_lists, targets)]))


def mean_reciprocal_rank(ranked_lists: Sequence[Sequence[Hashable]], relevant_sets: Sequence[Collection[Hashable]]) -> float:
    """MRR: the mean of ``reciprocal_rank`` over queries."""
    return _mean(reciprocal_rank, ranked_lists, relevant_sets)


def mean_precision_at_k(ranked_lists: Sequence[Sequence[Hashable]], relevant_sets: Sequence[Collection[Hashable]], k: int) -> float:
    """Mean P@k over queries."""
    return _mean(precision_at_k, ranked_lists, relevant_sets, k)


def mean_recall_at_k(ranked_lists: Sequence[Sequence[Hashable]], relevant_sets: Sequence[Collection[Hashable]], k: int) -> float:
    """Mean R@k over queries."""
    return _mean(recall_at_k, ranked_lists, relevant_sets, k)


def mean_average_precision(
    ranked_lists: Sequence[Sequence[Hashable]], relevant_sets: Sequence[Collection[Hashable]], k: int | None = None
) -> float:
    """mAP (mAP@k when k is given): the mean of ``average_precision`` over queries."""
    return _mean(average_precision, ranked_lists, relevant_sets, k)


def mean_ndcg_at_k(ranked_lists: Sequence[Sequence[Hashable]], grade_maps: Sequence[Mapping[Hashable, int]], k: int) -> float:
    """Mean nDCG@k over queries."""
    return _mean(ndcg_at_k, ranked_lists, grade_maps, k)


def relevant_from_grades(grades: Mapping[Hashable, int], threshold: int) -> set[Hashable]:
    """The ids whose grade is at least ``threshold`` (1..5): turns graded relevance into binary."""
    try:
        check_int(threshold, "threshold", low=1, high=MAX_GRADE, error=MetricError)
    except MetricError:
        raise MetricError(f"threshold must be an integer in 1..{MAX_GRADE}, got {threshold!r}") from None
    _check_grades(grades)
    return {item for item, grade in grades.items() if grade >= threshold}


def binary_metrics_from_hits(hits: np.ndarray, n_relevant: np.ndarray, ks: Iterable[int] = (1, 10)) -> dict[str, float]:
    """The binary metrics for many queries at once, from a hit matrix (for 10,000 x 60,000 evaluations).

    The same definitions as the per-query functions above, vectorised: row q of
    ``hits`` says, for each of the top K positions of query q, whether that item
    is relevant (no duplicates assumed); ``n_relevant[q]`` is how many relevant
    items query q has in total. Tested against the loop versions.

    Args:
        hits: ``[Q, K]``, bool, or integers or floats that are all 0 or 1.
        n_relevant: integers ``[Q]``, each >= the hits in its row (so >= 0).
        ks: the k values for P@k and R@k (each a positive integer <= K).

    Returns:
        ``{"MRR", "P@k", "R@k" for each k, f"mAP@{K}"}``, means over queries.

    Raises:
        MetricError: for hits that are not 0/1 (2, -1, 0.5, NaN, strings), n_relevant
            that are not integers >= the row's hits, mismatched shapes, or a bad k.
    """
    hits = _hit_matrix(hits)
    n_relevant = np.asarray(n_relevant)
    if hits.ndim != 2 or n_relevant.shape != (hits.shape[0],) or hits.shape[0] == 0:
        raise MetricError(f"hits must be [Q > 0, K] and n_relevant [Q], got {list(hits.shape)} and {list(n_relevant.shape)}")
    if n_relevant.dtype.kind not in "iu":
        raise MetricError(f"n_relevant must be integers >= 0, got dtype {n_relevant.dtype}")
    if (n_relevant < 0).any():
        raise MetricError(f"n_relevant must be integers >= 0, got {n_relevant.min().item()}")
    if (n_relevant < hits.sum(axis=1)).any():
        raise MetricError("n_relevant is smaller than the number of hits for some query")
    depth = hits.shape[1]
    positions = np.arange(1, depth + 1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    precision_at_i = np.cumsum(hits, axis=1) / positions
    denominator = np.maximum(n_relevant, 1)  # no relevant items: AP and R@k are 0, as above
    out = {"MRR": float(np.mean(1.0 / first))}
    for k in ks:
        k = _check_k(k)
        if k > depth:
            raise MetricError(f"k={k} is deeper than the {depth} ranked positions given")
        out[f"P@{k}"] = float(hits[:, :k].sum(axis=1).mean() / k)
        out[f"R@{k}"] = float(np.mean(hits[:, :k].sum(axis=1) / denominator))
    out[f"mAP@{depth}"] = float(np.mean((precision_at_i * hits).sum(axis=1) / denominator))
    return out


def _hit_matrix(hits: np.ndarray) -> np.ndarray:
    """``hits`` as a bool array: bool as it is, integers or floats only if every value is 0 or 1."""
    hits = np.asarray(hits)
    if hits.dtype == bool:
        return hits
    if hits.dtype.kind in "iuf":
        ok = (hits == 0) | (hits == 1)  # NaN is neither
        if ok.all():
            return hits.astype(bool)
        bad = hits[~ok].flat[0].item()
        raise MetricError(f"hits must be a boolean matrix or 0/1 values, got {bad!r} (dtype {hits.dtype})")
    raise MetricError(f"hits must be a boolean matrix or 0/1 values, got dtype {hits.dtype}")
