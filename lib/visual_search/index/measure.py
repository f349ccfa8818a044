"""Measure an index the way ann-benchmarks does: recall@k against exact search, queries/s, build time, memory.

    from visual_search.index.measure import Method, recall_at_k, run_method

    truth = exact_search(queries, base, 10, metric="l2")[1]
    method = Method("IVF1024", "ivf", {"nlist": 1024}, knob="nprobe", values=(1, 4, 16, 64))
    for row in run_method(method, base, queries, truth):
        print(row["search"], row["recall@10"], row["qps"])

A ``Method`` is one line of a speed/recall plot: an index kind with its build
parameters, built once, then searched at every value of one search-time knob
(``nprobe``, ``efSearch``, ``rerank``, ``search_k`` ...). The knob goes to each
call as ``index.search(q, k, params={knob: value})``, so the sweep never mutates
the index, and what the index reports about a search (the KD-tree's leaves
visited, LSH's candidates per query) comes back through ``stats=``.

Timings are wall-clock (``visual_search.timing``) with whatever thread limits the
caller set: ``bench ann`` and chapters 05-06 run everything on one thread
(``threadpool_limits(1)``, ``faiss.omp_set_num_threads(1)``), so the numbers
compare algorithms, not cores. Queries are batched, as Faiss and ann-benchmarks'
batch mode measure them, after a warm-up search on a few queries.

Used by ``python -m visual_search.bench ann`` and notebooks 05 and 06.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from visual_search.index import build_index
from visual_search.timing import Timer

#: Neighbours per query in every measurement (recall@10, as ann-benchmarks reports).
K = 10


@dataclass
class Method:
    """One line of the Pareto plot: build once, then sweep one search-time knob.

    Attributes:
        name: the label in tables and plots.
        kind: an index kind for ``build_index`` (``"ivf"``, ``"faiss"``, ...).
        params: build parameters for ``build_index`` (``{"nlist": 1024}``).
        knob: the search-time parameter to sweep (a name in ``search(params=...)``), or None for one point.
        values: the knob's values, in sweep order.
        max_queries: time only the first queries (for slow methods); None: all of them.
        own: written by hand in this course (solid lines) or a library's (dashed).
    """

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    knob: str | None = None
    values: tuple = ()
    max_queries: int | None = None
    own: bool = True


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / k (ann-benchmarks' recall).

    ``found`` and ``truth`` are id arrays ``[Q, k]`` row for row; padding ids (-1) never match.
    """
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b) for a, b in zip(found, truth)]))


def run_method(method: Method, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, metric: str = "l2", k: int = K) -> list[dict]:
    """Build ``method`` on ``base`` and measure every point of its sweep.

    Args:
        method: what to build and which knob to sweep.
        base: float32 ``[N, d]`` vectors to index (also the training set).
        queries: float32 ``[Q, d]``; ``method.max_queries`` keeps only the first ones.
        truth: int64 ``[>= Q, k]``: the exact top-k ids of each query (row i for query i).
        metric: the index metric.
        k: neighbours per query.

    Returns:
        One row per sweep point: ``method``, ``kind``, ``own``, ``params`` (build),
        ``search`` (``{knob: value}``, empty for a single point), ``recall@{k}``,
        ``qps``, ``build_s`` (train + add), ``bytes_per_vector`` (what one more vector
        costs), ``fixed_bytes`` (centroids, tables: what the trained, empty index
        holds), ``queries`` and ``stats`` (what the index reported about the timed
        search, e.g. ``{"leaves_visited": ...}``; empty if nothing).
    """
    index = build_index(method.kind, base.shape[1], metric, **method.params)
    with Timer() as build:
        index.train(base)
        fixed = index.memory_bytes()
        index.add(base)  # indexes build eagerly here, never lazily in search
    per_vector = (index.memory_bytes() - fixed) / len(base)
    q = queries[: method.max_queries] if method.max_queries else queries
    rows = []
    for value in method.values or (None,):
        search = {method.knob: value} if value is not None else {}
        index.search(q[:10], k, params=search or None)  # warm-up: first-touch page faults, caches
        info: dict[str, float] = {}
        with Timer() as timer:
            _, ids = index.search(q, k, params=search or None, stats=info.update)
        rows.append({
            "method": method.name, "kind": method.kind, "own": method.own, "params": method.params,
            "search": search,
            f"recall@{k}": recall_at_k(ids, truth[: len(q)]), "qps": len(q) / timer.seconds,
            "build_s": build.seconds, "bytes_per_vector": per_vector, "fixed_bytes": fixed, "queries": len(q),
            "stats": {name: float(v) for name, v in info.items()},
        })
    return rows


def kdtree_dimensions(base: np.ndarray, queries: np.ndarray, dims=(2, 4, 8, 16, 32, 64), seed: int = 0, k: int = K) -> list[dict]:
    """Exact search vs the hand-written KD-tree vs scikit-learn's, on PCA projections of ``base`` to each of ``dims``.

    Returns:
        One row per dimension: ``dim``, ``exact_qps``, ``kdtree_qps``, ``sklearn_qps``,
        ``leaves_visited`` (mean leaves the KD-tree scanned per query, from its search
        stats), ``leaves`` (how many it has), ``kdtree_speedup`` and ``sklearn_speedup``
        (QPS over exact search's).
    """
    from sklearn.decomposition import PCA

    pca = PCA(max(dims), random_state=seed).fit(base)
    b_all, q_all = pca.transform(base).astype(np.float32), pca.transform(queries).astype(np.float32)
    rows = []
    for d in tqdm(dims, desc="KD-tree vs dimension", leave=False):
        b, q = np.ascontiguousarray(b_all[:, :d]), np.ascontiguousarray(q_all[:, :d])
        row: dict[str, float] = {"dim": d}
        for label, kind in (("exact", "exact"), ("kdtree", "kdtree"), ("sklearn", "sklearn-kdtree")):
            index = build_index(kind, d).add(b)
            info: dict[str, float] = {}
            with Timer() as timer:
                index.search(q, k, stats=info.update)
            row[f"{label}_qps"] = len(q) / timer.seconds
            if kind == "kdtree":
                row["leaves_visited"], row["leaves"] = info["leaves_visited"], len(index.tree.leaf_rows)
        row["kdtree_speedup"] = row["kdtree_qps"] / row["exact_qps"]
        row["sklearn_speedup"] = row["sklearn_qps"] / row["exact_qps"]
        rows.append(row)
    return rows


__all__ = ["K", "Method", "kdtree_dimensions", "recall_at_k", "run_method"]
