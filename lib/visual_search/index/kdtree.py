"""KD-tree: split space at the median, one coordinate at a time; search exactly with pruning.

**Build.** The root takes all points, picks the coordinate with the widest
spread and splits at its median, so each child gets half. Recurse until a node
holds at most ``leaf_size`` points. Median splits give a balanced tree of depth
``ceil(log2(N / leaf_size))``, stored implicitly (node i has children 2i+1 and
2i+2), so it needs no pointers.

**Search (exact).** Descend to the leaf that contains the query, then
*backtrack*: a sibling subtree can only hold a closer point if the query's
distance to the splitting plane is smaller than the current k-th best
distance; otherwise the whole subtree is *pruned*. ``search_recursive`` is
that textbook algorithm, one query at a time, for reading.

``search`` runs the same branch-and-bound for all queries at once, with no
Python loop over queries or nodes:

1. descend every query to its home leaf and scan it; its k-th distance is a
   radius that the true k-th neighbour cannot exceed;
2. walk the tree top-down, level by level, keeping only the (query, node) pairs
   whose bounding box lies closer than that radius: whole subtrees are pruned
   at once;
3. scan the surviving leaves nearest box first, shrinking each query's radius
   as better points turn up, so later leaves are often skipped.

Both give the exact answer.

**The curse of dimensionality.** In 2-8 dimensions a query visits a handful of
leaves. In 784 dimensions every box is close to every query, nothing is
pruned, and the tree is slower than a linear scan (chapter 05 measures this).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from visual_search.errors import VectorIndexError
from visual_search.index.base import StaticIndex
from visual_search.index.kernels import merge_topk
from visual_search.index.registry import register
from visual_search.index.validation import as_float32_matrix, check_k, positive_int


@dataclass
class KDTree:
    """The built tree, stored implicitly: node i has children 2i+1 and 2i+2, and the
    last ``2**depth`` nodes are the leaves.

    ``split_dim``/``split_val`` per internal node; ``leaf_rows[j]`` the rows in leaf
    j, padded with -1; ``node_lo``/``node_hi`` every node's bounding box (of the
    points below it, which is tighter than the cell the splits define)."""

    split_dim: np.ndarray  # int64 [n_internal]
    split_val: np.ndarray  # float32 [n_internal]
    leaf_rows: np.ndarray  # int64 [n_leaves, max_leaf]
    node_lo: np.ndarray  # float32 [n_internal + n_leaves, dim]
    node_hi: np.ndarray  # float32 [n_internal + n_leaves, dim]

    @property
    def depth(self) -> int:
        return int(np.log2(len(self.leaf_rows)))

    @property
    def n_internal(self) -> int:
        return len(self.split_dim)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.split_dim, self.split_val, self.leaf_rows, self.node_lo, self.node_hi))


def build_kdtree(x: np.ndarray, leaf_size: int) -> KDTree:
    """Median-split KD-tree over the rows of ``x`` (see the module docstring)."""
    n = len(x)
    # Enough levels for leaves of at most leaf_size points, but never more leaves than points.
    depth = max(0, min(int(np.ceil(np.log2(max(n, 1) / leaf_size))), int(np.floor(np.log2(max(n, 1))))))
    perm = np.arange(n)
    segments = [(0, n)]  # node order: level by level, left to right
    split_dim = np.zeros(2**depth - 1, np.int64)
    split_val = np.zeros(2**depth - 1, np.float32)
    node = 0
    for _ in range(depth):
        next_segments = []
        for start, end in segments:
            part = x[perm[start:end]]
            dim = int(np.argmax(part.max(axis=0) - part.min(axis=0)))
            mid = (end - start) // 2
            order = np.argpartition(part[:, dim], mid)  # left half <= median <= right half
            perm[start:end] = perm[start:end][order]
            split_dim[node], split_val[node] = dim, x[perm[start + mid], dim]
            next_segments += [(start, start + mid), (start + mid, end)]
            node += 1
        segments = next_segments
    width = max(end - start for start, end in segments)
    leaf_rows = np.full((len(segments), width), -1, np.int64)
    node_lo = np.empty((2 * len(segments) - 1, x.shape[1]), np.float32)
    node_hi = np.empty_like(node_lo)
    first_leaf = len(segments) - 1
    for j, (start, end) in enumerate(segments):
        leaf_rows[j, : end - start] = perm[start:end]
        node_lo[first_leaf + j], node_hi[first_leaf + j] = x[perm[start:end]].min(axis=0), x[perm[start:end]].max(axis=0)
    for node in range(first_leaf - 1, -1, -1):  # a parent's box encloses its children's
        node_lo[node] = np.minimum(node_lo[2 * node + 1], node_lo[2 * node + 2])
        node_hi[node] = np.maximum(node_hi[2 * node + 1], node_hi[2 * node + 2])
    return KDTree(split_dim, split_val, leaf_rows, node_lo, node_hi)


def box_gap(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Squared distance from each point ``q[i]`` to the box ``[lo[i], hi[i]]`` (0 inside it):
    a lower bound on the distance to anything in the box."""
    gap = np.maximum(lo - q, 0) + np.maximum(q - hi, 0)
    return np.einsum("ij,ij->i", gap, gap)


