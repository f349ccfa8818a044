"""A co-click graph (GNN-lite): smooth the gallery embeddings over what users clicked together, PinSage-style.

Clicks carry a judgement the pixels do not: a user who searched from a pullover and
clicked two shirts says those two look alike *to a person*. Chapter 08's click log (a
``visual_search.clicks.ClickLog``: per session a query image, the results shown, the one
clicked) becomes a graph over the gallery:

* **co-click** edges (``kind="coclick"``): two gallery images clicked for the same query
  image, weighted by how often (``B^T B`` off its diagonal, with ``B`` the query-by-item
  click counts): the item-item graph of "people who clicked this also clicked";
* **query-click** edges (``kind="query-click"``): the query image and the image clicked
  for it (``B + B^T``). Here the queries are gallery images ("more like this" on a product
  page), so the bipartite query-gallery graph is an image-image graph too;
* ``kind="both"``: their sum (the default).

The graph is normalised with self-loops (``normalize_graph``: ``D^-1/2 (A + I) D^-1/2``,
the GCN's symmetric form, or the row-stochastic ``D^-1 (A + I)``, a mean over the
neighbourhood), and each gallery embedding moves towards its neighbours (``propagate``):
``x' = unit((1 - alpha) x + alpha A x)``, once or twice. One step mixes in the neighbours,
two steps the neighbours' neighbours. No parameters are learned: it is one GCN layer with
its weight matrix fixed to the identity, or PinSage's aggregation without the learning.

``evaluate_coclick`` simulates a click log on the sample gallery (the production ranking is
the frozen embedding's own top results, so users only ever see, and click, near
neighbours), smooths, and measures P@k by class of the held-out queries (never in the graph:
they keep their plain embedding) and of the gallery images as queries (in the graph;
leave-one-out). Two controls tell what the gain comes from: the embedding's own k-NN graph
(``knn_graph``, about as many edges: smoothing alone, no user judgement) and a random
graph of as many edges (``random_graph``: smoothing over noise, which blurs the classes).

What a real GNN (PinSage, GraphSAGE) adds over this:

* **learned aggregation**: trained weights decide how much of each neighbour to take and
  how to combine it with the node, instead of one fixed ``alpha``;
* **the neighbours' features**: each layer transforms the neighbours' features (pixels,
  text, metadata) through learned layers, not only averages the final embeddings;
* **inductive on new nodes**: a model of "embed a node from its features and its sampled
  neighbours" embeds a new upload, or a query, that was never in the graph; here a new
  image has no clicks, so it keeps its plain embedding (the held-out queries show it);
* **importance-based neighbourhood sampling**: PinSage picks a node's top neighbours by
  visit counts of short random walks, so a billion-node graph is never loaded whole and
  hub nodes do not drown their neighbours; here every edge is used.

Every bad input raises ``TopicsError`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from visual_search import config, data
from visual_search._checks import check_int, check_real, check_seed
from visual_search.clicks import ClickLog, simulate_click_log
from visual_search.embed import embed
from visual_search.errors import TopicsError
from visual_search.index import exact_search
from visual_search.models import Encoder
from visual_search.topics._validate import as_array, class_precision_at_k, drop_self, encoder_or_default, sample_or_default
from visual_search.topics._validate import vectors as check_vectors

#: The graphs ``coclick_graph`` builds.
KINDS = ("coclick", "query-click", "both")
#: The normalisations ``normalize_graph`` knows.
MODES = ("symmetric", "row")
#: ``evaluate_coclick``'s graphs: the clicks and the two controls.
GRAPHS = ("clicks", "knn", "random")
#: The alphas and propagation steps ``evaluate_coclick`` sweeps by default.
ALPHAS = (0.25, 0.5, 0.75)
STEPS = (0, 1, 2)


# ---- checks --------------------------------------------------------------------------------------


def _labels(labels: object, name: str, length: int) -> np.ndarray:
    array = as_array(labels)
    if array is None or array.shape != (length,) or array.dtype.kind not in "iu":
        got = f"{array.dtype} {list(array.shape)}" if array is not None else type(labels).__name__
        raise TopicsError(f"{name} must be an integer array [{length}] (one per vector), got {got}")
    return array.astype(np.int64)


def _graph(graph: object, name: str = "graph", n: int | None = None) -> sp.csr_matrix:
    """A square non-negative finite matrix (scipy sparse or numpy), ``[n, n]`` if given, as float64 CSR."""
    if sp.issparse(graph):
        matrix = sp.csr_matrix(graph, dtype=np.float64)
    elif isinstance(graph, np.ndarray) and graph.ndim == 2 and graph.dtype.kind in "iuf":
        matrix = sp.csr_matrix(graph.astype(np.float64))
    else:
        got = f"{graph.dtype} {list(graph.shape)}" if isinstance(graph, np.ndarray) else type(graph).__name__
        raise TopicsError(f"{name} must be a square numeric matrix (numpy or scipy.sparse), got {got}")
    if matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise TopicsError(f"{name} must be a non-empty square matrix [N, N], got {list(matrix.shape)}")
    if n is not None and matrix.shape[0] != n:
        raise TopicsError(f"{name} must be [{n}, {n}] (one row per vector), got {list(matrix.shape)}")
    if not np.isfinite(matrix.data).all():
        raise TopicsError(f"{name} contains NaN or infinity")
    if matrix.nnz and matrix.data.min() < 0:
        raise TopicsError(f"{name} must have non-negative edge weights, got {matrix.data.min()}")
    return matrix


def _unit(x: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Unit rows of ``x``; a row that cancelled to zero keeps its ``fallback`` row (a zero vector has no direction)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    out = x / np.where(norms == 0, 1.0, norms)
    out[zero] = fallback[zero]
    return out.astype(np.float32)


def _symmetric_without_diagonal(matrix: sp.spmatrix) -> sp.csr_matrix:
    matrix = sp.csr_matrix(matrix, dtype=np.float64)
    matrix.setdiag(0)
    matrix.eliminate_zeros()
    return matrix


# ---- the graph -----------------------------------------------------------------------------------


def click_matrix(log: ClickLog, n_images: int) -> sp.csr_matrix:
    """``B[q, i]``: how many sessions from query image ``q`` clicked gallery image ``i``, float64 CSR ``[N, N]``.

    Sessions without a click (``clicked_ids == -1``) add nothing.

    Args:
        log: a ``ClickLog`` whose query and clicked ids are images 0..n_images-1.
        n_images: the number of images, >= 1.

    Raises:
        TopicsError: for a log that is not a ``ClickLog`` or refers to an image >= n_images.
    """
    if not isinstance(log, ClickLog):
        raise TopicsError(f"log must be a visual_search.clicks.ClickLog, got {type(log).__name__}")
    n_images = check_int(n_images, "n_images", low=1, error=TopicsError)
    clicked = log.clicked_ids >= 0
    queries, items = log.query_ids[clicked], log.clicked_ids[clicked]
    for name, ids in (("log.query_ids", queries), ("log.clicked_ids", items)):
        if len(ids) and ids.max() >= n_images:
            raise TopicsError(f"{name} must be image ids in 0..{n_images - 1}, got {int(ids.max())}")
    return sp.csr_matrix((np.ones(len(items)), (queries, items)), shape=(n_images, n_images))  # duplicates are summed


def coclick_graph(log: ClickLog, n_images: int, kind: str = "both") -> sp.csr_matrix:
    """The image-image graph of a click log: symmetric, weighted by counts, no self-edges; float64 CSR ``[N, N]``.

    Args:
        log: a ``ClickLog`` over images 0..n_images-1 (query and clicked images alike).
        n_images: the number of images.
        kind: ``"coclick"`` (``B^T B``: pairs clicked for the same query image, each weighted
            by the product of their click counts there, summed over queries),
            ``"query-click"`` (``B + B^T``: the query image and what was clicked for it) or
            ``"both"`` (their sum).

    Raises:
        TopicsError: for a bad log, count or kind.
    """
    if kind not in KINDS:
        raise TopicsError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    clicks = click_matrix(log, n_images)
    graph = sp.csr_matrix((n_images, n_images), dtype=np.float64)
    if kind in ("coclick", "both"):
        graph = graph + clicks.T @ clicks
    if kind in ("query-click", "both"):
        graph = graph + clicks + clicks.T
    return _symmetric_without_diagonal(graph)


def normalize_graph(graph: sp.spmatrix | np.ndarray, mode: str = "symmetric", self_loops: bool = True) -> sp.csr_matrix:
    """The propagation matrix: ``D^-1/2 (A + I) D^-1/2`` (``"symmetric"``) or ``D^-1 (A + I)`` (``"row"``).

    Self-loops keep each node's own embedding in the mix (and give an isolated node
    itself as its only neighbour, so it does not move). Without them a node with no edges
    has a zero row, and ``propagate`` keeps its embedding. The row form averages the
    neighbours (rows sum to 1); the symmetric form, the GCN's, also damps hubs, whose many
    clicks would otherwise pull every neighbour towards them.

    Args:
        graph: non-negative ``[N, N]`` weights (scipy sparse or numpy).
        mode: one of ``MODES``.
        self_loops: add the identity first.

    Returns:
        float64 CSR ``[N, N]``.
    """
    graph = _graph(graph)
    if mode not in MODES:
        raise TopicsError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(self_loops, (bool, np.bool_)):
        raise TopicsError(f"self_loops must be True or False, got {self_loops!r}")
    if self_loops:
        graph = graph + sp.eye(graph.shape[0], format="csr")
    degree = np.asarray(graph.sum(axis=1)).ravel()
    inverse = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    if mode == "row":
        return sp.csr_matrix(sp.diags(inverse) @ graph)
    root = np.sqrt(inverse)
    return sp.csr_matrix(sp.diags(root) @ graph @ sp.diags(root))


def propagate(vectors: np.ndarray, graph: sp.spmatrix | np.ndarray, alpha: float = 0.5, steps: int = 1) -> np.ndarray:
    """Smooth embeddings over a graph: ``steps`` times ``x <- unit((1 - alpha) x + alpha A x)``.

    Args:
        vectors: float ``[N, D]`` embeddings, one per graph node.
        graph: ``[N, N]``, normally from ``normalize_graph``.
        alpha: how far each step moves towards the neighbours, 0..1 (0: not at all).
        steps: propagation steps, 0..10 (0 returns the unit-normalised input).

    Returns:
        float32 ``[N, D]`` unit rows (a row that cancels to zero keeps its previous value).
    """
    vectors = check_vectors(vectors)
    graph = _graph(graph, n=len(vectors))
    alpha = check_real(alpha, "alpha", low=0.0, high=1.0, error=TopicsError)
    steps = check_int(steps, "steps", low=0, high=10, error=TopicsError)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise TopicsError("vectors: a zero vector has no direction, so no cosine similarity")
    x = (vectors / norms).astype(np.float32)
    for _ in range(steps):
        x = _unit((1.0 - alpha) * x + alpha * (graph @ x), fallback=x)
    return x


# ---- controls and statistics ---------------------------------------------------------------------


def knn_graph(vectors: np.ndarray, k: int) -> sp.csr_matrix:
    """The embedding's own k-nearest-neighbour graph (cosine, symmetrised, weight 1 an edge): smoothing without clicks.

    Args:
        vectors: float ``[N, D]``.
        k: neighbours per node, 1..N-1.

    Returns:
        float64 CSR ``[N, N]``, 0/1 weights, no self-edges.
    """
    vectors = check_vectors(vectors)
    k = check_int(k, "k", low=1, high=len(vectors) - 1, error=TopicsError)
    _, ids = exact_search(vectors, vectors, k + 1, metric="cosine")
    neighbours = drop_self(ids, k)
    rows = np.repeat(np.arange(len(vectors)), k)
    graph = sp.csr_matrix((np.ones(rows.size), (rows, neighbours.ravel())), shape=(len(vectors),) * 2)
    graph = _symmetric_without_diagonal(graph.maximum(graph.T))
    graph.data[:] = 1.0
    return graph


def random_graph(n_images: int, n_edges: int, seed: int = 0) -> sp.csr_matrix:
    """``n_edges`` distinct undirected edges between uniformly random image pairs, weight 1: smoothing over noise.

    Args:
        n_images: nodes, >= 2.
        n_edges: undirected edges, 0..N (N - 1) / 2.
        seed: seeds the edges.

    Returns:
        float64 CSR ``[N, N]``, symmetric, no self-edges.
    """
    n_images = check_int(n_images, "n_images", low=2, error=TopicsError)
    n_edges = check_int(n_edges, "n_edges", low=0, high=n_images * (n_images - 1) // 2, error=TopicsError)
    rng = np.random.default_rng(check_seed(seed, "seed", error=TopicsError))
    edges = np.empty((0, 2), dtype=np.int64)
    while len(edges) < n_edges:
        draw = np.sort(rng.integers(0, n_images, size=(2 * (n_edges - len(edges)) + 16, 2)), axis=1)
        both = np.concatenate([edges, draw[draw[:, 0] != draw[:, 1]]])
        _, first = np.unique(both, axis=0, return_index=True)
        edges = both[np.sort(first)]
    edges = edges[:n_edges]
    upper = sp.csr_matrix((np.ones(n_edges), (edges[:, 0], edges[:, 1])), shape=(n_images, n_images))
    return sp.csr_matrix(upper + upper.T)


def edge_precision(graph: sp.spmatrix | np.ndarray, labels: np.ndarray) -> float:
    """The share of the graph's off-diagonal edge weight that joins two images of the same class (NaN without edges).

    The number that predicts whether smoothing helps: above the embedding's own P@k, the
    graph knows something the embedding does not.
    """
    graph = _symmetric_without_diagonal(_graph(graph))
    labels = _labels(labels, "labels", graph.shape[0])
    coo = graph.tocoo()
    total = coo.data.sum()
    return float(coo.data[labels[coo.row] == labels[coo.col]].sum() / total) if total > 0 else float("nan")


# ---- the measurement -----------------------------------------------------------------------------


def production_ranking(vectors: np.ndarray, n_shown: int) -> np.ndarray:
    """What the simulated users are shown: each gallery image's ``n_shown`` nearest other gallery images, int64 ``[N, n_shown]``."""
    vectors = check_vectors(vectors)
    n_shown = check_int(n_shown, "n_shown", low=1, high=len(vectors) - 1, error=TopicsError)
    _, ids = exact_search(vectors, vectors, n_shown + 1, metric="cosine")
    return drop_self(ids, n_shown)


