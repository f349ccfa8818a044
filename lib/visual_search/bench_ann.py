"""The nearest-neighbour benchmark, in the style of ann-benchmarks.

    python -m visual_search.bench ann          # full: 60,000 base vectors, 10,000 queries
    python -m visual_search.bench ann --fast   # the committed sample, small settings (CI)

For every method and every point of its parameter sweep, on one CPU thread:
recall@10 against exact search, queries per second (batched queries, as Faiss
and ann-benchmarks' batch mode measure them), build time (train + add), and
memory (the fixed part, e.g. centroids or tables, plus the bytes each extra
vector costs, which is what scales to 100 billion images).

Data: Fashion-MNIST as raw 784-d pixels in [0, 1] (metric l2), and the
committed SimCLR CNN's L2-normalised embeddings (l2 on unit vectors ranks like
cosine). Plus two side studies: the KD-tree's speed-up over exact search as the
dimension grows (PCA of the pixels to 2..64 dimensions), and MinHash LSH for
near-duplicate detection against brute-force Jaccard.

Every method of one data set runs in the same process, one after another, so
the ratios in ``targets`` compare numbers measured side by side.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from visual_search import config
from visual_search.index import build_index
from visual_search.index.backends import FaissIndex
from visual_search.viz import save_figure

K = 10


@dataclass
class Method:
    """One line of the Pareto plot: build once, then sweep one search-time knob."""

    name: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    knob: str | None = None  # e.g. "nprobe"; None: a single point
    values: tuple = ()
    max_queries: int | None = None  # slow methods are timed on the first queries only
    own: bool = True  # written by hand in this course (solid lines) or a library (dashed)


def methods_for(dim: int, n: int, fast: bool) -> list[Method]:
    """The methods and sweeps for ``n`` base vectors of dimension ``dim``."""
    nlist = 32 if fast else 1024
    pq_nlist = 16 if fast else 256
    m = dim // 8 if dim % 8 == 0 else dim // 4 if dim % 4 == 0 else dim  # 8 (or 4) numbers per sub-quantizer
    nprobes = (1, 2, 4, 8, 16) if fast else (1, 2, 4, 8, 16, 32, 64)
    slow = 50 if fast else (200 if dim > 100 else 1000)
    return [
        Method("exact (NumPy)", "exact"),
        Method("Faiss Flat", "faiss", {"factory": "Flat"}, own=False),
        Method("KD-tree", "kdtree", {"leaf_size": 32}, max_queries=slow),
        Method("scikit-learn KD-tree", "sklearn-kdtree", max_queries=slow // 2, own=False),
        Method("scikit-learn ball tree", "sklearn-balltree", max_queries=slow // 2, own=False),
        Method("LSH 16x16 bits, 16 probes", "lsh", {"n_tables": 16, "n_bits": 16, "n_probes": 16}, "rerank", (50, 100, 200, 400, 800)),
        Method("LSH 24x16 bits, 16 probes", "lsh", {"n_tables": 24, "n_bits": 16, "n_probes": 16}, "rerank", (200, 400, 800)),
        Method(f"Faiss LSH {max(1024, dim)} bits", "faiss", {"factory": f"LSH{max(1024, dim)}rt"}, own=False),
        Method(f"IVF{nlist}", "ivf", {"nlist": nlist}, "nprobe", nprobes),
        Method(f"Faiss IVF{nlist},Flat", "faiss", {"factory": f"IVF{nlist},Flat"}, "nprobe", nprobes, own=False),
        Method(f"PQ{m}", "pq", {"m": m}, max_queries=slow),
        Method(f"IVF{pq_nlist}-PQ{m}", "ivfpq", {"nlist": pq_nlist, "m": m}, "nprobe", (1, 4, 16, 64) if not fast else (1, 4, 16)),
        # "np": no polysemous training. It only reorders codes for Hamming pre-filtering (unused
        # here), leaves ADC recall unchanged, and costs about 2 minutes on one thread.
        Method(f"Faiss IVF{pq_nlist},PQ{m}", "faiss", {"factory": f"IVF{pq_nlist},PQ{m}np"}, "nprobe", (1, 4, 16, 64) if not fast else (1, 4, 16), own=False),
        Method("Faiss HNSW32", "faiss", {"factory": "HNSW32"}, "efSearch", (16, 32, 64, 128), own=False),
        Method(f"Annoy {10 if fast else 50} trees", "annoy", {"n_trees": 10 if fast else 50}, "search_k", (500, 2000, 5000, 20000), max_queries=slow * 5, own=False),
    ]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / k (ann-benchmarks' recall)."""
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b) for a, b in zip(found, truth)]))