def _merge(best_keys, best_rows, who, keys, rows, k):
    """Fold new (keys, rows) into the running top-k of queries ``who`` (one row each)."""
    best_keys[who], best_rows[who] = merge_topk([best_keys[who], keys], [best_rows[who], rows], k)


def branch_and_bound(x_padded: np.ndarray, tree: KDTree, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact k-NN for all queries at once (see the module docstring).

    Args:
        x_padded: the stored vectors plus one final row of inf (what padding rows -1 point at).
        tree: from ``build_kdtree``.
        q: float32 ``[nq, dim]``.
        k: neighbours per query.

    Returns:
        ``(squared distances [nq, k], rows [nq, k], mean leaves scanned per query)``, ascending.
    """
    nq, everyone = len(q), np.arange(len(q))
    best_keys = np.full((nq, k), np.inf, np.float32)
    best_rows = np.full((nq, k), -1, np.int64)

    def scan(who: np.ndarray, leaves: np.ndarray) -> None:
        """Scan leaves ``[len(who), m]`` (-1 = skip) for queries ``who`` and fold in the results."""
        rows = tree.leaf_rows[leaves]  # [len(who), m, leaf width]; -1 = padding -> the inf row
        rows[leaves < 0] = -1
        rows = rows.reshape(len(who), -1)
        diff = x_padded[rows] - q[who, None, :]
        _merge(best_keys, best_rows, who, np.einsum("ald,ald->al", diff, diff), rows, k)

    # 1. Descend to the home leaf and scan it: the first radius.
    node = np.zeros(nq, np.int64)
    for _ in range(tree.depth):
        node = 2 * node + 1 + (q[everyone, tree.split_dim[node]] >= tree.split_val[node])
    home = node - tree.n_internal
    scan(everyone, home[:, None])
    # 2. Top-down pruning: keep (query, node) pairs whose box is closer than the radius.
    who, node = everyone, np.zeros(nq, np.int64)
    for _ in range(tree.depth):
        who, node = np.repeat(who, 2), (2 * np.repeat(node, 2) + 1) + np.tile([0, 1], len(node))
        bound = box_gap(q[who], tree.node_lo[node], tree.node_hi[node])
        keep = bound < best_keys[who, -1]
        who, node = who[keep], node[keep]
    leaf = node - tree.n_internal
    other = leaf != home[who]
    who, leaf = who[other], leaf[other]
    # 3. Scan the survivors in rounds: round r scans each query's r-th nearest surviving box,
    #    unless the query's radius has shrunk below that box's bound in the meantime.
    bound = box_gap(q[who], tree.node_lo[node[other]], tree.node_hi[node[other]])
    order = np.lexsort((bound, who))
    who, leaf, bound = who[order], leaf[order], bound[order]
    starts = np.searchsorted(who, everyone)
    counts = np.searchsorted(who, everyone, side="right") - starts
    scanned = nq
    for r in range(int(counts.max(initial=0))):
        pick = starts[counts > r] + r
        pick = pick[bound[pick] < best_keys[who[pick], -1]]
        if len(pick):
            scan(who[pick], leaf[pick, None])
            scanned += len(pick)
    return best_keys, best_rows, scanned / max(nq, 1)


@register
class KDTreeIndex(StaticIndex):
    """Hand-written exact KD-tree (median splits, pruned search). Metrics: l2, cosine.

    Args:
        leaf_size: at most this many points per leaf (with leaf_size=1, some leaves hold 2,
            because no leaf may be empty). Small leaves prune more finely but cost more
            bound computations; 16-64 is typical.

    ``search(..., stats=callback)`` reports ``leaves_visited``: the mean number of leaves
    scanned per query (of ``2**depth``), the pruning at work.

    Memory: the vectors (``4 * dim`` bytes each), the id (8), and the tree: each leaf
    slot is an int64 row (8 bytes per vector) plus two float32 bounding boxes per node.
    """

    kind = "kdtree"
    exact = True
    supported_metrics = ("l2", "cosine")

    def __init__(self, dim: int, metric: str = "l2", leaf_size: int = 32) -> None:
        self.leaf_size = positive_int(leaf_size, "kdtree: leaf_size", high=10**7)
        super().__init__(dim, metric)

    def params(self) -> dict:
        return {"leaf_size": self.leaf_size}

    def _build(self, vectors: np.ndarray) -> tuple[KDTree, np.ndarray]:
        padded = np.vstack([vectors, np.full((1, self.dim), np.inf, np.float32)])
        return build_kdtree(vectors, self.leaf_size), padded

    def _built_bytes(self, built) -> int:
        return built[0].nbytes()

    def _query(self, built, vectors, q, k, settings, info):
        tree, padded = built
        keys, rows, visits = [], [], 0.0
        # Blocks of queries bound the [queries, leaf width, dim] temporaries to about 16M floats.
        block = max(1, min(1024, 16_000_000 // (tree.leaf_rows.shape[1] * self.dim)))
        for start in range(0, len(q), block):
            part_keys, part_rows, part_visits = branch_and_bound(padded, tree, q[start : start + block], k)
            keys.append(part_keys)
            rows.append(part_rows)
            visits += part_visits * len(part_keys)
        info["leaves_visited"] = visits / len(q)
        info["leaves"] = float(len(tree.leaf_rows))
        return self._l2_to_keys(np.concatenate(keys)), np.concatenate(rows)

    @property
    def tree(self) -> KDTree:
        """The built tree (of the vectors stored now)."""
        built = self._state["built"]
        if built is None:
            raise VectorIndexError("the kdtree index is empty: add vectors to build its tree")
        return built[0]

    def search_recursive(self, query: np.ndarray, k: int) -> tuple[list[float], list[int], int]:
        """The textbook algorithm for one query: descend, then backtrack with pruning.

        Slow (pure Python) but short; ``search`` must agree with it.

        Returns:
            ``(squared L2 distances, ids, leaves visited)``, nearest first. (For ``metric="cosine"``
            these are distances between the unit vectors, not the cosines ``search`` returns.)
        """
        if check_k(k) < 1:
            raise VectorIndexError(f"k must be a positive integer, got {k!r}")
        query = self._prepare(as_float32_matrix(np.asarray(query).reshape(1, -1), "query", self.dim), "query")[0]
        state = self._state  # one snapshot, as in search
        if state["built"] is None:
            raise VectorIndexError("the kdtree index is empty: add vectors before searching")
        tree, vectors = state["built"][0], state["vectors"]
        n_internal = len(tree.split_dim)
        heap: list[tuple[float, int]] = []  # max-heap of (-distance, row), at most k items
        visited = 0

        def kth_best() -> float:
            return -heap[0][0] if len(heap) == k else np.inf

        def visit(node: int) -> None:
            nonlocal visited
            if node >= n_internal:  # a leaf: scan its points
                visited += 1
                rows = tree.leaf_rows[node - n_internal]
                rows = rows[rows >= 0]
                dists = ((vectors[rows] - query) ** 2).sum(axis=1)
                for dist, row in zip(dists.tolist(), rows.tolist()):
                    if dist < kth_best():
                        heapq.heappush(heap, (-dist, row))
                        if len(heap) > k:
                            heapq.heappop(heap)
                return
            gap = float(query[tree.split_dim[node]] - tree.split_val[node])
            near, far = (2 * node + 1, 2 * node + 2) if gap < 0 else (2 * node + 2, 2 * node + 1)
            visit(near)
            if gap * gap < kth_best():  # the far side may hold something closer: backtrack
                visit(far)

        visit(0)
        best = sorted((-d, r) for d, r in heap)
        return [d for d, _ in best], [int(state["ids"][r]) for _, r in best], visited
