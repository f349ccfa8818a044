"""The co-click graph: click counts and both kinds of edges on a hand-made log, the normalisations (the symmetric one
against SciPy's normalised Laplacian), propagation's fixed points, the controls (k-NN against scikit-learn), and the
measured gain over the plain embeddings, which neither control gives."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse import csgraph
from sklearn.neighbors import NearestNeighbors

from visual_search.clicks import ClickLog, simulate_click_log
from visual_search.embed import embed
from visual_search.errors import TopicsError
from visual_search.topics import coclick as cc


@pytest.fixture(scope="module")
def vectors(sample, encoder):
    return embed(encoder, sample.gallery_images), embed(encoder, sample.query_images)


def _log(sessions: list[tuple[int, int]], n_shown: int = 3) -> ClickLog:
    """A log of ``(query, clicked)`` sessions (-1: no click); the click is shown at position 0, the rest are fillers."""
    queries = np.array([q for q, _ in sessions])
    clicked = np.array([c for _, c in sessions])
    shown = np.tile(np.arange(n_shown), (len(sessions), 1))
    shown[:, 0] = np.maximum(clicked, 0)
    return ClickLog(query_ids=queries, shown_ids=shown, clicked_ids=clicked, positions=np.where(clicked >= 0, 0, -1))


# query 0 clicked 1 once and 2 twice; query 3 clicked 1; query 4 clicked nothing
SESSIONS = [(0, 1), (0, 2), (0, 2), (3, 1), (4, -1)]


# ---- the graph -----------------------------------------------------------------------------------


def test_click_matrix_counts_sessions_with_a_click():
    counts = cc.click_matrix(_log(SESSIONS), 5).toarray()
    expected = np.zeros((5, 5))
    expected[0, 1], expected[0, 2], expected[3, 1] = 1, 2, 1
    np.testing.assert_array_equal(counts, expected)


def test_the_two_kinds_of_edges_on_a_hand_made_log():
    log = _log(SESSIONS)
    coclick = cc.coclick_graph(log, 5, "coclick").toarray()
    expected = np.zeros((5, 5))
    expected[1, 2] = expected[2, 1] = 1 * 2  # clicked for the same query (0): the product of the counts
    np.testing.assert_array_equal(coclick, expected)
    query_click = cc.coclick_graph(log, 5, "query-click").toarray()
    expected = np.zeros((5, 5))
    for q, i, w in ((0, 1, 1), (0, 2, 2), (3, 1, 1)):
        expected[q, i] = expected[i, q] = w
    np.testing.assert_array_equal(query_click, expected)
    np.testing.assert_array_equal(cc.coclick_graph(log, 5, "both").toarray(), coclick + query_click)
    assert cc.coclick_graph(_log([(2, 2), (2, 2)]), 3).nnz == 0  # a self-click makes no edge


def test_the_coclick_graph_of_a_simulated_log_matches_a_loop_over_queries(sample):
    labels = sample.gallery_labels[:300]
    log = simulate_click_log(labels, 3_000, n_shown=10, seed=1)
    graph = cc.coclick_graph(log, 300, "coclick").toarray()
    expected = np.zeros((300, 300))
    clicked = log.clicked_ids >= 0
    for q in np.unique(log.query_ids[clicked]):
        items, counts = np.unique(log.clicked_ids[clicked & (log.query_ids == q)], return_counts=True)
        expected[np.ix_(items, items)] += np.outer(counts, counts)
    np.fill_diagonal(expected, 0)
    np.testing.assert_array_equal(graph, expected)


def test_symmetric_normalisation_is_identity_minus_scipys_normalised_laplacian():
    rng = np.random.default_rng(0)
    weights = np.triu(rng.integers(0, 4, size=(30, 30)), 1).astype(float)
    weights = weights + weights.T
    assert (weights.sum(axis=1) > 0).all()
    plain = cc.normalize_graph(sp.csr_matrix(weights), "symmetric", self_loops=False).toarray()
    np.testing.assert_allclose(plain, np.eye(30) - csgraph.laplacian(weights, normed=True), atol=1e-12)
    with_loops = cc.normalize_graph(weights, "symmetric").toarray()
    assert np.abs(np.linalg.eigvalsh(with_loops)).max() == pytest.approx(1.0)  # the GCN's propagation is a contraction
    row = cc.normalize_graph(weights, "row").toarray()
    np.testing.assert_allclose(row.sum(axis=1), 1.0)
    np.testing.assert_allclose(row, (weights + np.eye(30)) / (weights + np.eye(30)).sum(axis=1, keepdims=True))


def test_propagation_moves_towards_the_neighbours_and_leaves_isolated_nodes_alone():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    graph = np.zeros((3, 3))
    graph[0, 1] = graph[1, 0] = 1.0  # node 2 has no edge
    normalised = cc.normalize_graph(graph, "row")
    one = cc.propagate(x, normalised, alpha=0.5, steps=1)
    # row 0: 0.5 x0 + 0.5 (x0 + x1) / 2 = (0.75, 0.25), normalised
    np.testing.assert_allclose(one[0], np.array([0.75, 0.25]) / np.hypot(0.75, 0.25), atol=1e-6)
    np.testing.assert_allclose(one[2], x[2], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-6)
    assert one.dtype == np.float32
    np.testing.assert_allclose(cc.propagate(3 * x, normalised, alpha=0.5, steps=0), x, atol=1e-6)
    np.testing.assert_allclose(cc.propagate(x, normalised, alpha=0.0, steps=2), x, atol=1e-6)
    far = cc.propagate(x, normalised, alpha=1.0, steps=10)
    np.testing.assert_allclose(far[0], far[1], atol=1e-6)  # the two connected nodes meet
    no_loops = cc.normalize_graph(graph, "row", self_loops=False)
    np.testing.assert_allclose(cc.propagate(x, no_loops, alpha=1.0, steps=1)[2], x[2], atol=1e-6)  # a zero row keeps its vector


# ---- controls and statistics ---------------------------------------------------------------------


def test_knn_graph_matches_scikit_learn(vectors):
    gallery, _ = vectors
    graph = cc.knn_graph(gallery, 5)
    nn = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(gallery)
    reference = nn.kneighbors_graph(gallery, mode="connectivity")
    reference.setdiag(0)
    reference.eliminate_zeros()
    reference = reference.maximum(reference.T)
    differ = abs(graph - reference).sum()
    assert differ <= 0.01 * reference.nnz  # only near-ties at the 5th neighbour could differ (none do on the sample)
    assert (graph != graph.T).nnz == 0 and graph.diagonal().sum() == 0


def test_random_graph_has_exactly_the_edges_asked_for():
    graph = cc.random_graph(100, 700, seed=2)
    assert graph.nnz == 2 * 700 and (graph != graph.T).nnz == 0 and graph.diagonal().sum() == 0
    assert set(np.unique(graph.data)) == {1.0}
    assert (graph != cc.random_graph(100, 700, seed=2)).nnz == 0
    assert cc.random_graph(5, 10).nnz == 20  # the complete graph


def test_edge_precision_weighs_the_edges():
    graph = np.zeros((3, 3))
    graph[0, 1] = graph[1, 0] = 3.0  # same class
    graph[0, 2] = graph[2, 0] = 1.0  # different
    assert cc.edge_precision(graph, np.array([0, 0, 1])) == pytest.approx(0.75)
    assert np.isnan(cc.edge_precision(np.eye(3), np.array([0, 0, 1])))


def test_leave_one_out_precision_and_the_production_ranking_never_return_the_query(sample, vectors):
    gallery, _ = vectors
    ranking = cc.production_ranking(gallery, 10)
    assert ranking.shape == (2000, 10) and not (ranking == np.arange(2000)[:, None]).any()
    precision = cc.class_precision_at_k(gallery, sample.gallery_labels, gallery, sample.gallery_labels, 10, leave_one_out=True)
    assert precision == pytest.approx(float((sample.gallery_labels[ranking] == sample.gallery_labels[:, None]).mean()))


# ---- the measurement -----------------------------------------------------------------------------


def test_smoothing_over_clicks_beats_the_plain_embeddings_and_both_controls(encoder):
    result = cc.evaluate_coclick(encoder=encoder)  # fast mode: one log of 20,000 sessions
    plain, gallery_plain = result["P@10 plain"], result["P@10 plain gallery"]
    held_out, in_graph = np.array(result["P@10"]["clicks"]), np.array(result["P@10 gallery"]["clicks"])
    assert (held_out[:, 0] == plain).all() and (in_graph[:, 0] == gallery_plain).all()  # 0 steps: the plain embedding
    # measured: held-out 0.782 -> 0.797 (alpha 0.5, 2 steps); gallery queries 0.765 -> 0.811 (alpha 0.75, 2 steps)
    assert held_out.max() > plain + 0.008
    assert in_graph.max() > gallery_plain + 0.03
    assert result["best"]["P@10"] == held_out.max()
    # the clicks know more than the embedding does: edge precision 0.90 against the k-NN graph's 0.78 and chance's 0.10
    precision = result["edge precision"]
    assert precision["clicks"] > precision["knn"] + 0.05 and precision["knn"] > precision["random"] + 0.5
    assert np.array(result["P@10"]["knn"])[:, 1:].max() < plain + 0.005  # smoothing alone: no gain (measured -0.001 at best)
    assert result["P@10"]["random"][-1][-1] < plain - 0.02  # smoothing over noise blurs the classes (measured -0.043)
    assert result["edges"]["random"] == result["edges"]["clicks"]
    assert 0.7 < result["clicks"] / result["n_sessions"] < 0.9 and result["nodes with clicks"] > 0.95


def test_bad_input_is_refused_with_its_name(sample, vectors):
    gallery, _ = vectors
    log = _log(SESSIONS)
    graph = cc.normalize_graph(cc.coclick_graph(log, 5), "row")
    x = np.eye(5, dtype=np.float32)
    cases = [
        (lambda: cc.click_matrix("log", 5), "log must be a visual_search.clicks.ClickLog"),
        (lambda: cc.click_matrix(log, 3), "log.query_ids must be image ids in 0..2"),
        (lambda: cc.click_matrix(_log([(0, 4)]), 3), "log.clicked_ids must be image ids in 0..2"),
        (lambda: cc.click_matrix(log, 0), "n_images"),
        (lambda: cc.coclick_graph(log, 5, "bipartite"), "kind must be one of"),
        (lambda: cc.normalize_graph(np.ones((2, 3))), "graph must be a non-empty square matrix"),
        (lambda: cc.normalize_graph(-np.ones((2, 2))), "graph must have non-negative edge weights"),
        (lambda: cc.normalize_graph(np.full((2, 2), np.nan)), "graph contains NaN"),
        (lambda: cc.normalize_graph("graph"), "graph must be a square numeric matrix"),
        (lambda: cc.normalize_graph(np.ones((2, 2)), "mean"), "mode must be one of symmetric, row"),
        (lambda: cc.normalize_graph(np.ones((2, 2)), self_loops=1), "self_loops must be True or False"),
        (lambda: cc.propagate(x[:4], graph), r"graph must be \[4, 4\]"),
        (lambda: cc.propagate(x, graph, alpha=1.5), "alpha"),
        (lambda: cc.propagate(x, graph, steps=11), "steps"),
        (lambda: cc.propagate(x.astype(np.int64), graph), "vectors must be a non-empty float array"),
        (lambda: cc.propagate(np.zeros((5, 2), np.float32), graph), "zero vector"),
        (lambda: cc.knn_graph(gallery, 0), "k must"),
        (lambda: cc.knn_graph(gallery[:3], 3), "k must"),
        (lambda: cc.random_graph(4, 7), "n_edges"),
        (lambda: cc.random_graph(1, 0), "n_images"),
        (lambda: cc.edge_precision(np.ones((3, 3)), np.array([0, 1])), r"labels must be an integer array \[3\]"),
        (lambda: cc.class_precision_at_k(gallery, sample.gallery_labels, gallery[:, :4], sample.gallery_labels), "columns"),
        (lambda: cc.class_precision_at_k(gallery[:5], sample.gallery_labels[:5], gallery, sample.gallery_labels, leave_one_out=True), "leave_one_out"),
        (lambda: cc.class_precision_at_k(gallery, sample.gallery_labels, gallery, sample.gallery_labels, k=2_000, leave_one_out=True), "k must"),
        (lambda: cc.production_ranking(gallery[:3], 3), "n_shown"),
        (lambda: cc.evaluate_coclick(n_sessions=0, encoder="cnn"), "n_sessions"),
        (lambda: cc.evaluate_coclick(alphas=(), encoder="cnn"), "alphas"),
        (lambda: cc.evaluate_coclick(alphas="0.5", encoder="cnn"), "alphas"),
        (lambda: cc.evaluate_coclick(alphas=(0.0,), encoder="cnn"), "alphas"),
        (lambda: cc.evaluate_coclick(steps=(1, 11), encoder="cnn"), "steps"),
        (lambda: cc.evaluate_coclick(kind="pins", encoder="cnn"), "kind"),
        (lambda: cc.evaluate_coclick(mode="mean", encoder="cnn"), "mode"),
        (lambda: cc.evaluate_coclick(n_shown=2_000, encoder="cnn"), "n_shown"),
        (lambda: cc.evaluate_coclick(position_bias=-1.0, encoder="cnn"), "position_bias"),
        (lambda: cc.evaluate_coclick(repeats=0, encoder="cnn"), "repeats"),
        (lambda: cc.evaluate_coclick(k=0, encoder="cnn"), "k must"),
        (lambda: cc.evaluate_coclick(seed=2**32 - 1, repeats=2, encoder="cnn"), "seed \\+ repeats"),
        (lambda: cc.evaluate_coclick(sample="sample"), "sample must be"),
        (lambda: cc.evaluate_coclick(encoder="cnn"), "encoder must be"),
    ]
    for call, match in cases:
        with pytest.raises(TopicsError, match=match):
            call()
