"""How cost grows with N: build time, memory and queries/s of five indexes at N = 10k, 100k and 1M, and a fitted exponent.

    from visual_search.scale.growth import growth_vectors, measure_growth, fit_exponent
    base, queries = growth_vectors(1_000_000)           # the committed encoder on augmented copies of the 70k images
    rows = measure_growth(base, queries, sizes=(10_000, 100_000, 1_000_000))
    fit_exponent([r["n"] for r in ...], [r["qps"] for r in ...])   # qps ~ c * N ** exponent

Why real-like vectors: random Gaussian vectors have no clusters, so IVF, HNSW and
ScaNN behave on them as they never do on embeddings. Here the million 64-d
vectors are the committed SimCLR encoder's embeddings of augmented copies
(``augment.augment_batch``: crops, flips, rotations, brightness, blur) of the
70,000 Fashion-MNIST images, shuffled, so every smaller N is a prefix of the
larger one. Queries are fresh augmentations of other draws of the images.

How each index is measured, on one thread (``timing.limit_threads(1)``, Faiss
and ScaNN set to one thread too), as ``index.measure.run_method`` does it:

* build time: ``train`` (on at most ``TRAIN_SAMPLE`` vectors, as production trains on a sample;
  at 1M Faiss warns that 100k points for 4,000 lists is below its 39-a-list rule of thumb, and
  still trains on all of them) plus ``add`` of all N;
* memory: what the N vectors add to the trained, empty index, per vector;
* queries/s: batched queries, and the latency of one query at a time (p50);
* the operating point: each approximate index sweeps its search knob and keeps
  the fastest point with recall@10 >= ``RECALL_TARGET`` against exact search on
  the same N (when none gets there, as with PQ codes whose ceiling is lower, the
  fastest point within 0.01 of the best recall it reaches, flagged). So the
  curves compare indexes at equal quality, which is what a capacity plan needs.

Structure grows with N the way practitioners size it: IVF and IVF-PQ use
``nlist = 4 sqrt(N)`` lists (rounded), capped at ``N / 39`` because Faiss's k-means
wants at least 39 training points a list (so 256 lists at 10k, not 400; 1,265 at
100k; 4,000 at 1M), ScaNN ``sqrt(N)`` leaves; HNSW keeps its 32 links.

``fit_exponent`` fits ``log qps = log c + a log N`` by least squares. For exact
search ``a`` is near -1 (a full scan per query); IVF at a constant recall sits
near -0.5 (``sqrt(N)`` lists, a constant fraction probed... of a list count that
grows as ``sqrt(N)``); graph search grows like ``log N`` (``a`` near 0). The fit
is trustworthy only inside the measured range: see ``fit_exponent``'s notes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from visual_search import config
from visual_search._checks import check_int
from visual_search.errors import ScaleError
from visual_search.index import build_index
from visual_search.index.exact import exact_search
from visual_search.index.measure import recall_at_k
from visual_search.timing import Timer, limit_threads

#: The operating point: the fastest sweep point with at least this recall@10.
RECALL_TARGET = 0.9
#: Vectors the trained indexes learn their centroids and codebooks from (a sample, as in production).
TRAIN_SAMPLE = 100_000
#: Queries timed one at a time for the latency column (batched QPS uses all of them).
LATENCY_QUERIES = 100
K = 10


def _nlist(n: int) -> int:
    return int(min(max(16, round(4 * math.sqrt(n))), n // 39 if n >= 39 * 16 else 16))  # Faiss wants >= 39 points a list


@dataclass
class GrowthMethod:
    """One index of the growth study.

    Attributes:
        key: the name the capacity planner knows it by (``"exact"``, ``"ivf"``, ``"ivfpq"``, ``"hnsw"``, ``"scann"``).
        label: for tables and plots.
        make: ``n -> (kind, params)`` for ``build_index``: the structure sized for N vectors.
        knob: the search-time knob swept for the operating point (None: one point).
        values: ``n -> knob values`` to sweep, in increasing cost.
    """

    key: str
    label: str
    make: Callable[[int], tuple[str, dict]]
    knob: str | None = None
    values: Callable[[int], Sequence[int]] = field(default=lambda n: ())


def default_methods(pq_m: int = 16) -> list[GrowthMethod]:
    """Exact, IVF, IVF-PQ (``pq_m`` bytes a code), HNSW32 and ScaNN, as the growth study measures them."""

    def ivf(n):
        return "faiss", {"factory": f"IVF{_nlist(n)},Flat"}

    def ivfpq(n):
        return "faiss", {"factory": f"IVF{_nlist(n)},PQ{pq_m}np"}  # np: no polysemous training (unused, slow)

    def scann(n):
        leaves = max(2, min(round(math.sqrt(n)), n // 100))
        return "scann", {"num_leaves": leaves, "num_leaves_to_search": max(1, leaves // 20), "training_sample_size": min(n, TRAIN_SAMPLE)}

    def probes(n):
        nlist = _nlist(n)
        return [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= nlist]

    def leaves(n):
        total = max(2, min(round(math.sqrt(n)), n // 100))
        return sorted({max(1, round(total * f)) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)})

    return [
        GrowthMethod("exact", "exact (Faiss Flat)", lambda n: ("faiss", {"factory": "Flat"})),
        GrowthMethod("ivf", "IVF (4 sqrt N lists)", ivf, "nprobe", probes),
        GrowthMethod("ivfpq", f"IVF-PQ{pq_m} (4 sqrt N lists)", ivfpq, "nprobe", probes),
        GrowthMethod("hnsw", "HNSW32", lambda n: ("faiss", {"factory": "HNSW32"}), "efSearch", lambda n: (16, 32, 64, 128, 256)),
        GrowthMethod("scann", "ScaNN (sqrt N leaves, AH, reorder)", scann, "leaves_to_search", leaves),
    ]


def growth_vectors(n: int, n_queries: int = 1000, seed: int = 0, images: np.ndarray | None = None, cache: bool = True,
                   progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real-like 64-d base vectors and ``n_queries`` queries: the committed encoder on augmented copies.

    Args:
        n: base vectors wanted (copies of the images are made until there are enough).
        n_queries: query vectors: fresh augmentations drawn after the base vectors from the same
            random stream, so they depend on ``n`` as well as ``seed`` (measure every N of one study
            with the queries of its largest set, as ``measure_growth`` does with prefixes).
        seed: the random stream of the augmentations and the shuffle.
        images: uint8 ``[M, 28, 28]`` source images (default: all 70,000 of Fashion-MNIST; in fast
            mode the committed sample's gallery).
        cache: keep the result in ``config.cache_dir()`` (the 1M set takes minutes to make).
        progress: a tqdm bar (default: on outside fast mode).

    Returns:
        ``(base float32 [n, 64], queries float32 [n_queries, 64])``, unit vectors.
    """
    import torch

    from visual_search import data
    from visual_search.augment import augment_batch
    from visual_search.embed import embed
    from visual_search.models import load_pretrained

    n = check_int(n, "n", low=1, high=50_000_000, error=ScaleError)
    n_queries = check_int(n_queries, "n_queries", low=1, high=1_000_000, error=ScaleError)
    if images is None:
        images = data.load_sample().gallery_images if config.is_fast() else np.concatenate([data.load_fashion_mnist(s)[0] for s in ("train", "test")])
        source = "sample" if config.is_fast() else "fashion-mnist-70k"
    else:
        source = None  # caller's images: not cached under a shared name
    encoder = load_pretrained()
    path = Path(config.cache_dir()) / f"growth_{source}_{encoder.version}_{n}_{n_queries}_{seed}.npz" if source and cache else None
    if path is not None and path.exists():
        with np.load(path) as saved:
            return saved["base"], saved["queries"]
    progress = (not config.is_fast()) if progress is None else progress
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def augmented(count: int, desc: str) -> np.ndarray:
        chunks = []
        bar = tqdm(total=count, desc=desc, disable=not progress, leave=False)
        done = 0
        while done < count:
            take = min(8192, count - done)
            pick = rng.integers(len(images), size=take)
            x = torch.from_numpy(images[pick]).float().div_(255).unsqueeze(1)
            views = (augment_batch(x, generator=generator).squeeze(1).mul_(255).round_().clamp_(0, 255)).to(torch.uint8).numpy()
            chunks.append(embed(encoder, views, batch_size=1024, progress=False))
            done += take
            bar.update(take)
        bar.close()
        return np.concatenate(chunks)

    base = augmented(n, "growth base vectors")
    queries = augmented(n_queries, "growth queries")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, base=base, queries=queries)
        tmp.replace(path)
    return base, queries