def set_knob(index, knob: str, value) -> None:
    """Change a search-time parameter in place (no rebuild)."""
    if isinstance(index, FaissIndex):
        index.set_search_params(**{knob: value})
    else:
        setattr(index, knob, value)


def run_method(method: Method, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, metric: str = "l2") -> list[dict]:
    """Build ``method`` on ``base`` and measure every point of its sweep. Returns one row per point."""
    index = build_index(method.kind, base.shape[1], metric, **method.params)
    start = time.perf_counter()
    index.train(base)
    fixed = index.memory_bytes()
    index.add(base)
    if hasattr(index, "build"):
        index.build()
    build_s = time.perf_counter() - start
    per_vector = (index.memory_bytes() - fixed) / len(base)
    q = queries[: method.max_queries] if method.max_queries else queries
    rows = []
    for value in method.values or (None,):
        if value is not None:
            set_knob(index, method.knob, value)
        index.search(q[:10], K)  # warm-up: first-touch page faults, lazy builds
        start = time.perf_counter()
        _, ids = index.search(q, K)
        seconds = time.perf_counter() - start
        rows.append({
            "method": method.name, "kind": method.kind, "own": method.own, "params": method.params,
            "search": {method.knob: value} if value is not None else {},
            "recall@10": recall_at_k(ids, truth[: len(q)]), "qps": len(q) / seconds,
            "build_s": build_s, "bytes_per_vector": per_vector, "fixed_bytes": fixed, "queries": len(q),
        })
    return rows


def load_datasets(fast: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (base float32 [N, d], queries float32 [Q, d])}``: raw pixels and SimCLR embeddings."""
    from visual_search.data import load_fashion_mnist, load_sample
    from visual_search.embed import embed
    from visual_search.models import load_pretrained

    if fast:
        sample = load_sample()
        base_images, query_images = sample.gallery_images, sample.query_images
    else:
        base_images, query_images = load_fashion_mnist("train")[0], load_fashion_mnist("test")[0]
    pixels = lambda images: images.reshape(len(images), -1).astype(np.float32) / 255.0  # noqa: E731
    encoder = load_pretrained()
    base_emb, query_emb = embed(encoder, base_images, progress=not fast), embed(encoder, query_images, progress=not fast)
    return {
        "Fashion-MNIST pixels (784-d)": (pixels(base_images), pixels(query_images)),
        f"SimCLR CNN embeddings ({base_emb.shape[1]}-d)": (base_emb, query_emb),
    }


def kdtree_dimensions(base: np.ndarray, queries: np.ndarray, dims=(2, 4, 8, 16, 32, 64), seed: int = 0) -> list[dict]:
    """Exact search vs the hand-written KD-tree vs scikit-learn's, on PCA projections of ``base``."""
    from sklearn.decomposition import PCA

    pca = PCA(max(dims), random_state=seed).fit(base)
    b_all, q_all = pca.transform(base).astype(np.float32), pca.transform(queries).astype(np.float32)
    rows = []
    for d in tqdm(dims, desc="KD-tree vs dimension", leave=False):
        b, q = np.ascontiguousarray(b_all[:, :d]), np.ascontiguousarray(q_all[:, :d])
        row = {"dim": d}
        for label, kind in (("exact", "exact"), ("kdtree", "kdtree"), ("sklearn", "sklearn-kdtree")):
            index = build_index(kind, d).add(b)
            if hasattr(index, "build"):
                index.build()
            start = time.perf_counter()
            index.search(q, K)
            row[f"{label}_qps"] = len(q) / (time.perf_counter() - start)
            if kind == "kdtree":
                row["leaves_visited"], row["leaves"] = index.leaves_visited, len(index.tree.leaf_rows)
        row["kdtree_speedup"] = row["kdtree_qps"] / row["exact_qps"]
        row["sklearn_speedup"] = row["sklearn_qps"] / row["exact_qps"]
        rows.append(row)
    return rows


