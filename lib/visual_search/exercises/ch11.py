"""Checks for chapter 11, the senior talking points: the cheapest moderation threshold, a box's IoU, the hybrid tag
score, and graph smoothing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from visual_search.exercises._core import Mismatch, call, checker, expect_close
from visual_search.topics import coclick, metadata, moderation, smart_crop


@checker
def cheapest_threshold(answer: Callable[[np.ndarray, np.ndarray, float, float], float], rng: np.random.Generator) -> int:
    """``answer(scores, is_blocked, cost_fp, cost_fn)`` -> a threshold whose cost ``cost_fp * FP + cost_fn * FN`` is the lowest.

    Every threshold between two neighbouring scores makes the same decisions, so the check
    compares the cost of the answer's decisions (flag ``score >= threshold``) with the lowest
    cost any threshold reaches (``topics.moderation.choose_threshold``), not the number itself.
    """
    for i in range(10):
        n = int(rng.integers(4, 40))
        is_blocked = rng.random(n) < rng.uniform(0.1, 0.5)
        # scores that mostly rank the blocked images higher, with overlap, and some ties
        scores = np.clip(np.round(rng.normal(np.where(is_blocked, 0.7, 0.3), 0.2), int(rng.choice([2, 3]))), 0.0, 1.0)
        cost_fp, cost_fn = float(rng.choice([1.0, 2.0])), float(rng.choice([0.5, 1.0, 5.0, 10.0, 50.0]))
        case = f"case {i + 1} ({n} images, {int(is_blocked.sum())} blocked, cost_fp {cost_fp:g}, cost_fn {cost_fn:g})"
        got = call(answer, scores.copy(), is_blocked.copy(), cost_fp, cost_fn, case=case)
        if isinstance(got, (bool, np.bool_)) or not isinstance(got, (int, float, np.integer, np.floating)) or not np.isfinite(got):
            raise Mismatch(f"{case}: expected one threshold (a number), got {got!r}")
        flagged = scores >= float(got)
        cost = cost_fp * int((flagged & ~is_blocked).sum()) + cost_fn * int((~flagged & is_blocked).sum())
        best = moderation.choose_threshold(scores, is_blocked, cost_fp, cost_fn)["cost"]
        expect_close(cost, best, case + ", the cost of your threshold's decisions",
                     "flag score >= t; try every distinct score as t (and a t above every score: flag nothing), "
                     "count FP and FN at each, and keep the t with the lowest cost_fp * FP + cost_fn * FN")
    return 10


@checker
def iou(answer: Callable[[tuple, tuple], float], rng: np.random.Generator) -> int:
    """``answer(a, b)`` -> the IoU of two boxes ``(left, top, right, bottom)``, right and bottom exclusive."""
    for i in range(10):
        a = rng.integers(0, 20, size=2)
        a = (int(a[0]), int(a[1]), int(a[0] + rng.integers(1, 15)), int(a[1] + rng.integers(1, 15)))
        b = rng.integers(0, 20, size=2)
        b = (int(b[0]), int(b[1]), int(b[0] + rng.integers(1, 15)), int(b[1] + rng.integers(1, 15)))
        want = float(smart_crop.box_iou(np.array([a]), np.array([b]))[0])
        case = f"case {i + 1} (a={a}, b={b})"
        expect_close(call(answer, a, b, case=case), want, case,
                     "the overlap is max(0, min(right) - max(left)) x max(0, min(bottom) - max(top)); "
                     "IoU = overlap / (area a + area b - overlap)")
    return 10


@checker
def hybrid_score(answer: Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray], rng: np.random.Generator) -> int:
    """``answer(similarities, query_tags, gallery_tags, weight)`` -> the hybrid scores ``[Q, G]``."""
    for i in range(8):
        q, g = int(rng.integers(1, 5)), int(rng.integers(2, 12))
        sims = rng.uniform(-1, 1, size=(q, g))
        qt, gt = rng.integers(0, 5, size=q), rng.integers(0, 5, size=g)
        weight = float(rng.choice([0.0, 0.05, 0.1, 0.5, 3.0]))
        want = metadata.hybrid_scores(sims, qt, gt, weight)
        case = f"case {i + 1} ({q} queries, {g} candidates, weight {weight:g})"
        expect_close(call(answer, sims.copy(), qt.copy(), gt.copy(), weight, case=case), want, case,
                     "similarity + weight where the candidate's tag equals the query's (broadcast query_tags[:, None] == gallery_tags[None, :])")
    return 8


@checker
def smooth(answer: Callable[[np.ndarray, np.ndarray, float, int], np.ndarray], rng: np.random.Generator) -> int:
    """``answer(vectors, graph, alpha, steps)`` -> ``steps`` times ``x <- unit((1 - alpha) x + alpha A x)``, from unit rows."""
    for i in range(8):
        n, d = int(rng.integers(3, 10)), int(rng.integers(2, 6))
        vectors = rng.normal(size=(n, d)).astype(np.float32)
        graph = np.triu((rng.random((n, n)) < 0.4).astype(np.float64), 1)
        graph = graph + graph.T
        graph = coclick.normalize_graph(sp.csr_matrix(graph)).toarray()
        alpha, steps = float(rng.choice([0.25, 0.5, 0.8])), int(rng.integers(0, 4))
        want = coclick.propagate(vectors, graph, alpha, steps)
        case = f"case {i + 1} ({n} nodes, alpha {alpha:g}, {steps} steps)"
        expect_close(np.asarray(call(answer, vectors.copy(), graph.copy(), alpha, steps, case=case), dtype=np.float64), want, case,
                     "normalise each row to length 1 first; then, steps times, mix (1 - alpha) x + alpha (graph @ x) and "
                     "normalise the rows again", )
    return 8