def measure_point(method: GrowthMethod, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int = K,
                  recall_target: float = RECALL_TARGET) -> dict:
    """Build ``method`` on ``base`` and measure its operating point (see the module docstring).

    Returns:
        ``key``, ``method``, ``n``, ``kind``, ``params``, ``build_s``, ``bytes_per_vector``, ``fixed_bytes``,
        ``qps`` (batched), ``latency_ms`` (one query at a time, median), ``recall@10``, ``search`` (the knob
        value chosen), ``reached_target`` and ``sweep`` (every point: knob, recall, qps).
    """
    n = len(base)
    kind, params = method.make(n)
    index = build_index(kind, base.shape[1], "l2", **params)  # the ScaNN kind searches on one thread itself
    with Timer() as build:
        if index.needs_training:
            sample = base[np.random.default_rng(0).choice(n, min(n, TRAIN_SAMPLE), replace=False)] if n > TRAIN_SAMPLE else base
            index.train(sample)
        fixed = index.memory_bytes()
        index.add(base)
    per_vector = (index.memory_bytes() - fixed) / n
    sweep = []
    for value in (method.values(n) if method.knob else [None]):
        search = {method.knob: value} if value is not None else None
        index.search(queries[:10], k, params=search)  # warm-up
        with Timer() as t:
            _, ids = index.search(queries, k, params=search)
        sweep.append({"search": search or {}, "recall@10": recall_at_k(ids, truth), "qps": len(queries) / t.seconds})
        if sweep[-1]["recall@10"] >= recall_target:
            break  # the values rise in cost: the first point that reaches the target is the fastest that does
    reached = [p for p in sweep if p["recall@10"] >= recall_target]
    if not reached:  # the structure's ceiling is below the target (PQ codes lose detail): take the knee,
        best = max(p["recall@10"] for p in sweep)  # the fastest point within 0.01 of the best recall it has
        reached_or_knee = [p for p in sweep if p["recall@10"] >= best - 0.01]
    point = max(reached or reached_or_knee, key=lambda p: p["qps"])
    one = queries[: min(LATENCY_QUERIES, len(queries))]
    latencies = []
    for row in one:
        with Timer() as t:
            index.search(row[None], k, params=point["search"] or None)
        latencies.append(t.seconds)
    return {
        "key": method.key, "method": method.label, "n": n, "kind": kind, "params": params,
        "build_s": build.seconds, "bytes_per_vector": per_vector, "fixed_bytes": fixed,
        "qps": point["qps"], "latency_ms": 1000 * float(np.median(latencies)), "recall@10": point["recall@10"],
        "search": point["search"], "reached_target": bool(reached), "sweep": sweep,
    }


