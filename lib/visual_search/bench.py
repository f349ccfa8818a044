"""Benchmarks that write JSON to results/ and a figure to figures/.

    python -m visual_search.bench            # every benchmark (what `make bench` runs)
    python -m visual_search.bench encoders   # one of them

``baseline``: the raw-pixel baseline between a random ranking (the floor) and
the ideal ranking (each metric's ceiling) on the graded evaluation set,
measured side by side in one run: every offline metric, and nDCG@k for k from
1 to 100. Later chapters add their encoders and indexes here.

``ann``: nearest-neighbour indexes (exact, KD-tree, LSH, IVF, PQ, IVF-PQ, and
Faiss, Annoy and scikit-learn): recall@10, queries/s, build time and memory;
see ``visual_search.bench_ann``.

``encoders``: raw pixels, a random CNN, the committed SimCLR CNN, that CNN
fine-tuned on simulated clicks, and a supervised CNN (the ceiling): retrieval on
10,000 test queries against the 60,000 train images, the graded set, and
embedding throughput, all in one run.

The pieces (``rank_all``, ``score_rankings``, ``plot_scores``) read and write no
files, so notebook 07 calls them directly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from visual_search import config, metrics
from visual_search.baseline import cosine_rank, raw_pixel_embeddings
from visual_search.evalset import GradedEvalSet, evaluate_rankings, load_graded_eval
from visual_search.viz import save_figure

NDCG_KS = (1, 2, 3, 5, 10, 20, 50, 100)
#: Methods that are reference points rather than systems: drawn as lines, not bars.
ORACLE = "ideal (oracle)"


def rank_raw_pixels(evalset: GradedEvalSet, k: int = 100) -> np.ndarray:
    """Top-k gallery ids per query by cosine similarity of normalised raw pixels."""
    _, ids = cosine_rank(raw_pixel_embeddings(evalset.query_images), raw_pixel_embeddings(evalset.gallery_images), k)
    return ids


def rank_randomly(evalset: GradedEvalSet, k: int = 100, seed: int = 0) -> np.ndarray:
    """k distinct random gallery ids per query: the chance level every method must beat."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(len(evalset.gallery_images))[:k] for _ in range(len(evalset))])


def rank_ideally(evalset: GradedEvalSet, k: int = 100) -> np.ndarray:
    """The oracle: gallery ids sorted by grade (ties by id). Its scores are each metric's ceiling
    on this set; e.g. mAP@100 cannot reach 1 when a query has more than 100 relevant items."""
    return np.argsort(-evalset.grades.astype(np.int64), axis=1, kind="stable")[:, :k]


