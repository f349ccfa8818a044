"""Nearest-neighbour indexes behind one Faiss-shaped interface.

    from visual_search.index import build_index, load_index
    index = build_index("ivf", dim=784, metric="l2", nlist=1024, nprobe=16)
    index.train(x); index.add(x)
    D, I = index.search(queries, k=10)   # float32 [nq, 10], int64 [nq, 10]

Written by hand, because they are the lesson: ``exact``, ``kdtree``, ``lsh``,
``ivf``, ``pq``, ``ivfpq``. Backed by libraries, for when you outgrow the course:
``faiss`` (any index_factory string), ``annoy``, ``sklearn-kdtree``,
``sklearn-balltree``. ``minhash`` holds datasketch's MinHash LSH for
near-duplicate detection, which works on sets rather than vectors.
"""

from visual_search.index.base import (
    METRICS,
    REGISTRY,
    BaseIndex,
    VectorIndexError,
    build_index,
    load_index,
)
from visual_search.index import exact, kdtree, lsh, ivf, pq, backends  # noqa: F401,E402  (registers the kinds)

__all__ = ["METRICS", "REGISTRY", "BaseIndex", "VectorIndexError", "build_index", "load_index"]