def near_duplicates(images: np.ndarray, n_copies: int, seed: int = 0) -> dict:
    """Plant noisy, re-brightened copies of gallery images and find them with MinHash LSH vs brute force."""
    from visual_search.index.minhash import NearDuplicateIndex, image_tokens, jaccard

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), n_copies, replace=False)
    copies = np.clip(images[pick] * rng.uniform(0.85, 1.15, (n_copies, 1, 1)) + rng.normal(0, 8, (n_copies, 28, 28)), 0, 255).astype(np.uint8)
    out: dict = {"gallery": len(images), "copies": n_copies, "thresholds": {}}
    gallery_tokens = [image_tokens(image) for image in images]
    start = time.perf_counter()
    brute = []
    for copy in copies[:50]:  # brute force: exact Jaccard against every stored set
        tokens = image_tokens(copy)
        brute.append([i for i, t in enumerate(gallery_tokens) if jaccard(tokens, t) >= 0.8])
    out["brute_force_ms_per_query"] = (time.perf_counter() - start) / 50 * 1000
    for threshold in (0.8, 0.9):
        index = NearDuplicateIndex(threshold=threshold)
        start = time.perf_counter()
        index.add(list(range(len(images))), images)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        found = index.query(copies)
        query_ms = (time.perf_counter() - start) / n_copies * 1000
        out["thresholds"][str(threshold)] = {
            "original_found": float(np.mean([p in f for p, f in zip(pick, found)])),
            "matches_per_query": float(np.mean([len(f) for f in found])),
            "build_s": build_s, "query_ms": query_ms,
            "original_first": float(np.mean([bool(f) and f[0] == p for p, f in zip(pick, found)])),
        }
        if threshold == 0.8:  # LSH may miss a pair that brute force finds: its recall vs exact Jaccard
            pairs = [(f, b) for f, b in zip(found[:50], brute) if b]  # queries with at least one true match
            out["lsh_recall_vs_brute_force"] = float(np.mean([len(set(f) & set(b)) / len(b) for f, b in pairs]))
    return out


def targets(rows: list[dict], fast: bool) -> dict:
    """The issue's performance targets, computed from rows measured side by side."""
    by = lambda name, **search: next((r for r in rows if r["method"] == name and all(r["search"].get(k) == v for k, v in search.items())), None)  # noqa: E731
    nlist, pq_nlist = (32, 16) if fast else (1024, 256)
    exact, flat = by("exact (NumPy)"), by("Faiss Flat")
    ivf, fivf = by(f"IVF{nlist}", nprobe=16), by(f"Faiss IVF{nlist},Flat", nprobe=16)
    pq_rows = [r for r in rows if r["kind"] == "ivfpq" and r["search"].get("nprobe") == 16]
    fpq_rows = [r for r in rows if r["kind"] == "faiss" and ",PQ" in r["params"].get("factory", "") and r["search"].get("nprobe") == 16]
    lsh_ok = [r for r in rows if r["kind"] == "lsh" and r["recall@10"] >= 0.9]
    best_lsh = max(lsh_ok, key=lambda r: r["qps"]) if lsh_ok else max((r for r in rows if r["kind"] == "lsh"), key=lambda r: r["recall@10"])
    out = {
        "exact_qps_over_faiss_flat": exact["qps"] / flat["qps"],
        f"ivf{nlist}_nprobe16": {"recall@10": ivf["recall@10"], "qps_over_faiss": ivf["qps"] / fivf["qps"], "faiss_recall@10": fivf["recall@10"]},
        "lsh_best_with_recall_0.9": {"method": best_lsh["method"], "search": best_lsh["search"], "recall@10": best_lsh["recall@10"],
                                     "qps_over_exact": best_lsh["qps"] / exact["qps"]},
    }
    if pq_rows and fpq_rows:
        out[f"ivfpq{pq_nlist}_nprobe16"] = {"recall@10": pq_rows[0]["recall@10"], "faiss_recall@10": fpq_rows[0]["recall@10"],
                                           "recall_gap": fpq_rows[0]["recall@10"] - pq_rows[0]["recall@10"]}
    return out


