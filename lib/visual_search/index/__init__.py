"""Nearest-neighbour indexes behind one Faiss-shaped interface.

    from visual_search.index import build_index, load_index
    index = build_index("ivf", dim=784, metric="l2", nlist=1024, nprobe=16)
    index.train(x); index.add(x)
    D, I = index.search(queries, k=10)                       # float32 [nq, 10], int64 [nq, 10]
    D, I = index.search(queries, k=10, params={"nprobe": 64})  # a knob for this call only

Written by hand, because they are the lesson: ``exact``, ``kdtree``, ``lsh``,
``ivf``, ``pq``, ``ivfpq``. Backed by libraries, for when you outgrow the course:
``faiss`` (any index_factory string), ``annoy``, ``scann`` (Google's
tree + anisotropic codes + re-ordering), ``sklearn-kdtree``, ``sklearn-balltree``. ``minhash`` holds datasketch's MinHash LSH for
near-duplicate detection, which works on sets rather than vectors.

The package, by job:

    validation   checks on vectors, ids, k, parameters and saved arrays
    kernels      the GEMM form of distances, the bounded top-k, merge_topk
    base         BaseIndex and StaticIndex: snapshot state, one writer at a time
    registry     REGISTRY, register, build_index
    io           the checksummed file format: save / load_index
    exact kdtree lsh kmeans ivf pq backends scann_index minhash   one file a kind
"""

from visual_search.errors import VectorIndexError
from visual_search.index import backends, exact, ivf, kdtree, lsh, pq, scann_index  # noqa: F401  (registers the kinds)
from visual_search.index.base import BaseIndex, StaticIndex
from visual_search.index.exact import exact_search
from visual_search.index.io import load_index
from visual_search.index.kernels import merge_topk
from visual_search.index.registry import REGISTRY, build_index, register
from visual_search.index.validation import METRICS

__all__ = [
    "METRICS",
    "REGISTRY",
    "BaseIndex",
    "StaticIndex",
    "VectorIndexError",
    "build_index",
    "exact_search",
    "load_index",
    "merge_topk",
    "register",
]
