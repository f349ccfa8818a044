"""``bench ablations``: which self-supervised recipe, found by measured short runs, each recorded with its settings.

    python -m visual_search.bench ablations

Every row trains an encoder from scratch with ``train.train_contrastive`` from the
same seed, changing one thing against the base recipe (``train.TrainConfig()``),
and scores it by kNN on held-out images: queries from the test split, gallery
from the train split, relevant = same class, at each of the encoder's three
layers (pooled, embedding, head) so the retrieval-layer choice is measured in
every row. Groups:

* ``architecture``: width (channels), depth, the projection head's size;
* ``augmentation``: crop scale, rotation, blur, colour, flips;
* ``loss``: temperature and batch size;
* ``schedule``: twice the epochs;
* ``method``: MoCo v2 at equal wall time (its epochs scaled by the measured cost
  of a step), MoCo and SimCLR with small batches (where the queue should help),
  and NNCLR, whose positives are nearest neighbours found with the course's own
  exact index (``index.build_index("exact")``).

Short runs: the committed 50-epoch run's kNN monitor stopped rising after about
5 epochs, so a few epochs on a third of the data rank the settings; a row's
settings then go into the long run that makes the checkpoint (``make train``).

Sizes (``sizes``): full mode, 20,000 training images for 5 epochs per row, 2,000
test queries against 20,000 train images; fast mode, 512 images for 1 epoch, 100
queries against 500, and only a few rows (one of each group).
Writes ``bench_ablations.json`` and ``bench_ablations.png``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from visual_search import config
from visual_search.bench._common import machine, relative, write_result
from visual_search.viz import save_figure

#: (name, group, overrides of TrainConfig) in the order they run. ``encoder_args`` and
#: ``augment_args`` overrides are merged into the base recipe's dicts, not replacing them.
ROWS: tuple[tuple[str, str, dict], ...] = (
    ("base recipe", "base", {}),
    ("width 24", "architecture", {"encoder_args": {"width": 24}}),
    ("width 32", "architecture", {"encoder_args": {"width": 32}}),
    ("4 conv blocks", "architecture", {"encoder_args": {"conv_layers": 4}}),
    ("projection 128", "architecture", {"encoder_args": {"projection_dim": 128}}),
    ("crop 0.3-1", "augmentation", {"augment_args": {"crop_scale": (0.3, 1.0)}}),
    ("crop 0.8-1", "augmentation", {"augment_args": {"crop_scale": (0.8, 1.0)}}),
    ("no rotation", "augmentation", {"augment_args": {"max_rotation": 0.0}}),
    ("no blur", "augmentation", {"augment_args": {"blur_p": 0.0}}),
    ("colour 0.6", "augmentation", {"augment_args": {"brightness": 0.6, "contrast": 0.6}}),
    ("no flips", "augmentation", {"augment_args": {"flip_p": 0.0}}),
    ("temperature 0.1", "loss", {"temperature": 0.1}),
    ("temperature 0.5", "loss", {"temperature": 0.5}),
    ("batch 128", "loss", {"batch_size": 128}),
    ("batch 512", "loss", {"batch_size": 512}),
    ("2x epochs", "schedule", {"epochs_factor": 2}),
    ("MoCo v2, equal time", "method", {"method": "moco", "equal_time": True}),
    ("SimCLR, batch 64", "method", {"batch_size": 64}),
    ("MoCo v2, batch 64", "method", {"method": "moco", "batch_size": 64}),
    ("NNCLR", "method", {"method": "nnclr"}),
)
FAST_ROWS = ("base recipe", "width 24", "crop 0.8-1", "temperature 0.1", "MoCo v2, equal time", "NNCLR")


def sizes(fast: bool) -> dict:
    """How much data and training each mode uses (fast mode: the same code, less of everything)."""
    if fast:
        return {"train_images": 512, "epochs": 1, "queries": 100, "gallery": 500, "probe_steps": 2, "rows": FAST_ROWS, "batch_cap": 128}
    return {"train_images": 20_000, "epochs": 5, "queries": 2_000, "gallery": 20_000, "probe_steps": 15, "rows": None, "batch_cap": None}


def row_config(base, overrides: dict, size: dict):
    """The ``TrainConfig`` of one row: the base recipe with ``overrides`` (dicts merged), sized for the mode."""
    overrides = dict(overrides)
    factor = overrides.pop("epochs_factor", 1)
    overrides.pop("equal_time", None)
    for name in ("encoder_args", "augment_args"):
        if name in overrides:
            overrides[name] = {**getattr(base, name), **overrides[name]}
    cfg = dataclasses.replace(base, **overrides, epochs=size["epochs"] * factor, limit=size["train_images"])
    if size["batch_cap"]:
        cfg = dataclasses.replace(cfg, batch_size=min(cfg.batch_size, size["batch_cap"]), queue_size=min(cfg.queue_size, 256))
    return cfg


def exact_index_search(queries: np.ndarray, support: np.ndarray) -> np.ndarray:
    """NNCLR's neighbour search through the course's own exact index (chapter 05): inner product of unit rows."""
    from visual_search.index import build_index

    index = build_index("exact", support.shape[1], metric="ip").add(support)
    return index.search(queries, 1)[1][:, 0]


def knn_scores(encoder, queries, query_labels, gallery, gallery_labels) -> dict[str, float]:
    """kNN P@1 at each layer, and P@10 and MRR at the encoder's retrieval layer (relevant = same class)."""
    from visual_search.bench.encoders import class_retrieval_metrics
    from visual_search.embed import embed

    out: dict[str, float] = {}
    for layer in ("pooled", "embedding", "head"):
        scores = class_retrieval_metrics(embed(encoder, queries, layer=layer, progress=False), query_labels,
                                         embed(encoder, gallery, layer=layer, progress=False), gallery_labels)
        out[f"P@1 {layer}"] = scores["P@1"]
        if layer == encoder.retrieval_layer:
            out.update({"P@1": scores["P@1"], "P@10": scores["P@10"], "MRR": scores["MRR"]})
    return out