def plot_pareto(results: dict[str, list[dict]]):
    """Recall@10 against queries/s (log), one line per method, one panel per data set."""
    fig, axes = plt.subplots(1, len(results), figsize=(8 * len(results), 6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], results.items()):
        names = list(dict.fromkeys(r["method"] for r in rows))
        for i, method in enumerate(names):
            pts = [r for r in rows if r["method"] == method]
            own = pts[0]["own"]
            ax.plot([p["recall@10"] for p in pts], [p["qps"] for p in pts], "-o" if own else "--s", color=plt.cm.tab20(i % 20),
                    markersize=5 if own else 4, linewidth=2 if own else 1.2, label=method + ("" if own else " [library]"))
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 (vs exact search)")
        ax.set_ylabel("queries per second, 1 thread (log)")
        ax.set_title(f"{name}: {rows[0]['n_base']:,} vectors")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Nearest-neighbour search: speed vs recall (up and to the right is better; solid = written here)")
    fig.tight_layout()
    return fig


def plot_memory(rows: list[dict], dim: int, title: str):
    """Bytes per stored vector per method (log), against raw float32 storage, with 100B-image totals."""
    first = {}
    for r in rows:
        first.setdefault(r["method"], r)
    names = sorted(first, key=lambda n: first[n]["bytes_per_vector"])
    values = [first[n]["bytes_per_vector"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 1.5))
    bars = ax.barh(names, values, color=["C0" if first[n]["own"] else "C7" for n in names])
    ax.bar_label(bars, labels=[f"{v:,.0f} B  ({v * 100e9 / 1e12:,.1f} TB at 100B)" for v in values], fontsize=7, padding=2)
    ax.axvline(4 * dim, color="k", linestyle=":", label=f"raw float32: {4 * dim:,} B")
    ax.set_xscale("log")
    ax.set_xlim(right=max(values) * 30)
    ax.set_xlabel("bytes per vector (log): marginal cost of one more image, ids included")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_kdtree_dimensions(rows: list[dict]):
    """Speed-up over exact search, and leaves scanned per query, against dimension."""
    fig, (speed, leaves) = plt.subplots(1, 2, figsize=(12, 4))
    dims = [r["dim"] for r in rows]
    speed.plot(dims, [r["kdtree_speedup"] for r in rows], "-o", label="KD-tree (written here)")
    speed.plot(dims, [r["sklearn_speedup"] for r in rows], "--s", label="scikit-learn KD-tree")
    speed.axhline(1, color="k", linewidth=0.8)
    speed.set(xscale="log", yscale="log", xlabel="dimension (PCA of Fashion-MNIST pixels)", ylabel="QPS / exact search QPS (log)",
              title="KD-tree speed-up over exact search (above 1 = faster)")
    speed.legend()
    leaves.plot(dims, [r["leaves_visited"] for r in rows], "-o")
    leaves.set(xscale="log", yscale="log", xlabel="dimension", ylabel="leaves scanned per query (log)",
               title=f"Pruning weakens: leaves scanned of {rows[0]['leaves']:,}")
    for ax in (speed, leaves):
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def save_figures(out: dict) -> dict[str, str]:
    """Draw the three figures from a benchmark result (what ``ann`` wrote); returns their paths."""
    results = out["results"]
    first = next(iter(results))
    figures = {
        "pareto": save_figure(plot_pareto(results), "bench_ann_pareto"),
        "memory": save_figure(plot_memory(results[first], out["datasets"][first]["dim"], f"Index memory on {first}"), "bench_ann_memory"),
        "kdtree_dimensions": save_figure(plot_kdtree_dimensions(out["kdtree_dimensions"]["rows"]), "bench_ann_kdtree_dims"),
    }
    plt.close("all")
    return {k: os.path.relpath(v, config.REPO_ROOT) for k, v in figures.items()}


