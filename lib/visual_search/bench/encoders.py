"""``bench encoders``: which encoder retrieves best, and how fast it embeds.

    python -m visual_search.bench encoders

Rows: raw pixels, a random CNN, the committed SimCLR CNN (its pooled, embedding
and head layers), that CNN fine-tuned on simulated clicks, and a supervised CNN
(the ceiling). Columns: class retrieval (relevant = same class: P@1, P@10, MRR,
mAP@100), the graded set (mAP@100, nDCG@10) and embedding throughput on one
CPU thread (``timing.throughput``). Writes ``bench_encoders.json`` and
``bench_encoders.png``.

Sizes (``sizes``): full mode, the 10,000 test images as queries against the
60,000 train images, the whole graded set, 3 supervised and 2 click epochs,
throughput on 2,000 images. Fast mode runs the same code on a slice of the
committed sample: 100 queries against 500 gallery images (class-balanced), the
graded set cut to 100 queries x 600 candidates, one epoch of each training on
the 500 gallery images, throughput on 100 images.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from visual_search import config, metrics
from visual_search.bench._common import machine, relative, write_result
from visual_search.embed import raw_pixel_embeddings
from visual_search.evalset import evaluate_rankings, load_graded_eval
from visual_search.index.exact import exact_search
from visual_search.timing import throughput, timed
from visual_search.viz import save_figure

ROWS = (
    "raw pixels",
    "random-init CNN",
    "SimCLR CNN (committed)",
    "SimCLR CNN, embedding layer",
    "SimCLR CNN, head",
    "SimCLR CNN + clicks",
    "supervised CNN (ceiling)",
)


def sizes(fast: bool) -> dict:
    """How much data and training each mode uses (fast mode: the same code, less of everything)."""
    if fast:
        return {"query_step": 5, "gallery_step": 4, "graded_queries": 100, "graded_gallery": 600,
                "supervised_epochs": 1, "click_epochs": 1, "click_batch": 128, "throughput_images": 100}
    return {"query_step": 1, "gallery_step": 1, "graded_queries": None, "graded_gallery": None,
            "supervised_epochs": 3, "click_epochs": 2, "click_batch": 256, "throughput_images": 2000}


def class_retrieval_metrics(query_emb: np.ndarray, query_labels: np.ndarray, gallery_emb: np.ndarray, gallery_labels: np.ndarray, k: int = 100) -> dict[str, float]:
    """Exact top-k by cosine (unit rows), relevance = same class: P@1, P@10, MRR and mAP@k (vectorised)."""
    _, ids = exact_search(query_emb, gallery_emb, k, metric="ip")
    hits = gallery_labels[ids] == query_labels[:, None]
    n_relevant = np.bincount(gallery_labels, minlength=int(query_labels.max()) + 1)[query_labels]  # same-class gallery images
    scores = metrics.binary_metrics_from_hits(hits, n_relevant, ks=(1, 10))
    return {m: scores[m] for m in ("P@1", "P@10", "MRR", f"mAP@{k}")}


def run(seed: int = 0) -> dict:
    """Compare the encoders (``ROWS``) on retrieval and throughput; write the JSON and the figure. Returns the JSON."""
    from visual_search.contrastive import positives_from_clicks, simulate_click_log
    from visual_search.data import load_fashion_mnist, load_sample
    from visual_search.embed import embed
    from visual_search.models import build_encoder, load_pretrained
    from visual_search.train import finetune_on_pairs, train_supervised

    fast = config.is_fast()
    size = sizes(fast)
    if fast:
        sample = load_sample()
        gallery, gallery_labels, queries, query_labels = sample.gallery_images, sample.gallery_labels, sample.query_images, sample.query_labels
    else:
        gallery, gallery_labels = load_fashion_mnist("train")
        queries, query_labels = load_fashion_mnist("test")
    # Every step-th image: the sample is stored class by class, so a slice stays class-balanced.
    gallery, gallery_labels = gallery[:: size["gallery_step"]], gallery_labels[:: size["gallery_step"]]
    queries, query_labels = queries[:: size["query_step"]], query_labels[:: size["query_step"]]
    evalset = load_graded_eval()
    if size["graded_queries"] is not None:
        evalset = evalset.subset(size["graded_queries"], n_gallery=size["graded_gallery"])
    simclr = load_pretrained()
    settings = {k: v for k, v in simclr.config.items() if k != "seed"}

    with timed("supervised training"):
        supervised = train_supervised(build_encoder(simclr.name, seed=seed, **settings), gallery, gallery_labels,
                                      epochs=size["supervised_epochs"], seed=seed, progress=not fast)
    # Clicks: a simulated log on the gallery, where the production system shows SimCLR's top results.
    gallery_simclr = embed(simclr, gallery)
    _, nearest = exact_search(gallery_simclr, gallery_simclr, 11, metric="ip")
    # Never show an image as a result for itself (exact duplicates can outrank the self-match).
    not_self = nearest != np.arange(len(gallery))[:, None]
    shown = np.stack([row[keep][:10] for row, keep in zip(nearest, not_self)])
    log = simulate_click_log(gallery_labels, n_sessions=len(gallery), n_shown=10, seed=seed, ranking=shown)
    click_q, click_p = positives_from_clicks(log)
    with timed("click fine-tuning"):
        clicked = finetune_on_pairs(load_pretrained(), gallery, click_q, click_p, epochs=size["click_epochs"],
                                    batch_size=size["click_batch"], seed=seed, progress=not fast)

    random_cnn = build_encoder(simclr.name, seed=seed, **settings)
    embed_fns = dict(zip(ROWS, (
        raw_pixel_embeddings,
        lambda x: embed(random_cnn, x),
        lambda x: embed(simclr, x),  # its retrieval layer: the pooled features
        lambda x: embed(simclr, x, layer="embedding"),
        lambda x: embed(simclr, x, layer="head"),  # what the loss sees; dropped for retrieval
        lambda x: embed(clicked, x),
        lambda x: embed(supervised, x),
    )))
    results: dict = {}
    for name, embed_fn in embed_fns.items():
        row = class_retrieval_metrics(embed_fn(queries), query_labels, embed_fn(gallery), gallery_labels)
        _, graded_ids = exact_search(embed_fn(evalset.query_images), embed_fn(evalset.gallery_images), 100, metric="ip")
        graded = evaluate_rankings(graded_ids, evalset)
        row.update({"graded mAP@100": graded["mAP@100"], "graded nDCG@10": graded["nDCG@10"]})
        row["images/s"] = throughput(embed_fn, queries[: size["throughput_images"]], threads=1, repeats=2)
        results[name] = row
        print(f"{name:26s} " + "  ".join(f"{m}={v:.3f}" if m != "images/s" else f"{m}={v:,.0f}" for m, v in row.items()), flush=True)

    out = {
        "benchmark": "encoders",
        "command": "python -m visual_search.bench encoders",
        "fast_mode": fast,
        "seed": seed,
        "setting": f"{len(queries)} queries vs {len(gallery)} gallery images, relevant = same class; graded set {len(evalset)} x {len(evalset.gallery_images)}",
        "click_log": {"sessions": len(log.query_ids), "clicks": int((log.clicked_ids >= 0).sum()), "click_precision": float(np.mean(gallery_labels[click_p] == gallery_labels[click_q]))},
        "machine": machine(torch_threads=torch.get_num_threads(), load_average=os.getloadavg()),
        "metrics": results,
    }
    fig = plot_encoders(results, f"Retrieval quality ({len(queries):,} queries vs {len(gallery):,} images; graded set)")
    figure = save_figure(fig, "bench_encoders")
    plt.close(fig)
    out["figure"] = relative(figure)
    path = write_result("bench_encoders", out)
    print(f"wrote {path} and {figure}")
    return out


def plot_encoders(results: dict[str, dict], title: str):
    """Quality bars per encoder and metric, and throughput per encoder (log). Returns the figure."""
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
    bars.set_title(title)
    bars.legend(fontsize=7, ncol=3, loc="upper center")
    speed.barh(names, [results[n]["images/s"] for n in names], color=[f"C{i}" for i in range(len(names))])
    speed.set_xscale("log")
    speed.set_xlabel("images / s per core (log scale)")
    speed.set_title("Embedding throughput, one CPU thread")
    speed.invert_yaxis()
    fig.tight_layout()
    return fig
