"""``bench encoders``: which encoder retrieves best, and how fast it embeds.

    python -m visual_search.bench encoders

Rows: raw pixels, a random CNN, the committed self-supervised CNN (its retrieval
layer, "whitened": the conv map PCA-whitened without labels; and its pooled,
embedding and head layers), that CNN fine-tuned on simulated clicks and on labels
(the pretrained-then-fine-tuned route), a ViT trained with the same
self-supervised recipe, and a supervised CNN of the same backbone trained on the
labels until its kNN stops rising (the ceiling). The random and fine-tuned CNN
rows are read at the committed model's retrieval layer, the whitening refitted on
the gallery after their own training; the ceiling at its own best layer (pooled).
Columns: class retrieval
(relevant = same class: P@1, P@10, MRR, mAP@100), the linear probe (a logistic
regression on frozen gallery embeddings, its accuracy on the queries: how
self-supervised papers report), the graded set (mAP@100, nDCG@10) and embedding
throughput on one CPU thread (``timing.throughput``). Writes
``bench_encoders.json`` and ``bench_encoders.png``.

Sizes (``sizes``): full mode, the 10,000 test images as queries against the
60,000 train images, the whole graded set, 30 supervised epochs (its per-epoch
kNN is recorded, to show the plateau), 3 label and 2 click fine-tuning epochs,
the ViT's self-supervised run, throughput on 2,000 images. Fast mode runs the
same code on a slice of the committed sample: 100 queries against 500 gallery
images (class-balanced), the graded set cut to 100 queries x 600 candidates, one
epoch of each training on the 500 gallery images, throughput on 100 images.
"""

from __future__ import annotations

import dataclasses
import json
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
    "self-supervised CNN (committed)",
    "self-supervised CNN, pooled layer",
    "self-supervised CNN, embedding layer",
    "self-supervised CNN, head",
    "self-supervised CNN + clicks",
    "self-supervised CNN + labels",
    "self-supervised ViT",
    "supervised CNN (ceiling)",
)
#: The rows that learned without labels (the target compares them with raw pixels).
SELF_SUPERVISED = ROWS[2:6] + ("self-supervised ViT",)


#: Full-mode supervised epochs: 15 left the kNN monitor still rising (P@1 0.914 on the test set), 30 is where it flattens.
SUPERVISED_EPOCHS = 30


def sizes(fast: bool) -> dict:
    """How much data and training each mode uses (fast mode: the same code, less of everything)."""
    if fast:
        return {"query_step": 5, "gallery_step": 4, "graded_queries": 100, "graded_gallery": 600, "supervised_epochs": 1,
                "label_epochs": 1, "click_epochs": 1, "click_batch": 128, "vit_epochs": 1, "vit_batch": 128, "throughput_images": 100}
    return {"query_step": 1, "gallery_step": 1, "graded_queries": None, "graded_gallery": None, "supervised_epochs": SUPERVISED_EPOCHS,
            "label_epochs": 3, "click_epochs": 2, "click_batch": 256, "vit_epochs": VIT_EPOCHS, "vit_batch": 256, "throughput_images": 2000}


#: The ViT's self-supervised run in full mode (the committed CNN's recipe, on a 4x4 grid of 7 px patches).
VIT_EPOCHS = 5
VIT_ARGS = {"patch_size": 7, "depth": 4, "width": 96, "heads": 4}


