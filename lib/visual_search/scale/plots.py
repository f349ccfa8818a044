"""The figures of chapter 10 and ``bench scale``: growth curves, embedding throughput against workers, shard latency against S."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def plot_growth(rows: Sequence[dict], fits: dict[str, dict]):
    """Build time, bytes per vector and queries/s against N (log-log), one line per index, with the fitted power law."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for key in dict.fromkeys(r["key"] for r in rows):
        mine = sorted((r for r in rows if r["key"] == key), key=lambda r: r["n"])
        ns = np.array([r["n"] for r in mine], float)
        label = mine[0]["method"]
        (line,) = axes[0].loglog(ns, [r["build_s"] for r in mine], "o-", label=label)
        axes[1].semilogx(ns, [r["bytes_per_vector"] for r in mine], "o-", color=line.get_color(), label=label)
        axes[2].loglog(ns, [r["qps"] for r in mine], "o", color=line.get_color())
        fit = fits[key]["qps"]
        grid = np.geomspace(ns.min(), ns.max(), 20)
        axes[2].loglog(grid, fit["c"] * grid ** fit["exponent"], "-", color=line.get_color(), label=f"{label}: QPS ~ N^{fit['exponent']:.2f}")
    axes[0].set(xlabel="N (vectors)", ylabel="build seconds (train + add, 1 thread)", title="build time")
    axes[1].set(xlabel="N (vectors)", ylabel="bytes per vector", title="memory per vector")
    axes[2].set(xlabel="N (vectors)", ylabel="queries/s (1 thread, batched)", title="queries/s at recall@10 >= 0.9 (fit)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_embedding_scaling(rows: Sequence[dict]):
    """Images/s of the Ray embedding job against the number of workers, with perfect scaling from one worker for reference."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    workers = np.array([r["num_workers"] for r in rows])
    speed = np.array([r["images_per_s"] for r in rows])
    ax.plot(workers, speed, "o-", label="measured (Ray Data actor pool)")
    ax.plot(workers, speed[0] * workers / workers[0], "--", color="gray", label="perfect scaling")
    ax.set(xlabel="workers (actors)", ylabel="images/s", title="distributed embedding", xticks=workers)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_shard_latency(rows: Sequence[dict]):
    """One-query latency (p50, p95) and batched QPS against the shard count S."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    s = [r["n_shards"] for r in rows]
    a.plot(s, [r["p50_ms"] for r in rows], "o-", label="p50")
    a.plot(s, [r["p95_ms"] for r in rows], "s--", label="p95")
    a.set(xlabel="shards S", ylabel="ms per query (one at a time)", title="fan-out latency", xticks=s)
    a.legend()
    b.plot(s, [r["batch_qps"] for r in rows], "o-")
    b.set(xlabel="shards S", ylabel="queries/s (batched)", title="batched throughput", xticks=s)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


__all__ = ["plot_embedding_scaling", "plot_growth", "plot_shard_latency"]
