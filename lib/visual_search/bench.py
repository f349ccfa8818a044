"""Benchmarks that write JSON to results/ and a figure to figures/.

    python -m visual_search.bench            # what `make bench` runs

``baseline``: the raw-pixel baseline between a random ranking (the floor) and
the ideal ranking (each metric's ceiling) on the graded evaluation set,
measured side by side in one run: every offline metric, and nDCG@k for k = 1..100. Later chapters add their encoders and indexes here.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import matplotlib.pyplot as plt
import numpy as np

from visual_search import config, metrics
from visual_search.baseline import cosine_rank, raw_pixel_embeddings
from visual_search.evalset import GradedEvalSet, evaluate_rankings, load_graded_eval
from visual_search.viz import save_figure

NDCG_KS = (1, 2, 3, 5, 10, 20, 50, 100)


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


def baseline(seed: int = 0) -> dict:
    """Score raw pixels and random ranking on the graded set; write JSON and a figure."""
    evalset = load_graded_eval()
    if config.is_fast():
        evalset = evalset.subset(100)
    rankers = {
        "random": lambda ev: rank_randomly(ev, seed=seed),
        "raw pixels (cosine)": rank_raw_pixels,
        "ideal (oracle)": rank_ideally,
    }
    out: dict = {
        "benchmark": "baseline",
        "command": "python -m visual_search.bench",
        "fast_mode": config.is_fast(),
        "queries": len(evalset),
        "candidates": len(evalset.gallery_images),
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "methods": {},
    }
    grade_maps = evalset.grade_maps()
    for name, rank in rankers.items():
        start = time.perf_counter()
        ranked = rank(evalset)
        seconds = time.perf_counter() - start
        scores = evaluate_rankings(ranked, evalset)
        lists = ranked.tolist()
        scores["nDCG@k"] = {k: metrics.mean_ndcg_at_k(lists, grade_maps, k) for k in NDCG_KS}
        out["methods"][name] = {"metrics": scores, "ranking_seconds": seconds}
        print(f"{name:22s} " + "  ".join(f"{m}={v:.3f}" for m, v in scores.items() if m != "nDCG@k"))

    fig, (bars, curve) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [m for m in next(iter(out["methods"].values()))["metrics"] if m != "nDCG@k"]
    width = 0.8 / len(out["methods"])
    for i, (method, result) in enumerate(out["methods"].items()):
        bars.bar(np.arange(len(names)) + i * width, [result["metrics"][m] for m in names], width, label=method)
        curve.plot(NDCG_KS, [result["metrics"]["nDCG@k"][k] for k in NDCG_KS], marker="o", label=method)
    bars.set_xticks(np.arange(len(names)) + width * (len(out["methods"]) - 1) / 2, names)
    bars.set_ylim(0, 1.18)
    bars.set_title(f"Offline metrics, {len(evalset)} queries x {len(evalset.gallery_images)} candidates")
    bars.legend(ncol=3, loc="upper center", fontsize=8)
    curve.set_xscale("log")
    curve.set_xlabel("k")
    curve.set_ylabel("mean nDCG@k")
    curve.set_ylim(0, 1.05)
    curve.set_title("nDCG@k on 0-5 graded relevance")
    curve.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    out["figure"] = str(save_figure(fig, "bench_baseline").relative_to(config.REPO_ROOT)) if not config.is_fast() else "fast mode: not saved to figures/"
    plt.close(fig)

    results_dir = config.RESULTS_DIR if not config.is_fast() else config.REPO_ROOT / "build" / "results-fast"
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "bench_baseline.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    baseline(seed=args.seed)


if __name__ == "__main__":
    main()