def seconds_per_step(cfg, images: np.ndarray, steps: int) -> float:
    """The measured wall time of one training step of ``cfg`` (a short run of ``steps`` steps, after one warm-up step)."""
    from visual_search.train import train_contrastive

    n = cfg.batch_size * (steps + 1)
    probe = dataclasses.replace(cfg, epochs=1, limit=None, queue_size=max(cfg.batch_size, min(cfg.queue_size, n)))
    train_contrastive(probe, images[: cfg.batch_size * 2], progress=False)  # warm-up: first-call costs
    t0 = time.perf_counter()
    train_contrastive(probe, images[:n], progress=False)
    return (time.perf_counter() - t0) / (steps + 1)


def run(seed: int = 0) -> dict:
    """Train and score every row of ``ROWS`` (fast mode: ``FAST_ROWS``); write the JSON and the figure. Returns the JSON."""
    from visual_search.data import load_fashion_mnist, load_sample
    from visual_search.train import TrainConfig, train_contrastive

    fast = config.is_fast()
    size = sizes(fast)
    if fast:
        sample = load_sample()
        train_images = sample.gallery_images
        gallery, gallery_labels = sample.gallery_images, sample.gallery_labels
        step = max(1, len(sample.query_images) // size["queries"])
        queries, query_labels = sample.query_images[::step], sample.query_labels[::step]
    else:
        train_images, train_labels = load_fashion_mnist("train")
        test_images, test_labels = load_fashion_mnist("test")
        gallery, gallery_labels = train_images[: size["gallery"]], train_labels[: size["gallery"]]
        step = len(test_images) // size["queries"]
        queries, query_labels = test_images[::step][: size["queries"]], test_labels[::step][: size["queries"]]
    base = dataclasses.replace(TrainConfig(), seed=seed)
    rows = [r for r in ROWS if size["rows"] is None or r[0] in size["rows"]]
    results: list[dict] = []
    for name, group, overrides in rows:
        cfg = row_config(base, overrides, size)
        note = ""
        if overrides.get("equal_time"):
            # MoCo's step costs less than SimCLR's (one backward pass over B images, not 2B): give it the same wall time.
            mine = seconds_per_step(cfg, train_images, size["probe_steps"])
            simclr = seconds_per_step(row_config(base, {}, size), train_images, size["probe_steps"])  # measured beside it
            cfg = dataclasses.replace(cfg, epochs=max(1, round(cfg.epochs * simclr / mine)))
            note = f"{cfg.epochs} epochs: a step costs {mine / simclr:.2f}x SimCLR's (measured)"
        neighbour_search = exact_index_search if cfg.method == "nnclr" else None
        t0 = time.perf_counter()
        encoder, history = train_contrastive(cfg, train_images, progress=False, neighbour_search=neighbour_search)
        seconds = time.perf_counter() - t0
        row = {"name": name, "group": group, "overrides": _jsonable(overrides), "method": cfg.method, "epochs": cfg.epochs,
               "batch_size": cfg.batch_size, "temperature": cfg.temperature, "encoder_args": _jsonable(cfg.encoder_args),
               "augment_args": _jsonable(cfg.augment_args), "train_seconds": seconds,
               "final_loss": history[-1]["loss"], "note": note,
               **knn_scores(encoder, queries, query_labels, gallery, gallery_labels)}
        results.append(row)
        print(f"{name:24s} P@1={row['P@1']:.4f} (pooled {row['P@1 pooled']:.3f} embedding {row['P@1 embedding']:.3f} head {row['P@1 head']:.3f})"
              f"  P@10={row['P@10']:.3f}  {seconds:.0f} s {note}", flush=True)

    base_row = results[0]
    for row in results:
        row["delta P@1"] = row["P@1"] - base_row["P@1"]
    best = max(results, key=lambda r: r["P@1"])
    out = {
        "benchmark": "ablations",
        "command": "python -m visual_search.bench ablations",
        "fast_mode": fast,
        "seed": seed,
        "setting": (f"each row: {size['train_images']} train images, {size['epochs']} epochs (unless the row changes it), seed {seed}; "
                    f"kNN on {len(queries)} test queries vs {len(gallery)} train images, relevant = same class"),
        "base": _jsonable(dataclasses.asdict(base)),
        "machine": machine(torch_threads=torch.get_num_threads(), load_average=os.getloadavg()),
        "rows": results,
        "best": {"name": best["name"], "P@1": best["P@1"]},
    }
    fig = plot_ablations(results, f"Ablations: kNN P@1 ({len(queries):,} test queries vs {len(gallery):,} train images), one change each")
    figure = save_figure(fig, "bench_ablations")
    plt.close(fig)
    out["figure"] = relative(figure)
    path = write_result("bench_ablations", out)
    print(f"wrote {path} and {figure}")
    return out


def _jsonable(value):
    """Tuples as lists, so the JSON reads back equal."""
    import json

    return json.loads(json.dumps(value))


def plot_ablations(rows: list[dict], title: str):
    """P@1 of each row (retrieval layer) as horizontal bars coloured by group, the base recipe as a line. Returns the figure."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colours = {g: f"C{i}" for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y, [r["P@1"] for r in rows], color=[colours[r["group"]] for r in rows])
    ax.scatter([r["P@1 embedding"] for r in rows], y, marker="|", color="k", s=80, label="embedding layer")
    ax.axvline(rows[0]["P@1"], color="grey", ls="--", lw=1, label="base recipe")
    for yi, r in zip(y, rows):
        ax.text(r["P@1"], yi, f" {r['P@1']:.3f}", va="center", fontsize=7)
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    lo = min(min(r["P@1"], r["P@1 embedding"]) for r in rows)
    ax.set_xlim(max(0.0, lo - 0.03), min(1.0, max(r["P@1"] for r in rows) + 0.03))
    ax.set_xlabel("kNN P@1 at the retrieval layer (bars); embedding layer (ticks)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in groups]
    ax.legend(handles + ax.get_legend_handles_labels()[0], groups + ax.get_legend_handles_labels()[1], fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
