"""``bench ann``: the nearest-neighbour benchmark, in the style of ann-benchmarks.

    python -m visual_search.bench ann          # full: 60,000 base vectors, 10,000 queries
    python -m visual_search.bench ann --fast   # a slice of the committed sample, small sweeps (CI)

For every method and every point of its parameter sweep, on one CPU thread:
recall@10 against exact search, queries per second (batched queries, as Faiss
and ann-benchmarks' batch mode measure them), build time (train + add), and
memory (the fixed part, e.g. centroids or tables, plus the bytes each extra
vector costs, which is what scales to 100 billion images). The measuring is
``visual_search.index.measure`` (``Method``, ``run_method``), which chapters 05
and 06 call too; this module holds only the benchmark's choices and its plots.

Data: Fashion-MNIST as raw 784-d pixels in [0, 1] (metric l2), and the
committed SimCLR CNN's L2-normalised embeddings (l2 on unit vectors ranks like
cosine). Plus two side studies: the KD-tree's speed-up over exact search as the
dimension grows (PCA of the pixels to 2..64 dimensions), and MinHash LSH for
near-duplicate detection against brute-force Jaccard.

Sizes (``sizes``): full mode, the 60,000 train images against the 10,000 test
images, the full sweeps, 2,000 queries for the KD-tree study and 10,000 images
with 500 planted copies for near-duplicates. Fast mode runs the same code on
1,000 base vectors and 100 queries from the committed sample, two or three
points per sweep, 32/16 IVF lists (32 ScaNN leaves), 6-bit PQ codes (64 centroids per
sub-quantizer instead of 256: PQ training is most of a fast run), 50 queries for
the KD-tree study and 500 images with 20 copies.

Every method of one data set runs in the same process, one after another, so
the ratios in ``targets`` compare numbers measured side by side.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from visual_search import config
from visual_search.bench._common import machine, relative, write_result
from visual_search.index.exact import exact_search
from visual_search.index.measure import K, Method, kdtree_dimensions, run_method
from visual_search.timing import Timer
from visual_search.viz import plot_kdtree_dimensions, save_figure


def sizes(fast: bool) -> dict:
    """How much data each mode uses (fast mode: the same code on less data, fewer sweep points)."""
    if fast:
        return {"n_base": 1000, "n_queries": 100, "dim_queries": 50, "dupe_gallery": 500, "dupe_copies": 20}
    return {"n_base": None, "n_queries": None, "dim_queries": 2000, "dupe_gallery": 10_000, "dupe_copies": 500}


def methods_for(dim: int, n: int, fast: bool) -> list[Method]:
    """The methods and sweeps for ``n`` base vectors of dimension ``dim`` (fast mode: fewer lists and sweep points)."""
    nlist = 32 if fast else 1024
    pq_nlist = 16 if fast else 256
    m = dim // 8 if dim % 8 == 0 else dim // 4 if dim % 4 == 0 else dim  # 8 (or 4) numbers per sub-quantizer
    # Codes of 2**nbits centroids per sub-quantizer. Training costs m x 2**nbits k-means
    # centroids, the bulk of a fast run at 8 bits, so fast mode trains 64 (6 bits).
    nbits = 6 if fast else 8
    pq = f"PQ{m}" if nbits == 8 else f"PQ{m}x{nbits}"  # Faiss's spelling
    pq_params = {"m": m} if nbits == 8 else {"m": m, "nbits": nbits}  # 8 is the default
    nprobes = (1, 4, 16) if fast else (1, 2, 4, 8, 16, 32, 64)  # 16 stays: ``targets`` compares at nprobe=16
    pq_nprobes = (1, 16) if fast else (1, 4, 16, 64)
    slow = 50 if fast else (200 if dim > 100 else 1000)
    scann_leaves = 32 if fast else 256
    return [
        Method("exact (NumPy)", "exact"),
        Method("Faiss Flat", "faiss", {"factory": "Flat"}, own=False),
        Method("KD-tree", "kdtree", {"leaf_size": 32}, max_queries=slow),
        Method("scikit-learn KD-tree", "sklearn-kdtree", max_queries=slow // 2, own=False),
        Method("scikit-learn ball tree", "sklearn-balltree", max_queries=slow // 2, own=False),
        Method("LSH 16x16 bits, 16 probes", "lsh", {"n_tables": 16, "n_bits": 16, "n_probes": 16}, "rerank", (100, 400) if fast else (50, 100, 200, 400, 800)),
        Method("LSH 24x16 bits, 16 probes", "lsh", {"n_tables": 24, "n_bits": 16, "n_probes": 16}, "rerank", (400,) if fast else (200, 400, 800)),
        Method(f"Faiss LSH {max(1024, dim)} bits", "faiss", {"factory": f"LSH{max(1024, dim)}rt"}, own=False),
        Method(f"IVF{nlist}", "ivf", {"nlist": nlist}, "nprobe", nprobes),
        Method(f"Faiss IVF{nlist},Flat", "faiss", {"factory": f"IVF{nlist},Flat"}, "nprobe", nprobes, own=False),
        Method(pq, "pq", pq_params, max_queries=slow),
        Method(f"IVF{pq_nlist}-{pq}", "ivfpq", {"nlist": pq_nlist, **pq_params}, "nprobe", pq_nprobes),
        # "np": no polysemous training. It only reorders codes for Hamming pre-filtering (unused
        # here), leaves ADC recall unchanged, and costs about 2 minutes on one thread.
        Method(f"Faiss IVF{pq_nlist},{pq}", "faiss", {"factory": f"IVF{pq_nlist},{pq}np"}, "nprobe", pq_nprobes, own=False),
        Method("Faiss HNSW32", "faiss", {"factory": "HNSW32"}, "efSearch", (16, 64) if fast else (16, 32, 64, 128), own=False),
        # ScaNN: a k-means tree of about sqrt(n) leaves, 4-bit codes per 2 dimensions, the best 100 by code
        # re-scored exactly; trained on a seeded 20,000-vector sample (the tree's k-means is most of the
        # build), and swept over leaves searched like IVF's nprobe. Full mode, 2,000 queries: recall@10
        # 0.91 (pixels) / 0.93 (SimCLR) at 4 leaves, 0.98 at 8, 0.99+ from 16 on.
        Method(f"ScaNN {scann_leaves} leaves, AH, reorder 100", "scann",
               {"num_leaves": scann_leaves, "num_leaves_to_search": 8, "training_sample_size": 20_000, "reorder": 100},
               "leaves_to_search", (2, 8) if fast else (2, 4, 8, 16, 32, 64), own=False),
        Method(f"Annoy {10 if fast else 50} trees", "annoy", {"n_trees": 10 if fast else 50}, "search_k",
               (500, 5000) if fast else (500, 2000, 5000, 20000), max_queries=slow * 5, own=False),
    ]


def _spaced(x: np.ndarray, n: int | None) -> np.ndarray:
    """``n`` evenly spaced rows of ``x`` (all of them for None): class-balanced, as the sample is stored class by class."""
    return x if n is None else x[np.linspace(0, len(x) - 1, n).round().astype(np.int64)]


def load_datasets(fast: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (base float32 [N, d], queries float32 [Q, d])}``: raw pixels and SimCLR embeddings (sizes: ``sizes``)."""
    from visual_search.data import load_fashion_mnist, load_sample
    from visual_search.embed import embed
    from visual_search.models import load_pretrained

    if fast:
        sample = load_sample()
        size = sizes(fast)
        base_images, query_images = _spaced(sample.gallery_images, size["n_base"]), _spaced(sample.query_images, size["n_queries"])
    else:
        base_images, query_images = load_fashion_mnist("train")[0], load_fashion_mnist("test")[0]
    pixels = lambda images: images.reshape(len(images), -1).astype(np.float32) / 255.0
    encoder = load_pretrained()
    base_emb, query_emb = embed(encoder, base_images, progress=not fast), embed(encoder, query_images, progress=not fast)
    return {
        "Fashion-MNIST pixels (784-d)": (pixels(base_images), pixels(query_images)),
        f"SimCLR CNN embeddings ({base_emb.shape[1]}-d)": (base_emb, query_emb),
    }