def evaluate_coclick(
    n_sessions: int | None = None,
    alphas: Sequence[float] = ALPHAS,
    steps: Sequence[int] = STEPS,
    kind: str = "both",
    mode: str = "symmetric",
    n_shown: int = 10,
    position_bias: float = 1.0,
    repeats: int | None = None,
    k: int = 10,
    seed: int = 0,
    encoder: Encoder | None = None,
    sample: data.Sample | None = None,
) -> dict[str, object]:
    """Smooth the sample gallery over a simulated co-click graph and its two controls; P@k for each alpha and step count.

    Per repeat r (seed ``seed + r``): ``simulate_click_log`` over the 2,000 gallery images
    (queries are gallery images, the page is ``production_ranking``), ``coclick_graph``,
    ``normalize_graph``; the k-NN control with about as many edges (``round(edges / N)``
    neighbours each, symmetrised) and the random control with exactly as many. Each graph
    smooths the gallery for every ``(alpha, steps)``; P@k is measured for the held-out
    queries (plain embeddings) against the smoothed gallery, and for the gallery images as
    queries, smoothed, leave-one-out. Results are means over repeats.

    Args:
        n_sessions: sessions in each click log (default 10 per gallery image: 20,000).
        alphas: the alphas to sweep, each in (0, 1].
        steps: the step counts to sweep, each 0..10 (0: the plain embedding).
        kind, mode: the graph (``coclick_graph``) and its normalisation (``normalize_graph``).
        n_shown, position_bias: the simulated page and users (``simulate_click_log``).
        repeats: click logs averaged (default 1 in fast mode, 5 otherwise).
        k: the P@k cut-off, 1..100.
        seed: the first repeat's seed.
        encoder: default the committed CNN (``load_pretrained()``).
        sample: default ``data.load_sample()``.

    Returns:
        ``{"n_sessions", "clicks" (sessions with a click, mean), "edges": {graph: undirected
        edges}, "edge precision": {graph: share of edge weight within a class},
        "nodes with clicks" (share of gallery images with an edge in the click graph),
        "alphas", "steps", "P@k plain", "P@k plain gallery",
        "P@k": {graph: [[per step] per alpha]} (held-out queries),
        "P@k gallery": the same for gallery queries, "best": {"alpha", "steps", "P@k",
        "P@k gallery"} (the click graph's best setting for held-out queries)}`` with k
        filled in and ``graph`` one of ``GRAPHS``.
    """
    sample = sample_or_default(sample)
    n_gallery = len(sample.gallery_images)
    n_sessions = check_int(10 * n_gallery if n_sessions is None else n_sessions, "n_sessions", low=1, high=10_000_000, error=TopicsError)
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Sequence) or not alphas:
        raise TopicsError(f"alphas must be a non-empty sequence of numbers in (0, 1], got {alphas!r}")
    alphas = [check_real(a, "alphas", low=0.0, high=1.0, low_open=True, error=TopicsError) for a in alphas]
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise TopicsError(f"steps must be a non-empty sequence of integers in 0..10, got {steps!r}")
    steps = [check_int(s, "steps", low=0, high=10, error=TopicsError) for s in steps]
    if kind not in KINDS:
        raise TopicsError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if mode not in MODES:
        raise TopicsError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    n_shown = check_int(n_shown, "n_shown", low=1, high=n_gallery - 1, error=TopicsError)
    position_bias = check_real(position_bias, "position_bias", low=0.0, high=100.0, error=TopicsError)
    repeats = check_int((1 if config.is_fast() else 5) if repeats is None else repeats, "repeats", low=1, high=100, error=TopicsError)
    k = check_int(k, "k", low=1, high=100, error=TopicsError)
    seed = check_seed(seed, "seed", error=TopicsError)
    if seed + repeats - 1 > 2**32 - 1:
        raise TopicsError(f"seed + repeats - 1 must be a seed (<= {2**32 - 1}), got {seed + repeats - 1}")

    encoder = encoder_or_default(encoder)

    gallery = embed(encoder, sample.gallery_images, progress=False)
    queries = embed(encoder, sample.query_images, progress=False)
    labels, query_labels = sample.gallery_labels, sample.query_labels
    ranking = production_ranking(gallery, n_shown)
    plain = class_precision_at_k(queries, query_labels, gallery, labels, k)
    plain_gallery = class_precision_at_k(gallery, labels, gallery, labels, k, leave_one_out=True)

    shape = (repeats, len(alphas), len(steps))
    held_out = {g: np.zeros(shape) for g in GRAPHS}
    in_graph = {g: np.zeros(shape) for g in GRAPHS}
    edges = {g: 0.0 for g in GRAPHS}
    precision = {g: 0.0 for g in GRAPHS}
    clicks = covered = 0.0
    for r in range(repeats):
        log = simulate_click_log(labels, n_sessions, n_shown=n_shown, position_bias=position_bias, seed=seed + r, ranking=ranking)
        clicked = coclick_graph(log, n_gallery, kind)
        n_edges = clicked.nnz // 2
        graphs = {
            "clicks": clicked,
            "knn": knn_graph(gallery, max(1, min(n_gallery - 1, round(n_edges / n_gallery)))),
            "random": random_graph(n_gallery, n_edges, seed=seed + r),
        }
        clicks += float((log.clicked_ids >= 0).sum()) / repeats
        covered += float(np.mean(clicked.getnnz(axis=1) > 0)) / repeats
        for name, graph in graphs.items():
            edges[name] += graph.nnz / 2 / repeats
            precision[name] += edge_precision(graph, labels) / repeats
            normalised = normalize_graph(graph, mode)
            for a, alpha in enumerate(alphas):
                for s, n_steps in enumerate(steps):
                    smoothed = propagate(gallery, normalised, alpha, n_steps)
                    held_out[name][r, a, s] = class_precision_at_k(queries, query_labels, smoothed, labels, k)
                    in_graph[name][r, a, s] = class_precision_at_k(smoothed, labels, smoothed, labels, k, leave_one_out=True)

    key = f"P@{k}"
    mean_held_out = {g: held_out[g].mean(axis=0) for g in GRAPHS}
    a, s = np.unravel_index(int(np.argmax(mean_held_out["clicks"])), mean_held_out["clicks"].shape)
    return {
        "n_sessions": n_sessions,
        "clicks": clicks,
        "edges": edges,
        "edge precision": precision,
        "nodes with clicks": covered,
        "alphas": alphas,
        "steps": steps,
        f"{key} plain": plain,
        f"{key} plain gallery": plain_gallery,
        key: {g: mean_held_out[g].tolist() for g in GRAPHS},
        f"{key} gallery": {g: in_graph[g].mean(axis=0).tolist() for g in GRAPHS},
        "best": {"alpha": alphas[a], "steps": steps[s], key: float(mean_held_out["clicks"][a, s]),
                 f"{key} gallery": float(in_graph["clicks"].mean(axis=0)[a, s])},
        "repeats": repeats,
    }


__all__ = [
    "ALPHAS",
    "GRAPHS",
    "KINDS",
    "MODES",
    "STEPS",
    "class_precision_at_k",
    "click_matrix",
    "coclick_graph",
    "edge_precision",
    "evaluate_coclick",
    "knn_graph",
    "normalize_graph",
    "production_ranking",
    "propagate",
    "random_graph",
]