def measure_growth(base: np.ndarray, queries: np.ndarray, sizes: Sequence[int] = (10_000, 100_000, 1_000_000),
                   methods: Sequence[GrowthMethod] | None = None, k: int = K, recall_target: float = RECALL_TARGET,
                   progress: bool | None = None) -> list[dict]:
    """Every method at every N (a prefix of ``base``), on one thread. Returns ``measure_point``'s rows, N by N.

    Raises:
        ScaleError: a size larger than ``base`` or not positive, or mismatched dimensions.
    """
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if base.ndim != 2 or queries.ndim != 2 or base.shape[1] != queries.shape[1]:
        raise ScaleError(f"base {base.shape} and queries {queries.shape} must be [N, d] and [Q, d] with the same d")
    sizes = [check_int(s, "sizes", low=k, high=len(base), error=ScaleError) for s in sizes]
    methods = list(methods) if methods is not None else default_methods()
    progress = (not config.is_fast()) if progress is None else progress
    import faiss  # Faiss keeps its own OpenMP pool: one thread for it too

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    rows = []
    try:
        with limit_threads(1):
            bar = tqdm(total=len(sizes) * len(methods), desc="growth curves", disable=not progress)
            for n in sizes:
                truth = exact_search(queries, base[:n], k, metric="l2")[1]
                for method in methods:
                    bar.set_postfix_str(f"{method.key} N={n:,}")
                    rows.append(measure_point(method, base[:n], queries, truth, k, recall_target))
                    bar.update()
            bar.close()
    finally:
        faiss.omp_set_num_threads(before)
    return rows