def replot(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Redraw the figures from a saved ``bench_ann.json`` without re-running (or re-timing) anything."""
    path = path or config.RESULTS_DIR / "bench_ann.json"
    return save_figures(json.loads(open(path).read()))


def ann(seed: int = 0) -> dict:
    """Run the whole ANN benchmark; write ``results/bench_ann.json`` and three figures."""
    import faiss

    fast = config.is_fast()
    faiss.omp_set_num_threads(1)
    datasets = load_datasets(fast)
    results: dict[str, list[dict]] = {}
    with threadpool_limits(1):
        for name, (base, queries) in datasets.items():
            truth = build_index("exact", base.shape[1]).add(base).search(queries, K)[1]
            rows: list[dict] = []
            bar = tqdm(methods_for(base.shape[1], len(base), fast), desc=name[:30])
            for method in bar:
                bar.set_postfix_str(method.name)
                for row in run_method(method, base, queries, truth):
                    row["n_base"] = len(base)
                    rows.append(row)
                    tqdm.write(f"  {row['method']:32s} {str(row['search']):20s} recall@10={row['recall@10']:.3f} "
                               f"QPS={row['qps']:9,.0f} build={row['build_s']:6.1f}s B/vec={row['bytes_per_vector']:7,.0f}")
            results[name] = rows
        pixels_base, pixels_queries = next(iter(datasets.values()))
        n_dim_queries = 200 if fast else 2000
        dims = kdtree_dimensions(pixels_base, pixels_queries[:n_dim_queries], seed=seed)
        for row in dims:
            print(f"  dim {row['dim']:3d}: KD-tree {row['kdtree_speedup']:.1f}x exact, scikit-learn {row['sklearn_speedup']:.1f}x, "
                  f"leaves {row['leaves_visited']:.1f}/{row['leaves']}", flush=True)
    from visual_search.data import load_fashion_mnist, load_sample

    gallery = load_sample().gallery_images if fast else load_fashion_mnist("train")[0][:10_000]
    dupes = near_duplicates(gallery, 50 if fast else 500, seed=seed)
    print(f"  MinHash LSH near-duplicates: {json.dumps(dupes['thresholds'])}", flush=True)

    first = next(iter(results))
    out = {
        "benchmark": "ann",
        "command": "python -m visual_search.bench ann" + (" --fast" if fast else ""),
        "fast_mode": fast, "seed": seed, "k": K, "threads": 1,
        "machine": {"python": platform.python_version(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "faiss": faiss.__version__, "numpy": np.__version__, "load_average": os.getloadavg()},
        "datasets": {name: {"n_base": len(b), "n_queries": len(q), "dim": b.shape[1]} for name, (b, q) in datasets.items()},
        "targets": targets(results[first], fast),
        "results": results,
        "kdtree_dimensions": {"queries": n_dim_queries, "rows": dims},
        "near_duplicates": dupes,
    }
    out["figures"] = save_figures(out)
    results_dir = config.REPO_ROOT / "build" / "results-fast" if fast else config.RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "bench_ann.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"targets: {json.dumps(out['targets'], indent=2)}")
    print(f"wrote {results_dir / 'bench_ann.json'} and {', '.join(out['figures'].values())}")
    return out
