"""Ranking metrics: closed-form values worked by hand, edge cases, and cross-checks with scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from visual_search import metrics as M

# One ranked list used by several worked examples: ids 10..17, relevant = {11, 13, 16, 99}.
# 99 is relevant but never retrieved. Hits sit at positions 2, 4 and 7.
RANKED = [10, 11, 12, 13, 14, 15, 16, 17]
RELEVANT = {11, 13, 16, 99}


def test_reciprocal_rank_worked_example():
    assert M.reciprocal_rank(RANKED, RELEVANT) == pytest.approx(1 / 2)
    assert M.reciprocal_rank([5, 6, 7], {7}) == pytest.approx(1 / 3)
    assert M.reciprocal_rank([5, 6, 7], {8}) == 0.0


def test_mrr_over_three_queries():
    # first hits at ranks 1, 3 and never: (1 + 1/3 + 0) / 3
    value = M.mean_reciprocal_rank([[1, 2, 3], [4, 5, 6], [7, 8, 9]], [{1}, {6}, {0}])
    assert value == pytest.approx((1 + 1 / 3 + 0) / 3)


@pytest.mark.parametrize(
    "k, precision, recall",
    [(1, 0 / 1, 0 / 4), (2, 1 / 2, 1 / 4), (4, 2 / 4, 2 / 4), (7, 3 / 7, 3 / 4), (8, 3 / 8, 3 / 4), (20, 3 / 20, 3 / 4)],
)
def test_precision_and_recall_at_k(k, precision, recall):
    assert M.precision_at_k(RANKED, RELEVANT, k) == pytest.approx(precision)
    assert M.recall_at_k(RANKED, RELEVANT, k) == pytest.approx(recall)


def test_average_precision_worked_example():
    # P@2 = 1/2, P@4 = 2/4, P@7 = 3/7; 4 relevant items in total (99 is never found)
    expected = (1 / 2 + 2 / 4 + 3 / 7) / 4
    assert M.average_precision(RANKED, RELEVANT) == pytest.approx(expected)
    # truncated at k=4 only the first two hits count; the denominator stays 4
    assert M.average_precision(RANKED, RELEVANT, k=4) == pytest.approx((1 / 2 + 2 / 4) / 4)


def test_ndcg_worked_example():
    grades = {"a": 0, "b": 5, "c": 1, "d": 4, "e": 2}
    ranked = ["a", "b", "c", "d", "e"]
    dcg = 0 / math.log2(2) + 5 / math.log2(3) + 1 / math.log2(4) + 4 / math.log2(5) + 2 / math.log2(6)
    idcg = 5 / math.log2(2) + 4 / math.log2(3) + 2 / math.log2(4) + 1 / math.log2(5) + 0
    assert M.ndcg_at_k(ranked, grades, 5) == pytest.approx(dcg / idcg)
    assert M.ndcg_at_k(ranked, grades, 5) == pytest.approx(0.6869, abs=1e-4)
    # the ideal order scores 1; IDCG@k uses ALL graded candidates, not only the retrieved ones
    assert M.ndcg_at_k(["b", "d", "e"], grades, 3) == pytest.approx(1.0)
    assert M.ndcg_at_k(["b"], {"b": 5, "z": 5}, 2) == pytest.approx(5 / (5 + 5 / math.log2(3)))


def test_perfect_and_worst_rankings():
    assert M.average_precision([1, 2, 3], {1, 2}) == 1.0
    assert M.precision_at_k([1, 2, 3], {1, 2, 3}, 3) == 1.0
    assert M.average_precision([3, 4], {1, 2}) == 0.0


# ---- edge cases, as documented in the module docstring -------------------------------------


def test_no_relevant_items_gives_zero_everywhere():
    ranked = [1, 2, 3]
    assert M.reciprocal_rank(ranked, set()) == 0.0
    assert M.precision_at_k(ranked, set(), 2) == 0.0
    assert M.recall_at_k(ranked, set(), 2) == 0.0
    assert M.average_precision(ranked, set()) == 0.0
    assert M.ndcg_at_k(ranked, {1: 0, 2: 0}, 2) == 0.0
    assert M.ndcg_at_k(ranked, {}, 2) == 0.0


def test_k_larger_than_list_counts_missing_positions_as_misses():
    assert M.precision_at_k([1, 2], {1, 2}, 4) == pytest.approx(2 / 4)
    assert M.recall_at_k([1, 2], {1, 2}, 4) == 1.0
    assert M.ndcg_at_k([1], {1: 3}, 10) == 1.0


def test_duplicates_score_once_but_keep_their_position():
    # the repeat of 1 at position 2 is a miss; 2 at position 3 is a hit
    assert M.precision_at_k([1, 1, 2], {1, 2}, 3) == pytest.approx(2 / 3)
    assert M.recall_at_k([1, 1, 1], {1, 2}, 3) == pytest.approx(1 / 2)
    assert M.average_precision([1, 1, 2], {1, 2}) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert M.reciprocal_rank([3, 3, 1], {1}) == pytest.approx(1 / 3)
    grades = {1: 5, 2: 3}
    assert M.ndcg_at_k([1, 1, 2], grades, 3) == pytest.approx((5 + 0 + 3 / 2) / (5 + 3 / math.log2(3)))


@pytest.mark.parametrize("k", [0, -1, 1.5, None, True, "3"])
def test_bad_k_raises(k):
    with pytest.raises(M.MetricError, match="k must be a positive integer"):
        M.precision_at_k([1], {1}, k)


@pytest.mark.parametrize("grade", [-1, 6, 2.5, float("nan"), "3"])
def test_bad_grade_raises(grade):
    with pytest.raises(M.MetricError, match="grade of id 7"):
        M.ndcg_at_k([7], {7: grade}, 1)


def test_mean_needs_matching_nonempty_lists():
    with pytest.raises(M.MetricError, match="2 ranked lists but 1"):
        M.mean_reciprocal_rank([[1], [2]], [{1}])
    with pytest.raises(M.MetricError, match="zero queries"):
        M.mean_average_precision([], [])


def test_means_are_means_of_per_query_values():
    lists, rels = [[1, 2, 3], [3, 2, 1]], [{1}, {1, 2}]
    assert M.mean_precision_at_k(lists, rels, 2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert M.mean_recall_at_k(lists, rels, 2) == pytest.approx((1 + 1 / 2) / 2)
    assert M.mean_average_precision(lists, rels) == pytest.approx((1 + (1 / 2 + 2 / 3) / 2) / 2)
    grades = [{1: 3}, {1: 5, 2: 1}]
    assert M.mean_ndcg_at_k(lists, grades, 3) == pytest.approx(np.mean([M.ndcg_at_k(r, g, 3) for r, g in zip(lists, grades)]))


def test_relevant_from_grades():
    assert M.relevant_from_grades({1: 5, 2: 3, 3: 1, 4: 0}, 3) == {1, 2}


# ---- cross-checks against scikit-learn on randomised cases ----------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_average_precision_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y_true = rng.random(n) < rng.uniform(0.1, 0.6)
    y_true[rng.integers(n)] = True  # at least one relevant item
    scores = rng.random(n)  # continuous, so no ties
    ranked = np.argsort(-scores).tolist()
    ours = M.average_precision(ranked, set(np.flatnonzero(y_true).tolist()))
    assert ours == pytest.approx(average_precision_score(y_true, scores))


@pytest.mark.parametrize("seed", range(20))
def test_ndcg_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    grades = rng.integers(0, 6, size=n)
    scores = rng.random(n)
    ranked = np.argsort(-scores).tolist()
    grade_map = {i: int(g) for i, g in enumerate(grades)}
    for k in (1, 3, 10, n):
        ours = M.ndcg_at_k(ranked, grade_map, k)
        assert ours == pytest.approx(ndcg_score(grades[None, :], scores[None, :], k=k)), k


# ---- input validation -----------------------------------------------------------------------


@pytest.mark.parametrize("ranked", [{1, 2, 3}, {1: 0, 2: 0}, "123", 7, np.zeros((2, 2))])
def test_ranked_must_be_an_ordered_sequence(ranked):
    with pytest.raises(M.MetricError, match="ranked must be"):
        M.precision_at_k(ranked, {1}, 2)


def test_relevant_must_be_a_collection_of_ids():
    with pytest.raises(M.MetricError, match="relevant must be a collection"):
        M.recall_at_k([1, 2], "12", 2)
    with pytest.raises(M.MetricError, match="unhashable"):
        M.reciprocal_rank([1, 2], [[1]])
    with pytest.raises(M.MetricError, match="unhashable id"):
        M.reciprocal_rank([[1], 2], {2})


def test_grades_must_be_a_mapping_and_threshold_a_grade():
    with pytest.raises(M.MetricError, match="grades must be a mapping"):
        M.ndcg_at_k([1], [(1, 3)], 1)
    for threshold in (0, 6, "3", 2.5):
        with pytest.raises(M.MetricError, match="threshold must be an integer in 1..5"):
            M.relevant_from_grades({1: 3}, threshold)


def test_numpy_ids_work_like_python_ids():
    ranked = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    relevant = np.array([11, 13, 16, 99])
    assert M.average_precision(ranked, relevant) == M.average_precision(RANKED, RELEVANT)
    assert M.ndcg_at_k(ranked, {np.int64(11): 3, 13: 5}, 4) == M.ndcg_at_k(RANKED, {11: 3, 13: 5}, 4)


# ---- the binary metrics against scikit-learn too -------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_reciprocal_rank_matches_sklearn_lrap_with_one_relevant_item(seed):
    from sklearn.metrics import label_ranking_average_precision_score

    rng = np.random.default_rng(seed)
    n_queries, n = 8, 30
    scores = rng.random((n_queries, n))
    y_true = np.zeros((n_queries, n), dtype=int)
    y_true[np.arange(n_queries), rng.integers(0, n, n_queries)] = 1  # one relevant item each: LRAP = 1 / rank
    ranked = [np.argsort(-row).tolist() for row in scores]
    relevant = [set(np.flatnonzero(row).tolist()) for row in y_true]
    assert M.mean_reciprocal_rank(ranked, relevant) == pytest.approx(label_ranking_average_precision_score(y_true, scores))


@pytest.mark.parametrize("seed", range(10))
def test_precision_and_recall_match_sklearn_on_the_top_k_mask(seed):
    from sklearn.metrics import precision_score, recall_score

    rng = np.random.default_rng(seed)
    n, k = 40, int(rng.integers(1, 40))
    y_true = rng.random(n) < 0.3
    y_true[0] = True
    ranked = rng.permutation(n).tolist()
    y_pred = np.zeros(n, dtype=bool)
    y_pred[ranked[:k]] = True  # "retrieved" = in the top k
    relevant = set(np.flatnonzero(y_true).tolist())
    assert M.precision_at_k(ranked, relevant, k) == pytest.approx(precision_score(y_true, y_pred))
    assert M.recall_at_k(ranked, relevant, k) == pytest.approx(recall_score(y_true, y_pred))


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_binary_metrics_match_the_loop_versions(seed):
    rng = np.random.default_rng(seed)
    n_queries, depth, n_items = 30, 20, 200
    ranked = [rng.permutation(n_items)[:depth].tolist() for _ in range(n_queries)]
    relevant = [set(rng.choice(n_items, int(rng.integers(0, 40)), replace=False).tolist()) for _ in range(n_queries)]
    hits = np.array([[item in rel for item in r] for r, rel in zip(ranked, relevant)])
    got = M.binary_metrics_from_hits(hits, np.array([len(rel) for rel in relevant]), ks=(1, 5, 20))
    assert got["MRR"] == pytest.approx(M.mean_reciprocal_rank(ranked, relevant))
    for k in (1, 5, 20):
        assert got[f"P@{k}"] == pytest.approx(M.mean_precision_at_k(ranked, relevant, k))
        assert got[f"R@{k}"] == pytest.approx(M.mean_recall_at_k(ranked, relevant, k))
    assert got["mAP@20"] == pytest.approx(M.mean_average_precision(ranked, relevant, 20))


def test_vectorised_binary_metrics_validate():
    with pytest.raises(M.MetricError, match="smaller than the number of hits"):
        M.binary_metrics_from_hits(np.ones((1, 3), bool), np.array([2]))
    with pytest.raises(M.MetricError, match="deeper than"):
        M.binary_metrics_from_hits(np.ones((1, 3), bool), np.array([3]), ks=(5,))


@pytest.mark.parametrize(
    "hits",
    [
        np.array([[1, 2, 0]]),
        np.array([[0, -1, 1]]),
        np.array([[0.5, 0.0, 1.0]]),
        np.array([[np.nan, 0.0, 1.0]]),
        np.array([["1", "0", "0"]]),
        np.array([[None, 1, 0]], dtype=object),
    ],
)
def test_vectorised_binary_metrics_refuse_hits_that_are_not_0_or_1(hits):
    with pytest.raises(M.MetricError, match="hits must be a boolean matrix or 0/1 values"):
        M.binary_metrics_from_hits(hits, np.array([3]), ks=(1,))


@pytest.mark.parametrize("dtype", [bool, np.int8, np.int64, np.uint8, np.float32, np.float64])
def test_vectorised_binary_metrics_accept_bool_and_0_1_numbers(dtype):
    hits = np.array([[1, 0, 1], [0, 0, 1]])
    expected = M.binary_metrics_from_hits(hits.astype(bool), np.array([2, 4]), ks=(1, 3))
    assert M.binary_metrics_from_hits(hits.astype(dtype), np.array([2, 4]), ks=(1, 3)) == expected
    assert M.binary_metrics_from_hits(hits.astype(dtype).tolist(), [2, 4], ks=(1, 3)) == expected


@pytest.mark.parametrize("n_relevant", [np.array([-1]), np.array([2.5]), np.array([2.0]), np.array(["2"]), np.array([True])])
def test_vectorised_binary_metrics_need_integer_n_relevant(n_relevant):
    with pytest.raises(M.MetricError, match="n_relevant must be integers >= 0"):
        M.binary_metrics_from_hits(np.zeros((1, 3), bool), n_relevant, ks=(1,))


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None])
def test_vectorised_binary_metrics_check_each_k(k):
    with pytest.raises(M.MetricError, match="k must be a positive integer"):
        M.binary_metrics_from_hits(np.ones((1, 3), bool), np.array([3]), ks=(1, k))
    assert "P@2" in M.binary_metrics_from_hits(np.ones((1, 3), bool), np.array([3]), ks=(np.int64(2),))


def test_average_precision_k_may_be_none_but_not_zero():
    assert M.average_precision([1, 2], {2}, None) == pytest.approx(0.5)
    with pytest.raises(M.MetricError, match="k must be a positive integer or None, got 0"):
        M.average_precision([1, 2], {2}, 0)