def near_duplicates(images: np.ndarray, n_copies: int, seed: int = 0) -> dict:
    """Plant noisy, re-brightened copies of gallery images and find them with MinHash LSH vs brute force."""
    from visual_search.index.minhash import NearDuplicateIndex, image_tokens, jaccard

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), n_copies, replace=False)
    copies = np.clip(images[pick] * rng.uniform(0.85, 1.15, (n_copies, 1, 1)) + rng.normal(0, 8, (n_copies, 28, 28)), 0, 255).astype(np.uint8)
    out: dict = {"gallery": len(images), "copies": n_copies, "thresholds": {}}
    gallery_tokens = [image_tokens(image) for image in images]
    n_brute = min(50, n_copies)  # brute force is slow: time it on the first copies only
    with Timer() as brute_timer:
        brute = []
        for copy in copies[:n_brute]:  # exact Jaccard against every stored set
            tokens = image_tokens(copy)
            brute.append([i for i, t in enumerate(gallery_tokens) if jaccard(tokens, t) >= 0.8])
    out["brute_force_ms_per_query"] = brute_timer.seconds / n_brute * 1000
    for threshold in (0.8, 0.9):
        index = NearDuplicateIndex(threshold=threshold)
        with Timer() as build:
            index.add(list(range(len(images))), images)
        with Timer() as search:
            found = index.query(copies)
        build_s, query_ms = build.seconds, search.seconds / n_copies * 1000
        out["thresholds"][str(threshold)] = {
            "original_found": float(np.mean([p in f for p, f in zip(pick, found)])),
            "matches_per_query": float(np.mean([len(f) for f in found])),
            "build_s": build_s, "query_ms": query_ms,
            "original_first": float(np.mean([bool(f) and f[0] == p for p, f in zip(pick, found)])),
        }
        if threshold == 0.8:  # LSH may miss a pair that brute force finds: its recall vs exact Jaccard
            pairs = [(f, b) for f, b in zip(found[:n_brute], brute) if b]  # queries with at least one true match
            out["lsh_recall_vs_brute_force"] = float(np.mean([len(set(f) & set(b)) / len(b) for f, b in pairs]))
    return out


