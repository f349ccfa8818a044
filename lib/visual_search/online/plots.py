"""Chapter 08's figures, drawn from measured results (shared by the notebook and ``bench online``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from visual_search.online.power import PowerCurve


def plot_examination(curves: Mapping[str, np.ndarray], title: str = "Examination propensity per rank"):
    """The true curve and each estimate (``{"true": ..., "RandPair swaps": ..., ...}``) against rank."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, theta in curves.items():
        ranks = np.arange(1, len(theta) + 1)
        style = dict(color="black", lw=2.5) if name == "true" else dict(marker="o", ms=4)
        ax.plot(ranks, theta, label=name, **style)
    ax.set(xlabel="rank", ylabel="P(examined) relative to rank 1", title=title, ylim=(0, 1.05))
    ax.set_xticks(np.arange(1, len(next(iter(curves.values()))) + 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_power(curves: Mapping[str, PowerCurve], target: float = 0.8, title: str = "Power against queries"):
    """Simulated power against total queries (log scale), one line per experiment, with the target line."""
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for name, curve in curves.items():
        ax.plot(curve.ns, curve.power, marker=".", label=name, ls="--" if name.startswith("A/B") else "-")
    ax.axhline(target, color="grey", lw=1, ls=":")
    ax.text(min(c.ns[0] for c in curves.values()), target + 0.02, f"{target:.0%} power", color="grey")
    ax.set(xscale="log", xlabel="queries in the experiment (both arms together)", ylabel="P(detect the difference)",
           title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_peeking(stopped_by_day: Sequence[float], fixed_horizon_fpr: float, alpha: float, aa_rates: Mapping[str, float],
                 title: str = "False positives of A/A tests"):
    """Left: the share of A/A tests stopped as 'significant' by each day when peeking daily.
    Right: A/A false-positive rates of each analysis (e.g. per impression vs per user)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    days = np.arange(1, len(stopped_by_day) + 1)
    left.plot(days, stopped_by_day, marker="o", label="peek daily, stop at first p < α")
    left.axhline(fixed_horizon_fpr, color="C2", ls="--", label=f"test once at the end ({fixed_horizon_fpr:.1%})")
    left.axhline(alpha, color="grey", ls=":", label=f"α = {alpha:.0%}")
    left.set(xlabel="day", ylabel="share of A/A tests declared significant", title="Peeking", ylim=(0, max(0.1, max(stopped_by_day) * 1.15)))
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    names = list(aa_rates)
    bars = right.bar(range(len(names)), [aa_rates[n] for n in names], color=["C3" if aa_rates[n] > 2 * alpha else "C2" for n in names])
    right.bar_label(bars, labels=[f"{aa_rates[n]:.1%}" for n in names])
    right.axhline(alpha, color="grey", ls=":")
    right.set_xticks(range(len(names)), names, fontsize=8)
    right.set(ylabel="A/A false-positive rate", title="Correlated impressions")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_offline_online(offline: Mapping[str, float], online: Mapping[str, float], online_ci: Mapping[str, tuple[float, float]] | None = None,
                        xlabel: str = "offline graded nDCG@10", ylabel: str = "online CTR", title: str = "Offline against online"):
    """One point per ranker: its offline score against its online metric (with the online interval if given)."""
    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    for i, name in enumerate(offline):
        x, y = offline[name], online[name]
        if online_ci is not None:
            lo, hi = online_ci[name]
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", color=f"C{i}", capsize=3)
        else:
            ax.plot([x], [y], "o", color=f"C{i}")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


__all__ = ["plot_examination", "plot_offline_online", "plot_peeking", "plot_power"]