def linear_probe_accuracy(train_emb: np.ndarray, train_labels: np.ndarray, test_emb: np.ndarray, test_labels: np.ndarray, seed: int = 0) -> float:
    """Accuracy on ``test_emb`` of a multinomial logistic regression fitted on frozen ``train_emb``.

    The standard way self-supervised papers report a representation: a linear
    classifier on top of it, with the encoder frozen. kNN P@1 asks whether the
    nearest image shares the class; the probe asks whether the classes are
    linearly separable at all, which a retrieval system does not need but a
    fine-tuned classifier would. scikit-learn's L-BFGS solver, L2 penalty C=1,
    features standardised on the training set.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, random_state=seed))
    probe.fit(train_emb, train_labels)
    return float(probe.score(test_emb, test_labels))


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
    from visual_search.embed import embed, refit_whitening
    from visual_search.models import build_encoder, load_pretrained
    from visual_search.train import TrainConfig, finetune_on_pairs, train_contrastive, train_supervised

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
    recipe = TrainConfig(**{k: v for k, v in simclr_recipe().items() if k in TrainConfig.__dataclass_fields__})
    monitor = load_sample()

    supervised_history: list[dict] = []
    # The ceiling is read at its own best layer, pooled: whitening its map measured lower (P@1 0.910 against
    # 0.914 pooled after 15 epochs), as labels already shape the pooled features for the classes.
    pooled_settings = {k: v for k, v in settings.items() if k != "whitening_dim"} | {"retrieval_layer": "pooled"}
    with timed("supervised training (until the plateau)"):
        supervised = train_supervised(build_encoder(simclr.name, seed=seed, **pooled_settings), gallery, gallery_labels, epochs=size["supervised_epochs"],
                                      seed=seed, progress=not fast, monitor=monitor, history=supervised_history)
    with timed("fine-tuning the committed model on labels"):
        labelled = train_supervised(load_pretrained(), gallery, gallery_labels, epochs=size["label_epochs"], lr=5e-4, seed=seed, progress=not fast)
    # Clicks: a simulated log on the gallery, where the production system shows the committed model's top results.
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
    vit_cfg = dataclasses.replace(recipe, encoder="vit", encoder_args={**VIT_ARGS, "retrieval_layer": "embedding"}, epochs=size["vit_epochs"],
                                  batch_size=size["vit_batch"], seed=seed, limit=None)
    with timed("self-supervised ViT"):
        vit, vit_history = train_contrastive(vit_cfg, gallery, progress=not fast)

    random_cnn = refit_whitening(build_encoder(simclr.name, seed=seed, **settings), gallery)  # the committed model's layer, same gallery
    embed_fns = dict(zip(ROWS, (
        raw_pixel_embeddings,
        lambda x: embed(random_cnn, x),
        lambda x: embed(simclr, x),  # its retrieval layer
        lambda x: embed(simclr, x, layer="pooled"),  # what it retrieved with before the whitened layer
        lambda x: embed(simclr, x, layer="embedding"),
        lambda x: embed(simclr, x, layer="head"),  # what the loss sees; dropped for retrieval
        lambda x: embed(clicked, x),
        lambda x: embed(labelled, x),
        lambda x: embed(vit, x),
        lambda x: embed(supervised, x),
    )))
    results: dict = {}
    for name, embed_fn in embed_fns.items():
        q_emb, g_emb = embed_fn(queries), embed_fn(gallery)
        row = class_retrieval_metrics(q_emb, query_labels, g_emb, gallery_labels)
        row["linear probe"] = linear_probe_accuracy(g_emb, gallery_labels, q_emb, query_labels, seed=seed)
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
        "committed_model": {"version": simclr.version, "recipe": simclr_recipe()},
        "supervised_history": supervised_history,
        "vit": {"config": dataclasses.asdict(vit_cfg), "history": vit_history},
        "metrics": results,
        "targets": targets(results),
    }
    fig = plot_encoders(results, f"Retrieval quality ({len(queries):,} queries vs {len(gallery):,} images; graded set)")
    figure = save_figure(fig, "bench_encoders")
    plt.close(fig)
    out["figure"] = relative(figure)
    path = write_result("bench_encoders", out)
    print(f"wrote {path} and {figure}")
    return out


def simclr_recipe() -> dict:
    """The committed checkpoint's training settings (``checkpoints/simclr_cnn.json``: what ``make train`` ran)."""
    from visual_search.models import CHECKPOINT_PATH

    return json.loads(CHECKPOINT_PATH.with_suffix(".json").read_text())["config"]


def targets(results: dict[str, dict]) -> dict:
    """Issue 12's targets, read off the rows: the best self-supervised row against raw pixels, and the ceiling."""
    raw = results["raw pixels"]
    committed = results["self-supervised CNN (committed)"]
    best = max(SELF_SUPERVISED, key=lambda name: results[name]["P@1"])
    return {
        "best_self_supervised": best,
        "self_supervised_P@1": results[best]["P@1"],
        "self_supervised_P@1_at_least_0.88": results[best]["P@1"] >= 0.88,
        "committed_beats_raw_pixels_on": [m for m in ("P@1", "P@10", "MRR", "graded nDCG@10") if committed[m] > raw[m]],
        "supervised_P@1": results["supervised CNN (ceiling)"]["P@1"],
        "supervised_P@1_at_least_0.92": results["supervised CNN (ceiling)"]["P@1"] >= 0.92,
        "committed_images_per_s_per_core": committed["images/s"],
    }


def plot_encoders(results: dict[str, dict], title: str):
    """Quality bars per encoder and metric, and throughput per encoder (log). Returns the figure."""
    names = list(results)
    columns = ["P@1", "P@10", "MRR", "linear probe", "graded mAP@100", "graded nDCG@10"]
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