def fit_exponent(ns: Sequence[float], values: Sequence[float]) -> dict[str, Any]:
    """Least-squares fit of ``value = c * N ** exponent`` in log-log space.

    Args:
        ns: the sizes (at least 2, positive, not all equal).
        values: the measured quantity at each size (queries/s, latency, build seconds), positive.

    Returns:
        ``{"exponent", "c", "n_min", "n_max", "points", "max_rel_error"}``: the fit, the measured range
        it holds in, and the worst relative miss on the measured points.

    Where to stop trusting it: a power law through three points says nothing about
    what happens outside them. Beyond ``n_max`` the index leaves the caches (the 1M
    IVF lists are ~256 MB, already beyond L3) and becomes memory-bandwidth bound; a
    shard of billions also needs a re-tuned structure (more lists, more probes) that
    changes the constant. The planner extrapolates with the fit and says so.
    """
    ns = np.asarray(ns, np.float64)
    values = np.asarray(values, np.float64)
    if ns.shape != values.shape or ns.ndim != 1 or len(ns) < 2:
        raise ScaleError(f"fit_exponent: need two or more (N, value) pairs of one length, got {ns.shape} and {values.shape}")
    if not (np.all(np.isfinite(ns)) and np.all(np.isfinite(values)) and np.all(ns > 0) and np.all(values > 0)):
        raise ScaleError("fit_exponent: sizes and values must be finite and positive")
    if np.ptp(ns) == 0:
        raise ScaleError("fit_exponent: the sizes are all equal; no slope to fit")
    slope, intercept = np.polyfit(np.log(ns), np.log(values), 1)
    predicted = np.exp(intercept) * ns**slope
    return {
        "exponent": float(slope), "c": float(np.exp(intercept)), "n_min": float(ns.min()), "n_max": float(ns.max()),
        "points": len(ns), "max_rel_error": float(np.max(np.abs(predicted / values - 1))),
    }


def fits(rows: Sequence[dict]) -> dict[str, dict]:
    """Per method key: the fits of batched QPS, one-query latency, build seconds and bytes per vector against N."""
    out = {}
    for key in dict.fromkeys(r["key"] for r in rows):
        mine = [r for r in rows if r["key"] == key]
        ns = [r["n"] for r in mine]
        out[key] = {
            "method": mine[0]["method"],
            "qps": fit_exponent(ns, [r["qps"] for r in mine]),
            "latency_ms": fit_exponent(ns, [r["latency_ms"] for r in mine]),
            "build_s": fit_exponent(ns, [r["build_s"] for r in mine]),
            "reached_target_everywhere": all(r["reached_target"] for r in mine),
        }
    return out


__all__ = ["K", "LATENCY_QUERIES", "RECALL_TARGET", "TRAIN_SAMPLE", "GrowthMethod", "default_methods", "fit_exponent", "fits",
           "growth_vectors", "measure_growth", "measure_point"]
