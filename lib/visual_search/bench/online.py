"""``bench online``: chapter 08's online evaluation, on simulated users of the real service.

    python -m visual_search.bench online          # full: the 60,000 train images as gallery, test-split queries
    python -m visual_search.bench online --fast   # the committed sample and fewer users (CI)

One in-process ``VisualSearchService`` serves every ranker side by side (``add_variant``);
simulated users (``online.users.PositionBasedModel``: examination ``1/r``, click
probability by 0-5 grade) search it and post their clicks through it, and every
number below is read back from the service's own SQLite log (``online.study`` has
the steps):

1. **Position bias.** The committed SimCLR model with RandPair swaps (rank 1 with a
   rank k in 2..10, ``swap_rate`` of the impressions): the examination curve from the
   swaps, from EM, and the naive click-rate ratio, each against the truth.
2. **Clicks as training data.** Every click of that log is a (query, clicked image)
   pair; SimCLR is fine-tuned on them unweighted and with clipped inverse-propensity
   weights from the estimated curve.
3. **A/B test** of six rankers (raw pixels, random CNN, SimCLR, SimCLR + clicks,
   SimCLR + IPS clicks, supervised), users hashed to arms: per-arm CTR, click rate and
   first-click MRR; the sample-ratio check; z-tests against SimCLR.
4. **Offline vs online:** each ranker's graded nDCG@10 beside its online CTR.
5. **Interleaving vs A/B:** for two pairs, an A/B test and team-draft interleaving on
   fresh users of the same population who search ``searches_per_user`` times each; the
   queries each design needs for 80% power (A/B per user, its unit of randomisation;
   interleaving per query), analytic and simulated from the logged outcomes; and for the
   first pair, the same with users who search 1, 5 or 20 times (equal total queries).
6. **A/A and peeking:** 1,000 simulated A/A tests analysed per impression and per user,
   and 1,000 peeked daily for 14 days, at the CTR the service logged.

Sizes: ``online.study.sizes``. Writes ``bench_online.json`` and ``bench_online_*.png``.
The data dir is built afresh under ``build/bench-online/`` and removed at the end.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib.pyplot as plt
import torch

from visual_search import config
from visual_search.bench._common import machine, relative, write_result
from visual_search.timing import timed
from visual_search.viz import save_figure

#: The pairs compared by interleaving and by A/B (control first).
PAIRS = (("SimCLR", "random CNN"), ("SimCLR", "SimCLR + IPS clicks"))
#: Searches per user for the sweep on the first pair (same total queries at each): the A/B test's unit is the user.
SEARCHES_SWEEP = (1, 5, 20)
TARGET_POWER = 0.8


@contextmanager
def _timed(timings: dict, name: str) -> Iterator[None]:
    """``timing.timed`` (prints the step's seconds), also recorded in ``timings[name]`` for the JSON."""
    with timed(name) as timer:
        yield
    timings[name] = round(timer.seconds, 2)


def _test_dict(t) -> dict:
    return {"diff": t.diff, "ci": list(t.ci), "p_value": t.p_value, "significant": bool(t.significant)}


def run(seed: int = 0) -> dict:
    """Run the study (module docstring); write the JSON and the four figures. Returns the JSON."""
    from visual_search.online import simulate_aa_tests, simulate_peeking, study
    from visual_search.online.plots import plot_examination, plot_offline_online, plot_peeking, plot_power
    from visual_search.online.users import UserPopulation
    from visual_search.service.core import VisualSearchService

    fast = config.is_fast()
    size = study.sizes(fast)
    progress = not fast
    timings: dict[str, float] = {}
    data = study.study_data(fast)
    model = UserPopulation(seed=seed)
    data_dir = config.REPO_ROOT / "build" / "bench-online" / f"{'fast' if fast else 'full'}-{os.getpid()}"
    shutil.rmtree(data_dir, ignore_errors=True)
    try:
        with _timed(timings, "rankers (supervised training)"):
            encoders = study.rankers(data.gallery, fast, seed=seed, progress=progress)
        with _timed(timings, "service start (gallery build)"):
            service = VisualSearchService(data_dir, encoders["SimCLR"], gallery=data.gallery, progress=progress)
        try:
            with _timed(timings, "position bias (RandPair)"):
                pb = study.measure_position_bias(service, data, model, size["position_users"], size["swap_rate"], seed=seed)
            pairs = study.click_pairs(pb["summary"])
            weights = study.ips(pairs, pb["swap"])
            with _timed(timings, "click fine-tuning (2 models)"):
                encoders["SimCLR + clicks"] = study.finetune_on_clicks(encoders["SimCLR"], data, pairs, None, size["click_epochs"],
                                                                       size["click_batch"], seed=seed, progress=progress)
                encoders["SimCLR + IPS clicks"] = study.finetune_on_clicks(encoders["SimCLR"], data, pairs, weights, size["click_epochs"],
                                                                           size["click_batch"], seed=seed, progress=progress)
            encoders = {name: encoders[name] for name in study.RANKERS}
            with _timed(timings, "variants (re-embed the gallery 5x)"):
                for name, encoder in encoders.items():
                    if name != "SimCLR":
                        service.add_variant(name, encoder)
            arms = {name: (None if name == "SimCLR" else name) for name in encoders}
            with _timed(timings, "A/B test"):
                ab = study.run_ab(service, data, model, arms, size["ab_users_per_arm"], control="SimCLR", seed=seed)
            with _timed(timings, "offline scores"):
                offline = {name: study.offline_scores(enc, data.evalset) for name, enc in encoders.items()}
            interleaving, ab_pairs = {}, {}
            with _timed(timings, "power comparison (A/B and interleaving per pair)"):
                for i, (a, b) in enumerate(PAIRS):
                    key = f"{a} vs {b}"
                    ab_pairs[key] = study.run_ab(service, data, model, {a: arms[a], b: arms[b]}, size["power_users_per_arm"], control=a,
                                                 seed=seed + 10 + i, name=f"abp{i}", searches_per_user=size["searches_per_user"])
                    interleaving[key] = study.run_interleaving(service, data, model, (a, arms[a]), (b, arms[b]), size["interleaving_users"],
                                                               seed=seed + i, name=f"il{i}", searches_per_user=size["searches_per_user"])
                sweep = {}  # the first pair again, with users who search 1, 5 or 20 times (the same queries in all)
                a, b = PAIRS[0]
                for s_ in SEARCHES_SWEEP:
                    if s_ == size["searches_per_user"]:
                        continue
                    scale = size["searches_per_user"] / s_
                    sweep[s_] = (
                        study.run_ab(service, data, model, {a: arms[a], b: arms[b]}, max(2, round(size["power_users_per_arm"] * scale)),
                                     control=a, seed=seed + 20 + s_, name=f"abs{s_}", searches_per_user=s_),
                        study.run_interleaving(service, data, model, (a, arms[a]), (b, arms[b]), max(1, round(size["interleaving_users"] * scale)),
                                               seed=seed + 30 + s_, name=f"ils{s_}", searches_per_user=s_))
            stats = service.stats()
        finally:
            service.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    metrics = ab["metrics"]
    # ---- power: A/B (per user) against interleaving (per query), per pair ------------------
    power, curves = {}, {}
    for i, (a, b) in enumerate(PAIRS):
        key = f"{a} vs {b}"
        power[key], pair_curves = study.power_comparison(ab_pairs[key], interleaving[key], a, b, TARGET_POWER,
                                                         n_sims=size["power_sims"], seed=seed + i)
        curves.update({f"{design}, {key}": curve for design, curve in pair_curves.items()})
    a, b = PAIRS[0]
    by_searches = {}
    for s_ in SEARCHES_SWEEP:
        if s_ == size["searches_per_user"]:
            row = power[f"{a} vs {b}"]
        else:
            row, _ = study.power_comparison(sweep[s_][0], sweep[s_][1], a, b, TARGET_POWER, n_sims=size["power_sims"], seed=seed + s_)
        by_searches[str(s_)] = {"queries_analytic": row["queries_analytic"], "ab_queries_best": row["ab_queries_best"],
                                "interleaving_simulated": row["interleaving_simulated"], "ratio_ab_to_interleaving": row["ratio_ab_to_interleaving"],
                                "interleaving": row["interleaving"], "ab_users_per_arm": row["ab_users_per_arm"]}
    # ---- A/A and peeking, at the CTR the service logged for SimCLR -------------------------
    base_ctr = float(metrics["SimCLR"]["ctr"])
    aa = simulate_aa_tests(n_tests=size["aa_tests"], users_per_arm=200, impressions_per_user=20, base_ctr=base_ctr,
                           user_heterogeneity=0.1, seed=seed)
    aa_iid = simulate_aa_tests(n_tests=size["aa_tests"], users_per_arm=200, impressions_per_user=20, base_ctr=base_ctr,
                               user_heterogeneity=0.0, seed=seed + 1)
    peek = simulate_peeking(n_tests=size["aa_tests"], days=14, users_per_day_per_arm=100, base_ctr=base_ctr, seed=seed)

    names = list(encoders)
    agreement = study.order_agreement([offline[n]["nDCG@10"] for n in names], [ab["per_query_ctr"][n]["mean"] for n in names])
    per_query = ab["per_query_ctr"]  # one query per user: the per-query CTR's interval is the honest one
    ctr_ci = {n: tuple(per_query[n]["ci95"]) for n in names}

    ips_vs_plain = {
        "offline_nDCG@10": {n: offline[n]["nDCG@10"] for n in ("SimCLR", "SimCLR + clicks", "SimCLR + IPS clicks")},
        "offline_gain": offline["SimCLR + IPS clicks"]["nDCG@10"] - offline["SimCLR + clicks"]["nDCG@10"],
        "online_per_query_ctr": {n: per_query[n]["mean"] for n in ("SimCLR", "SimCLR + clicks", "SimCLR + IPS clicks")},
        "online_test (per-query CTR, Welch)": _test_dict(study.mean_diff_test(per_query["SimCLR + clicks"], per_query["SimCLR + IPS clicks"])),
    }
    out = {
        "benchmark": "online",
        "command": "python -m visual_search.bench online",
        "fast_mode": fast,
        "seed": seed,
        "setting": (f"{len(data.gallery.images):,}-image gallery ({data.gallery.name}), {len(data.query_images):,} query images; "
                    f"graded set {len(data.evalset)} x {len(data.evalset.gallery_images)}; PBM users, examination 1/r, k={study.N_RANKS}"),
        "sizes": size,
        "click_model": {"examination": f"1/r^{model.eta:g}", "attractiveness_by_grade (user of mean propensity)": list(model.base),
                        "user_propensity": f"Beta({model.propensity_a:g}, {model.propensity_b:g})"},
        "position_bias": {
            "true": pb["true"].tolist(), "swap": pb["swap"].tolist(), "em": pb["em"].tolist(), "naive": pb["naive"].tolist(),
            "max_error_top10": pb["max_error"], "impressions": pb["impressions"], "swapped_impressions": pb["swapped_impressions"],
            "swap_rate": pb["swap_rate"], "em_converged": pb["em_converged"], "click_pairs": int(len(pairs.query)),
            "ips_weight_mean": float(weights.mean()), "ips_weight_max": float(weights.max()),
        },
        "ab": {"arms": metrics, "srm_p": ab["srm_p"], "click_rate_tests_vs_SimCLR": {k: _test_dict(v) for k, v in ab["tests"].items()},
               "per_query_ctr_tests_vs_SimCLR": {k: _test_dict(v) for k, v in ab["ctr_tests"].items()},
               "per_query_ctr": ab["per_query_ctr"]},
        "offline": offline,
        "offline_vs_online": {"nDCG@10": {n: offline[n]["nDCG@10"] for n in names}, "ctr": {n: metrics[n]["ctr"] for n in names},
                              "per_query_ctr": {n: per_query[n]["mean"] for n in names},
                              "per_query_ctr_ci95": {n: list(ctr_ci[n]) for n in names}, **agreement},
        "ips_vs_unweighted": ips_vs_plain,
        "power": power,
        "power_by_searches_per_user": {"pair": f"{a} vs {b}", "rows": by_searches},
        "aa": {"per_impression_fpr": aa.per_impression_fpr, "per_user_fpr": aa.per_user_fpr, "tests": aa.n_tests,
               "user_heterogeneity": 0.1, "iid_per_impression_fpr": aa_iid.per_impression_fpr, "iid_per_user_fpr": aa_iid.per_user_fpr,
               "base_ctr": base_ctr},
        "peeking": {"fixed_horizon_fpr": peek.fixed_horizon_fpr, "peeking_fpr": peek.peeking_fpr,
                    "stopped_by_day": peek.stopped_by_day.tolist(), "days": peek.days, "tests": peek.n_tests},
        "service": {"searches": stats["searches"], "clicks": stats["clicks"], "index": stats["index"], "variants": stats["variants"]},
        "timings_s": timings,
        "machine": machine(torch_threads=torch.get_num_threads(), load_average=os.getloadavg()),
    }
    figs = {
        "position_bias": plot_examination({"true": pb["true"], "RandPair swaps": pb["swap"], "EM": pb["em"], "naive click ratio": pb["naive"]},
                                          f"Examination per rank, from {pb['impressions']:,} logged searches"),
        "power": plot_power(curves, TARGET_POWER, "Power: A/B tests vs team-draft interleaving"),
        "peeking": plot_peeking(peek.stopped_by_day, peek.fixed_horizon_fpr, peek.alpha,
                                {"per impression\n(ρ = 0.1)": aa.per_impression_fpr, "per user\n(ρ = 0.1)": aa.per_user_fpr,
                                 "per impression\n(ρ = 0)": aa_iid.per_impression_fpr},
                                f"{aa.n_tests:,} A/A tests at CTR {base_ctr:.3f}"),
        "offline_vs_online": plot_offline_online({n: offline[n]["nDCG@10"] for n in names}, {n: per_query[n]["mean"] for n in names}, ctr_ci,
                                                 ylabel="online CTR (mean per query, 95% CI)",
                                                 title=f"Offline vs online (Kendall τ = {agreement['kendall_tau']:.2f})"),
    }
    out["figures"] = {}
    for what, fig in figs.items():
        out["figures"][what] = relative(save_figure(fig, f"bench_online_{what}"))
        plt.close(fig)
    path = write_result("bench_online", out)
    print(f"wrote {path}")
    return out
