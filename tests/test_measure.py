"""visual_search.index.measure: recall@k, the sweep harness (knobs via params=, statistics via stats=) and the KD-tree study."""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.index.exact import exact_search
from visual_search.index.measure import K, Method, kdtree_dimensions, recall_at_k, run_method


@pytest.fixture(scope="module")
def data():
    """600 Gaussian points (16-d, no clusters: neighbours straddle IVF lists), 30 queries and their exact top 10."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(600, 16)).astype(np.float32)
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    return base, queries, exact_search(queries, base, K, metric="l2")[1]


def test_recall_at_k_is_the_mean_overlap():
    found = np.array([[1, 2, 3], [4, 5, -1]])
    truth = np.array([[3, 2, 1], [4, 6, 7]])
    assert recall_at_k(found, truth) == pytest.approx((1 + 1 / 3) / 2)  # order does not matter; -1 never matches


def test_a_single_point_method(data):
    base, queries, truth = data
    (row,) = run_method(Method("exact", "exact"), base, queries, truth)
    assert row["search"] == {} and row["recall@10"] == 1.0 and row["queries"] == 30
    assert row["qps"] > 0 and row["build_s"] >= 0 and row["bytes_per_vector"] >= 4 * 16 and row["fixed_bytes"] >= 0
    (row,) = run_method(Method("KD-tree", "kdtree", {"leaf_size": 16}, max_queries=10), base, queries, truth)
    assert row["queries"] == 10 and row["recall@10"] == 1.0
    assert 1 <= row["stats"]["leaves_visited"]  # stats= reached the row


@pytest.mark.parametrize("kind, params", [("ivf", {"nlist": 8, "nprobe": 1}), ("faiss", {"factory": "IVF8,Flat"})])
def test_a_knob_sweep_passes_the_value_with_each_search(data, kind, params):
    base, queries, truth = data
    rows = run_method(Method("IVF8", kind, params, knob="nprobe", values=(1, 2, 8)), base, queries, truth)
    assert [r["search"] for r in rows] == [{"nprobe": 1}, {"nprobe": 2}, {"nprobe": 8}]
    recalls = [r["recall@10"] for r in rows]
    assert recalls == sorted(recalls) and recalls[-1] == 1.0  # every list probed: exact
    assert recalls[0] < 1.0  # one list of eight misses some neighbours: the knob took effect
    assert len({r["build_s"] for r in rows}) == 1  # built once for the whole sweep


def test_lsh_statistics_follow_the_rerank_knob(data):
    base, queries, truth = data
    method = Method("LSH", "lsh", {"n_tables": 8, "n_bits": 8, "n_probes": 4}, knob="rerank", values=(5, 200))
    small, large = run_method(method, base, queries, truth)
    assert small["stats"]["reranked_per_query"] <= 5 < large["stats"]["reranked_per_query"]
    assert small["stats"]["candidates_per_query"] == large["stats"]["candidates_per_query"]  # same buckets probed
    assert small["recall@10"] <= large["recall@10"]


def test_kdtree_dimensions(data):
    base, queries, _ = data
    rows = kdtree_dimensions(base, queries, dims=(2, 8), seed=0)
    assert [r["dim"] for r in rows] == [2, 8]
    for r in rows:
        assert 1 <= r["leaves_visited"] <= r["leaves"]
        assert r["kdtree_speedup"] == pytest.approx(r["kdtree_qps"] / r["exact_qps"])
        assert min(r["exact_qps"], r["kdtree_qps"], r["sklearn_qps"]) > 0
