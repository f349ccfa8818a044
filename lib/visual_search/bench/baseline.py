"""``bench baseline``: the raw-pixel baseline between chance and the oracle on the graded evaluation set.

    python -m visual_search.bench baseline

Every offline metric, and nDCG@k for k from 1 to 100, for a random ranking (the
floor), raw pixels, and the ideal ranking (each metric's ceiling), measured side
by side in one run. The rankings and scores are ``evalset.rank_all`` and
``evalset.score_rankings``, the figure ``viz.plot_scores``: the same functions
notebook 07 calls. Writes ``bench_baseline.json`` and ``bench_baseline.png``.

Sizes: 500 queries x 2,500 candidates; fast mode: 100 queries, same candidates.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from visual_search import config
from visual_search.bench._common import machine, relative, write_result
from visual_search.evalset import load_graded_eval, rank_all, score_rankings
from visual_search.timing import Timer
from visual_search.viz import plot_scores, save_figure

#: Queries of the graded set in fast mode (full mode: all 500).
FAST_QUERIES = 100


def run(seed: int = 0) -> dict:
    """Rank, score and plot every reference method on the graded set; write the JSON and the figure. Returns the JSON."""
    fast = config.is_fast()
    evalset = load_graded_eval()
    if fast:
        evalset = evalset.subset(FAST_QUERIES)
    with Timer() as ranking:
        rankings = rank_all(evalset, seed=seed)
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
        "fast_mode": fast,
        "seed": seed,
        "queries": len(evalset),
        "candidates": len(evalset.gallery_images),
        "machine": machine(),
        "ranking_seconds_all_methods": ranking.seconds,
        "metrics": scores,
        "figure": relative(figure),
    }
    path = write_result("bench_baseline", out)
    print(f"wrote {path} and {figure}")
    return out