def rank_all(evalset: GradedEvalSet, k: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Rank with every method: ``{name: ids [Q, k]}``, floor first, ceiling last."""
    return {
        "random": rank_randomly(evalset, k, seed=seed),
        "raw pixels": rank_raw_pixels(evalset, k),
        ORACLE: rank_ideally(evalset, k),
    }


def score_rankings(rankings: dict[str, np.ndarray], evalset: GradedEvalSet) -> dict[str, dict]:
    """Every offline metric per method, plus ``"nDCG@k"``: ``{k: mean nDCG@k}`` for ``NDCG_KS``."""
    grade_maps = evalset.grade_maps()
    scores = {}
    for name, ranked in rankings.items():
        scores[name] = evaluate_rankings(ranked, evalset)
        scores[name]["nDCG@k"] = {k: metrics.mean_ndcg_at_k(ranked.tolist(), grade_maps, k) for k in NDCG_KS}
    return scores


def plot_scores(scores: dict[str, dict], title: str):
    """Bars per metric for each method, the oracle as dashed ceilings; nDCG@k against k. Returns the figure."""
    names = [m for m in scores[ORACLE] if m != "nDCG@k"]
    methods = [m for m in scores if m != ORACLE]
    fig, (bars, curve) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(methods)
    x = np.arange(len(names))
    for i, method in enumerate(methods):
        drawn = bars.bar(x + (i - (len(methods) - 1) / 2) * width, [scores[method][m] for m in names], width, label=method)
        bars.bar_label(drawn, fmt="%.2f", fontsize=7, padding=1)
        curve.plot(NDCG_KS, [scores[method]["nDCG@k"][k] for k in NDCG_KS], marker="o", label=method)
    bars.hlines([scores[ORACLE][m] for m in names], x - 0.45, x + 0.45, colors="black", linestyles="dashed", label="best possible (oracle)")
    bars.set_xticks(x, names)
    bars.set_ylim(0, 1.22)
    bars.set_title(title)
    bars.legend(fontsize=8, loc="upper center", ncol=len(methods) + 1)
    curve.set_xscale("log")
    curve.set_xticks(NDCG_KS, [str(k) for k in NDCG_KS])
    curve.set_xlabel("k")
    curve.set_ylabel("mean nDCG@k")
    curve.set_ylim(0, 1)
    curve.set_title("nDCG@k on 0-5 graded relevance (oracle = 1)")
    curve.legend(fontsize=8)
    fig.tight_layout()
    return fig


def baseline(seed: int = 0) -> dict:
    """Rank, score and plot every method on the graded set; write JSON to results/ and a PNG to figures/.

    In fast mode: 100 queries, and the JSON goes to ``build/results-fast/`` so
    committed results are never overwritten by a test.
    """
    evalset = load_graded_eval()
    if config.is_fast():
        evalset = evalset.subset(100)
    start = time.perf_counter()
    rankings = rank_all(evalset, seed=seed)
    seconds = time.perf_counter() - start
    scores = score_rankings(rankings, evalset)
    for name, result in scores.items():
        print(f"{name:16s} " + "  ".join(f"{m}={v:.3f}" for m, v in result.items() if m != "nDCG@k"))

    title = f"Offline metrics: {len(evalset)} queries x {len(evalset.gallery_images)} candidates"
    fig = plot_scores(scores, title)
    figure = save_figure(fig, "bench_baseline")
    plt.close(fig)

    out = {
        "benchmark": "baseline",
        "command": "python -m visual_search.bench",
        "fast_mode": config.is_fast(),
        "seed": seed,
        "queries": len(evalset),
        "candidates": len(evalset.gallery_images),
        "machine": {"python": platform.python_version(), "processor": platform.machine(), "cpus": os.cpu_count()},
        "ranking_seconds_all_methods": seconds,
        "metrics": scores,
        "figure": os.path.relpath(figure, config.REPO_ROOT),
    }
    results_dir = config.REPO_ROOT / "build" / "results-fast" if config.is_fast() else config.RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "bench_baseline.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path} and {figure}")
    return out


def class_retrieval_metrics(query_emb: np.ndarray, query_labels: np.ndarray, gallery_emb: np.ndarray, gallery_labels: np.ndarray, k: int = 100) -> dict[str, float]:
    """Exact top-k by cosine, relevance = same class: P@1, P@10, MRR and mAP@k (vectorised)."""
    _, ids = cosine_rank(query_emb, gallery_emb, k)
    hits = gallery_labels[ids] == query_labels[:, None]
    n_relevant = np.bincount(gallery_labels, minlength=int(query_labels.max()) + 1)[query_labels]  # same-class gallery images
    scores = metrics.binary_metrics_from_hits(hits, n_relevant, ks=(1, 10))
    return {m: scores[m] for m in ("P@1", "P@10", "MRR", f"mAP@{k}")}


def _throughput(embed_fn, images: np.ndarray) -> float:
    """Images per second per CPU core for ``embed_fn(images)``: one thread, best of two runs.

    One thread, because per-core numbers are what a capacity plan multiplies, and
    because torch's multi-threaded small batches slow down badly when another
    process shares the cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = np.inf
        for _ in range(2):  # the first run also warms up
            start = time.perf_counter()
            embed_fn(images)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return len(images) / best


def encoders(seed: int = 0) -> dict:
    """Compare encoders on retrieval: raw pixels, a random CNN, the SimCLR CNN (and its other layers), SimCLR + clicks, supervised.

    Setting (full mode): the 10,000 test images as queries against the 60,000 train
    images, relevant = same class; plus the graded evaluation set (mAP@100, nDCG@10);
    plus embedding throughput on this CPU. Fast mode: the committed sample, tiny training.
    Writes ``results/bench_encoders.json`` and ``figures/bench_encoders.png``.
    """
    from visual_search.contrastive import positives_from_clicks, simulate_click_log
    from visual_search.data import load_fashion_mnist, load_sample
    from visual_search.embed import embed
    from visual_search.models import build_encoder, load_pretrained
    from visual_search.train import finetune_on_pairs, train_supervised

    fast = config.is_fast()
    if fast:
        sample = load_sample()
        gallery, gallery_labels, queries, query_labels = sample.gallery_images, sample.gallery_labels, sample.query_images, sample.query_labels
    else:
        gallery, gallery_labels = load_fashion_mnist("train")
        queries, query_labels = load_fashion_mnist("test")
    evalset = load_graded_eval()
    simclr = load_pretrained()
    settings = {k: v for k, v in simclr.config.items() if k != "seed"}

    def timed(label: str, fn):
        start = time.perf_counter()
        result = fn()
        print(f"  {label}: {time.perf_counter() - start:.0f} s", flush=True)
        return result

    supervised = timed("supervised training", lambda: train_supervised(
        build_encoder(simclr.name, seed=seed, **settings), gallery, gallery_labels, epochs=1 if fast else 3, seed=seed, progress=not fast))
    # Clicks: a simulated log on the gallery, where the production system shows SimCLR's top results.
    gallery_simclr = embed(simclr, gallery)
    _, nearest = cosine_rank(gallery_simclr, gallery_simclr, 11)
    # Never show an image as a result for itself (exact duplicates can outrank the self-match).
    not_self = nearest != np.arange(len(gallery))[:, None]
    shown = np.stack([row[keep][:10] for row, keep in zip(nearest, not_self)])
    log = simulate_click_log(gallery_labels, n_sessions=len(gallery), n_shown=10, seed=seed, ranking=shown)
    click_q, click_p = positives_from_clicks(log)
    clicked = timed("click fine-tuning", lambda: finetune_on_pairs(
        load_pretrained(), gallery, click_q, click_p, epochs=1 if fast else 2, seed=seed, progress=not fast))

    rows = {
        "raw pixels": raw_pixel_embeddings,
        "random-init CNN": lambda x: embed(build_encoder(simclr.name, seed=seed, **settings), x),
        "SimCLR CNN (committed)": lambda x: embed(simclr, x),  # its retrieval layer: the pooled features
        "SimCLR CNN, embedding layer": lambda x: embed(simclr, x, layer="embedding"),
        "SimCLR CNN, head": lambda x: embed(simclr, x, layer="head"),  # what the loss sees; dropped for retrieval
        "SimCLR CNN + clicks": lambda x: embed(clicked, x),
        "supervised CNN (ceiling)": lambda x: embed(supervised, x),
    }
    results: dict = {}
    for name, embed_fn in rows.items():
        q, g = embed_fn(queries), embed_fn(gallery)
        row = class_retrieval_metrics(q, query_labels, g, gallery_labels)
        _, graded_ids = cosine_rank(embed_fn(evalset.query_images), embed_fn(evalset.gallery_images), 100)
        graded = evaluate_rankings(graded_ids, evalset)
        row.update({"graded mAP@100": graded["mAP@100"], "graded nDCG@10": graded["nDCG@10"]})
        row["images/s"] = _throughput(embed_fn, queries[: 500 if fast else 2000])
        results[name] = row
        print(f"{name:26s} " + "  ".join(f"{m}={v:.3f}" if m != "images/s" else f"{m}={v:,.0f}" for m, v in row.items()), flush=True)

    out = {
        "benchmark": "encoders",
        "command": "python -m visual_search.bench encoders",
        "fast_mode": fast,
        "seed": seed,
        "setting": f"{len(queries)} queries vs {len(gallery)} gallery images, relevant = same class; graded set {len(evalset)} x {len(evalset.gallery_images)}",
        "click_log": {"sessions": len(log.query_ids), "clicks": int((log.clicked_ids >= 0).sum()), "click_precision": float(np.mean(gallery_labels[click_p] == gallery_labels[click_q]))},
        "machine": {"python": platform.python_version(), "processor": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
        "metrics": results,
    }
    names = list(results)
    columns = ["P@1", "P@10", "MRR", "graded mAP@100", "graded nDCG@10"]
    fig, (bars, speed) = plt.subplots(1, 2, figsize=(15, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(names)
    x = np.arange(len(columns))
    for i, name in enumerate(names):
        drawn = bars.bar(x + (i - (len(names) - 1) / 2) * width, [results[name][c] for c in columns], width, label=name)
        bars.bar_label(drawn, fmt="%.2f", fontsize=6, padding=1)
    bars.set_xticks(x, columns)
    bars.set_ylim(0, 1.15)
    bars.set_title(f"Retrieval quality ({len(queries):,} queries vs {len(gallery):,} images; graded set)")
    bars.legend(fontsize=7, ncol=3, loc="upper center")
    speed.barh(names, [results[n]["images/s"] for n in names], color=[f"C{i}" for i in range(len(names))])
    speed.set_xscale("log")
    speed.set_xlabel("images / s per core (log scale)")
    speed.set_title("Embedding throughput, one CPU thread")
    speed.invert_yaxis()
    fig.tight_layout()
    figure = save_figure(fig, "bench_encoders")
    plt.close(fig)
    out["figure"] = os.path.relpath(figure, config.REPO_ROOT)
    results_dir = config.REPO_ROOT / "build" / "results-fast" if fast else config.RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "bench_encoders.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {results_dir / 'bench_encoders.json'} and {figure}")
    return out


def ann(seed: int = 0) -> dict:
    """Nearest-neighbour search: see ``visual_search.bench_ann``."""
    from visual_search.bench_ann import ann as run_ann

    return run_ann(seed=seed)


BENCHMARKS = {"baseline": baseline, "encoders": encoders, "ann": ann}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", help=f"benchmarks to run, from {list(BENCHMARKS)} (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="small data and few steps (what CI runs); outputs go to build/")
    args = parser.parse_args(argv)
    if args.fast:
        os.environ["VISUAL_SEARCH_FAST"] = "1"
    unknown = sorted(set(args.which) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    for name in args.which or BENCHMARKS:
        BENCHMARKS[name](seed=args.seed)


if __name__ == "__main__":
    main()
