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

``search`` runs the same idea for all queries at once: it computes each
query's distance to every leaf's bounding box (a lower bound on the distance
to any point inside), visits leaves in order of that bound, and stops a query
as soon as the next bound exceeds its k-th best distance (priority search,
Arya & Mount 1993). Both give the exact answer; the batched one is fast.

**The curse of dimensionality.** In 2-8 dimensions a query visits a handful of
leaves. In 784 dimensions every box is close to every query, nothing is
pruned, and the tree is slower than a linear scan (chapter 05 measures this).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from visual_search.index.base import StaticIndex, VectorIndexError, register, topk_smallest


@dataclass
class KDTree:
    """The built tree. ``split_dim``/``split_val`` per internal node; ``leaf_rows[j]`` the
    rows in leaf j, padded with -1; ``box_lo``/``box_hi`` each leaf's bounding box."""

    split_dim: np.ndarray  # int64 [n_internal]
    split_val: np.ndarray  # float32 [n_internal]
    leaf_rows: np.ndarray  # int64 [n_leaves, max_leaf]
    box_lo: np.ndarray  # float32 [n_leaves, dim]
    box_hi: np.ndarray  # float32 [n_leaves, dim]

    @property
    def depth(self) -> int:
        return int(np.log2(len(self.leaf_rows)))

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.split_dim, self.split_val, self.leaf_rows, self.box_lo, self.box_hi))


def build_kdtree(x: np.ndarray, leaf_size: int) -> KDTree:
    """Median-split KD-tree over the rows of ``x`` (see the module docstring)."""
    n = len(x)
    depth = max(0, int(np.ceil(np.log2(max(n, 1) / leaf_size))))
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
    box_lo = np.empty((len(segments), x.shape[1]), np.float32)
    box_hi = np.empty((len(segments), x.shape[1]), np.float32)
    for j, (start, end) in enumerate(segments):
        leaf_rows[j, : end - start] = perm[start:end]
        box_lo[j], box_hi[j] = x[perm[start:end]].min(axis=0), x[perm[start:end]].max(axis=0)
    return KDTree(split_dim, split_val, leaf_rows, box_lo, box_hi)


def box_lower_bounds(q: np.ndarray, tree: KDTree) -> np.ndarray:
    """Squared distance from each query to each leaf's bounding box, ``[nq, n_leaves]``."""
    out = np.empty((len(q), len(tree.box_lo)), np.float32)
    chunk = max(1, 8_000_000 // tree.box_lo.size)
    for start in range(0, len(q), chunk):
        part = q[start : start + chunk, None, :]
        gap = np.maximum(tree.box_lo[None] - part, 0) + np.maximum(part - tree.box_hi[None], 0)
        out[start : start + chunk] = np.einsum("qld,qld->ql", gap, gap)
    return out


def priority_search(x_padded: np.ndarray, tree: KDTree, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact k-NN for all queries at once; ``x_padded`` is the vectors plus one final row of inf.

    Returns:
        ``(squared distances [nq, k], rows [nq, k], mean leaves visited per query)``, ascending.
    """
    bounds = box_lower_bounds(q, tree)
    visit = np.argsort(bounds, axis=1, kind="stable")  # each query's leaves, nearest box first
    best_keys = np.full((len(q), k), np.inf, np.float32)
    best_rows = np.full((len(q), k), -1, np.int64)
    active = np.arange(len(q))
    visits = 0
    for step in range(visit.shape[1]):
        leaf = visit[active, step]
        # Prune: a leaf whose box is no closer than the current k-th best cannot improve it.
        keep = bounds[active, leaf] < best_keys[active, -1]
        active, leaf = active[keep], leaf[keep]
        if not len(active):
            break
        visits += len(active)
        rows = tree.leaf_rows[leaf]  # [na, leaf_size], -1 = padding -> the inf row
        diff = x_padded[rows] - q[active, None, :]
        keys = np.concatenate([best_keys[active], np.einsum("ald,ald->al", diff, diff)], axis=1)
        cand = np.concatenate([best_rows[active], rows], axis=1)
        pos, best_keys[active] = topk_smallest(keys, k)
        best_rows[active] = np.take_along_axis(cand, pos, axis=1)
    return best_keys, best_rows, visits / max(len(q), 1)


@register
class KDTreeIndex(StaticIndex):
    """Hand-written exact KD-tree (median splits, pruned search). Metrics: l2, cosine.

    Args:
        leaf_size: at most this many points per leaf. Small leaves prune more
            finely but cost more bound computations; 16-64 is typical.
    """

    kind = "kdtree"
    exact = True
    supported_metrics = ("l2", "cosine")

    def __init__(self, dim: int, metric: str = "l2", leaf_size: int = 32) -> None:
        super().__init__(dim, metric)
        if isinstance(leaf_size, bool) or not isinstance(leaf_size, (int, np.integer)) or leaf_size < 1:
            raise VectorIndexError(f"kdtree: leaf_size must be a positive integer, got {leaf_size!r}")
        self.leaf_size = int(leaf_size)
        #: Mean leaves scanned per query in the last ``search`` (of ``2**depth``): the pruning at work.
        self.leaves_visited = float("nan")

    def params(self) -> dict:
        return {"leaf_size": self.leaf_size}

    def _build(self) -> tuple[KDTree, np.ndarray]:
        padded = np.vstack([self._vectors, np.full((1, self.dim), np.inf, np.float32)])
        return build_kdtree(self._vectors, self.leaf_size), padded

    def _query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        tree, padded = self._built
        keys, rows, self.leaves_visited = priority_search(padded, tree, q, k)
        return self._l2_to_keys(keys), rows

    def _structure_bytes(self) -> int:
        self.build()
        return self._vectors.nbytes + (self._built[0].nbytes() if self._built else 0)

    @property
    def tree(self) -> KDTree:
        """The built tree (building it now if needed)."""
        self.build()
        return self._built[0]

    def search_recursive(self, query: np.ndarray, k: int) -> tuple[list[float], list[int], int]:
        """The textbook algorithm for one query: descend, then backtrack with pruning.

        Slow (pure Python) but short; ``search`` must agree with it.

        Returns:
            ``(squared distances, ids, leaves visited)``, nearest first.
        """
        query = self._prepare(np.asarray(query, np.float32).reshape(1, -1), "query")[0]
        tree = self.tree
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
                dists = ((self._vectors[rows] - query) ** 2).sum(axis=1)
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
        return [d for d, _ in best], [int(self._ids[r]) for _, r in best], visited