def targets(rows: list[dict], fast: bool) -> dict:
    """The issue's performance targets, computed from rows measured side by side."""
    by = lambda name, **search: next((r for r in rows if r["method"] == name and all(r["search"].get(k) == v for k, v in search.items())), None)
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
    return {k: relative(v) for k, v in figures.items()}


def replot(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Redraw the figures from a saved ``bench_ann.json`` without re-running (or re-timing) anything."""
    path = path or config.results_dir() / "bench_ann.json"
    return save_figures(json.loads(Path(path).read_text()))


def run(seed: int = 0) -> dict:
    """Run the whole ANN benchmark; write ``bench_ann.json`` and three figures. Returns the JSON."""
    import faiss

    fast = config.is_fast()
    size = sizes(fast)
    faiss.omp_set_num_threads(1)
    datasets = load_datasets(fast)
    results: dict[str, list[dict]] = {}
    with threadpool_limits(1):
        for name, (base, queries) in datasets.items():
            truth = exact_search(queries, base, K, metric="l2")[1]
            rows: list[dict] = []
            bar = tqdm(methods_for(base.shape[1], len(base), fast), desc=name[:30])
            for method in bar:
                bar.set_postfix_str(method.name)
                for row in run_method(method, base, queries, truth):
                    row["n_base"] = len(base)
                    rows.append(row)
                    tqdm.write(f"  {row['method']:32s} {row['search']!s:20s} recall@10={row['recall@10']:.3f} "
                               f"QPS={row['qps']:9,.0f} build={row['build_s']:6.1f}s B/vec={row['bytes_per_vector']:7,.0f}")
            results[name] = rows
        pixels_base, pixels_queries = next(iter(datasets.values()))
        dims = kdtree_dimensions(pixels_base, pixels_queries[: size["dim_queries"]], seed=seed)
        for row in dims:
            print(f"  dim {row['dim']:3d}: KD-tree {row['kdtree_speedup']:.1f}x exact, scikit-learn {row['sklearn_speedup']:.1f}x, "
                  f"leaves {row['leaves_visited']:.1f}/{row['leaves']}", flush=True)
    from visual_search.data import load_fashion_mnist, load_sample

    gallery = _spaced(load_sample().gallery_images, size["dupe_gallery"]) if fast else load_fashion_mnist("train")[0][: size["dupe_gallery"]]
    dupes = near_duplicates(gallery, size["dupe_copies"], seed=seed)
    print(f"  MinHash LSH near-duplicates: {json.dumps(dupes['thresholds'])}", flush=True)

    first = next(iter(results))
    out = {
        "benchmark": "ann",
        "command": "python -m visual_search.bench ann" + (" --fast" if fast else ""),
        "fast_mode": fast, "seed": seed, "k": K, "threads": 1,
        "machine": machine(faiss=faiss.__version__, numpy=np.__version__, load_average=os.getloadavg()),
        "datasets": {name: {"n_base": len(b), "n_queries": len(q), "dim": b.shape[1]} for name, (b, q) in datasets.items()},
        "targets": targets(results[first], fast),
        "results": results,
        "kdtree_dimensions": {"queries": min(size["dim_queries"], len(pixels_queries)), "rows": dims},
        "near_duplicates": dupes,
    }
    out["figures"] = save_figures(out)
    path = write_result("bench_ann", out)
    print(f"targets: {json.dumps(out['targets'], indent=2)}")
    print(f"wrote {path} and {', '.join(out['figures'].values())}")
    return out
