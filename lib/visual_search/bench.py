"""Benchmarks that write JSON to results/ and a figure to figures/.

    python -m visual_search.bench            # what `make bench` runs

``baseline``: the raw-pixel baseline between a random ranking (the floor) and
the ideal ranking (each metric's ceiling) on the graded evaluation set,
measured side by side in one run: every offline metric, and nDCG@k for k from
1 to 100. Later chapters add their encoders and indexes here.

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    baseline(seed=args.seed)


if __name__ == "__main__":
    main()
