"""Chapter 08's experiments, one function per step, shared by the notebook and ``bench online``.

Every step runs simulated users (``users.PositionBasedModel``, known truth) against
the real service (chapter 09), serving several encoders side by side as variants,
and analyses only what the service logged:

1. ``measure_position_bias``: the SimCLR model served with RandPair swaps; the
   examination curve estimated from the log (swap ratios, and EM) against the truth.
2. ``click_pairs`` + ``finetune_on_clicks``: the same log's clicks become (query,
   clicked image) training pairs, weighted by inverse propensity or not, and the
   SimCLR encoder is fine-tuned on each (``train.finetune_on_pairs``).
3. ``run_ab``: a multi-arm A/B test of every ranker; per-arm CTR, click rate and
   first-click MRR, the sample-ratio check, z-tests against the control.
4. ``run_interleaving``: team-draft interleaving of two rankers on fresh users.
5. ``offline_scores``: graded nDCG@10 (and the rest of ``evaluate_rankings``) of each
   ranker, to set beside its online CTR.

``rankers`` builds the encoders compared (raw pixels, a random CNN, the committed
SimCLR CNN, a supervised CNN); ``study_data`` loads the gallery and query pool.
``sizes(fast)`` holds every count, so fast mode runs the same code on less.

Errors: ``visual_search.errors.OnlineError`` for bad arguments; the service's and the
trainer's own errors pass through.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from visual_search.data import load_fashion_mnist, load_sample
from visual_search.embed import embed, refit_whitening
from visual_search.errors import OnlineError
from visual_search.evalset import GradedEvalSet, evaluate_rankings, load_graded_eval
from visual_search.index import exact_search
from visual_search.models import Encoder, build_encoder, load_pretrained, raw_pixel_encoder
from visual_search.online.ab import srm_test, two_proportion_test
from visual_search.online.experiment import Experiment
from visual_search.online.logs import interleaving_outcomes, log_metrics, query_table, read_impressions, swap_rows
from visual_search.online.position_bias import estimate_theta_em, estimate_theta_swap, ips_weights, naive_theta
from visual_search.online.users import SimulationSummary, run_simulated_users
from visual_search.service.core import Gallery, VisualSearchService
from visual_search.train import finetune_on_pairs, train_supervised

#: A click model, or a function user id -> click model (``users.UserPopulation``).
ClickModel = Callable[[str], object] | object

#: The rankers of the study, in the order the figures show them.
RANKERS = ("raw pixels", "random CNN", "SimCLR", "SimCLR + clicks", "SimCLR + IPS clicks", "supervised")
#: The ranks whose examination propensity is estimated (and the page size of every search).
N_RANKS = 10


def sizes(fast: bool) -> dict:
    """Every count of the study: full mode (the 60k train gallery, test-split queries) or fast mode (the sample).

    ``position_users`` (one search each, RandPair swaps at ``swap_rate``), ``ab_users_per_arm`` (the six-arm
    test, one search each), ``power_users_per_arm`` and ``interleaving_users`` (the power comparison, each user
    searching ``searches_per_user`` times), graded-set subset, training epochs, simulation counts.
    """
    if fast:
        return {"gallery": "sample", "position_users": 1500, "swap_rate": 0.3, "ab_users_per_arm": 150,
                "searches_per_user": 5, "power_users_per_arm": 60, "interleaving_users": 80, "graded_queries": 100, "graded_gallery": 600, "supervised_epochs": 1,
                "click_epochs": 1, "click_batch": 128, "aa_tests": 1000, "power_sims": 500}
    return {"gallery": "train", "position_users": 30_000, "swap_rate": 0.3, "ab_users_per_arm": 2_000,
            "searches_per_user": 5, "power_users_per_arm": 1_200, "interleaving_users": 1_600, "graded_queries": None, "graded_gallery": None, "supervised_epochs": 2,
            "click_epochs": 2, "click_batch": 256, "aa_tests": 1000, "power_sims": 2000}


@dataclass(frozen=True)
class StudyData:
    """The service's gallery, the pool that simulated users draw query images from, and the graded set."""

    gallery: Gallery
    query_images: np.ndarray
    query_labels: np.ndarray
    evalset: GradedEvalSet


def study_data(fast: bool) -> StudyData:
    """Fast: the committed sample (2,000 gallery images, 500 queries). Full: the 60,000 train images as the
    gallery (id = train index) and the 10,000 test images as queries. The graded set is subset in fast mode."""
    size = sizes(fast)
    if size["gallery"] == "sample":
        s = load_sample()
        gallery = Gallery(s.gallery_images, s.gallery_labels, [f"train:{i}" for i in s.gallery_index], name="sample")
        queries, labels = s.query_images, s.query_labels
    else:
        train, train_labels = load_fashion_mnist("train")
        gallery = Gallery(train, train_labels, [f"train:{i}" for i in range(len(train))], name="train")
        queries, labels = load_fashion_mnist("test")
    evalset = load_graded_eval()
    if size["graded_queries"] is not None:
        evalset = evalset.subset(size["graded_queries"], n_gallery=size["graded_gallery"])
    return StudyData(gallery, queries, labels, evalset)


def rankers(gallery: Gallery, fast: bool, seed: int = 0, progress: bool = True) -> dict[str, Encoder]:
    """The encoders compared before any click arrives: raw pixels, a random CNN, SimCLR, supervised.

    The random and supervised CNNs have the committed SimCLR CNN's architecture and
    retrieval layer (a whitened one gets its whitening fitted on the gallery); the
    supervised one is trained on the gallery's labels for ``sizes(fast)["supervised_epochs"]``.
    """
    simclr = load_pretrained()
    settings = {k: v for k, v in simclr.config.items() if k != "seed"}
    supervised = train_supervised(build_encoder(simclr.name, seed=seed, **settings), gallery.images, gallery.labels,
                                  epochs=sizes(fast)["supervised_epochs"], seed=seed, progress=progress)
    random_cnn = refit_whitening(build_encoder(simclr.name, seed=seed, **settings), gallery.images)  # the committed model's layer, same gallery
    return {"raw pixels": raw_pixel_encoder(), "random CNN": random_cnn, "SimCLR": simclr, "supervised": supervised}


def offline_scores(encoder: Encoder, evalset: GradedEvalSet) -> dict[str, float]:
    """``evaluate_rankings`` of ``encoder``'s exact top-100 on the graded set (nDCG@10 on 0-5 grades among them)."""
    q = embed(encoder, evalset.query_images, progress=False)
    g = embed(encoder, evalset.gallery_images, progress=False)
    return evaluate_rankings(exact_search(q, g, 100, metric="ip")[1], evalset)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def measure_position_bias(service: VisualSearchService, data: StudyData, model: ClickModel, n_users: int,
                          swap_rate: float, seed: int = 0, name: str = "randpair", progress: bool = False) -> dict:
    """Serve the main model with RandPair swaps (rank 1 with rank k) to ``n_users`` and estimate the curve.

    Returns a dict with ``true``, ``swap`` (RandPair ratios), ``em`` (EM with one relevance per
    (query class, shown class) pair: relevance here depends on nothing else) and ``naive`` (click rate per rank over rank 1) curves for ranks 1..N_RANKS,
    the max absolute error of each against the truth, the swapped impression count, and
    ``summary`` (the simulation's impressions: query index, shown ids, clicked ranks).
    """
    exp = Experiment(service, name, {"production": None}, swap_rate=swap_rate, swap_depth=N_RANKS, seed=seed)
    summary = run_simulated_users(exp, model, data.query_images, data.query_labels, n_users=n_users, k=N_RANKS,
                                  seed=seed, user_prefix=f"{name}-", progress=progress and f"{name}: users")
    impressions = [i for i in read_impressions(service.catalog) if i.experiment and i.experiment.get("experiment") == name]
    rows = swap_rows(impressions, N_RANKS)
    swap = estimate_theta_swap(rows.ranks, rows.clicked, rows.swap, rows.mode, n_ranks=N_RANKS, min_impressions=10)
    # EM keys: (query class, shown image's class), the features relevance depends on here; the simulation
    # records which query image each search sent (the service does not store query images)
    by_id = {i.query_id: i for i in impressions}
    ranks, clicked, keys = [], [], []
    for imp in summary.impressions:
        logged = by_id[imp["query_id"]]
        if len(logged.shown) < N_RANKS:
            continue
        hit = set(logged.clicked_ranks)
        for r, image_id in enumerate(logged.shown[:N_RANKS], start=1):
            ranks.append(r)
            clicked.append(int(r in hit))
            keys.append(int(data.query_labels[imp["query_index"]]) * 1000 + int(data.gallery.labels[image_id]))
    _, key_ids = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
    em = estimate_theta_em(np.asarray(ranks), np.asarray(clicked), key_ids, n_ranks=N_RANKS, min_rows_per_rank=10)
    naive = naive_theta(np.asarray(ranks), np.asarray(clicked), n_ranks=N_RANKS)
    true = model.examination_curve(N_RANKS)
    return {"true": true, "swap": swap.theta, "em": em.theta, "naive": naive,
            "max_error": {"swap": _max_abs(swap.theta, true), "em": _max_abs(em.theta, true), "naive": _max_abs(naive, true)},
            "impressions": len(impressions), "swapped_impressions": int(np.sum(rows.swap[::N_RANKS] > 0)),
            "swap_rate": swap_rate, "em_converged": bool(em.converged), "summary": summary}


@dataclass(frozen=True)
class ClickPairs:
    """(query image, clicked gallery image) pairs from a simulation: ``query`` indexes the query pool,
    ``clicked`` is the gallery id, ``rank`` where it was shown (1 = top)."""

    query: np.ndarray
    clicked: np.ndarray
    rank: np.ndarray


def click_pairs(summary: SimulationSummary) -> ClickPairs:
    """Every click of a simulation as a training pair (the service's log has the ids and ranks; the
    simulation knows which query image each search sent, which the service does not store)."""
    q, c, r = [], [], []
    for imp in summary.impressions:
        for rank in imp["clicked_ranks"]:
            q.append(imp["query_index"])
            c.append(imp["shown"][rank - 1])
            r.append(rank)
    if not q:
        raise OnlineError("summary: no clicks, so no training pairs")
    return ClickPairs(*(np.asarray(x, dtype=np.int64) for x in (q, c, r)))


def finetune_on_clicks(base: Encoder, data: StudyData, pairs: ClickPairs, weights: np.ndarray | None, epochs: int,
                       batch_size: int, seed: int = 0, progress: bool = True) -> Encoder:
    """A copy of ``base`` fine-tuned contrastively on click pairs (``train.finetune_on_pairs``).

    ``weights`` (e.g. ``ips_weights``) are applied by resampling the pairs, with
    replacement, with probability proportional to them, as many pairs as the log holds,
    so the optimiser, batch size and step count are the unweighted run's. For a loss
    that is a sum of per-pair terms this is, in expectation, the self-normalised
    weighted loss; NT-Xent's in-batch negatives make it an approximation (a heavy pair
    can meet its own copy in a batch, and fewer distinct pairs are seen, about
    ``sum(w)**2 / sum(w**2)``). None: the pairs as logged.
    """
    n = len(pairs.query)
    order = np.arange(n)
    if weights is not None:
        try:
            w = np.asarray(weights, dtype=float)
        except (TypeError, ValueError):
            raise OnlineError(f"weights: expected {n} numbers, got {type(weights).__name__}") from None
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise OnlineError(f"weights: expected {n} finite non-negative weights with a positive sum, got shape {w.shape}")
        order = np.random.default_rng(seed).choice(n, size=n, p=w / w.sum())
    images = np.concatenate([data.gallery.images, data.query_images])
    offset = len(data.gallery.images)  # gallery ids are positions (the study's gallery has ids 0..N-1)
    return finetune_on_pairs(copy.deepcopy(base), images, pairs.query[order] + offset, pairs.clicked[order],
                             epochs=epochs, batch_size=batch_size, seed=seed, progress=progress)


def ips(pairs: ClickPairs, theta: np.ndarray, max_weight: float = 10.0) -> np.ndarray:
    """Clipped inverse-propensity weights of each pair's click rank, from an estimated curve.

    An estimate can leave [0, 1] (a deep rank with no swapped clicks gives 0, noise can push a
    ratio above 1), so it is clipped to ``[1 / max_weight, 1]`` first: the same weights as
    ``ips_weights`` wherever the estimate is a valid propensity.
    """
    theta = np.clip(np.asarray(theta, dtype=float), 1.0 / max_weight, 1.0)
    return ips_weights(pairs.rank, theta, max_weight=max_weight)


@dataclass(frozen=True)
class MeanDiffTest:
    """Welch's test of a per-query mean metric, B against A: ``diff`` (b - a), its ``ci`` and ``p_value``."""

    diff: float
    ci: tuple[float, float]
    p_value: float
    significant: bool


def mean_diff_test(a: Mapping[str, float], b: Mapping[str, float], alpha: float = 0.05) -> MeanDiffTest:
    """Welch's t-test and interval for ``b["mean"] - a["mean"]`` from ``{"mean", "var", "n"}`` summaries."""
    from scipy import stats

    from visual_search.online.ab import _welch

    for arm, m in (("a", a), ("b", b)):
        if m["n"] < 2:
            raise OnlineError(f"arm {arm}: a per-query test needs at least 2 queries, got {m['n']}")
    _, df, p = _welch(a["mean"], a["var"], a["n"], b["mean"], b["var"], b["n"])
    diff = float(b["mean"] - a["mean"])
    half = float(stats.t.ppf(1 - alpha / 2, df) * np.sqrt(a["var"] / a["n"] + b["var"] / b["n"]))
    return MeanDiffTest(diff, (diff - half, diff + half), float(p), bool(p < alpha))


def _summary(values: np.ndarray) -> dict:
    mean, var, n = float(values.mean()), float(values.var(ddof=1)), int(len(values))
    half = 1.96 * float(np.sqrt(var / n))
    return {"mean": mean, "var": var, "n": n, "ci95": (mean - half, mean + half)}


def run_ab(service: VisualSearchService, data: StudyData, model: ClickModel, arms: Mapping[str, str | None],
           users_per_arm: int, control: str, seed: int = 0, name: str = "ab", searches_per_user: int = 1,
           progress: bool = False) -> dict:
    """A multi-arm A/B test: ``users_per_arm * len(arms)`` users, each hashed to one arm, ``searches_per_user`` searches each.

    The user is the unit of randomisation. With one search each, a query is a user, and
    per-query tests are valid; with several, only per-user means are (``per_user``). Returns
    ``{"metrics": {arm: log_metrics}, "srm_p": chi-square p of the split,
    "tests": {arm: two-proportion z-test of click rate (queries with a click) against control},
    "ctr_tests": {arm: Welch's test of per-query CTR against control (not the pooled per-result
    z-test, which would treat a page's 10 results as independent trials)},
    "per_query_ctr": {arm: {"mean", "var", "n", "ci95"} of each query's CTR},
    "per_user": {arm: {"ctr": the same of each user's mean CTR, "click_rate": of each user's share of searches
    with a click}}}``, all read from the service's log.

    Raises:
        OnlineError: ``control`` is not an arm, or an arm got fewer than 2 users.
    """
    if control not in arms:
        raise OnlineError(f"control {control!r} is not one of the arms {list(arms)}")
    exp = Experiment(service, name, arms, seed=seed)
    run_simulated_users(exp, model, data.query_images, data.query_labels, n_users=users_per_arm * len(arms), k=N_RANKS,
                        seed=seed, user_prefix=f"{name}-", searches_per_user=searches_per_user,
                        progress=progress and f"{name}: users")
    impressions = [i for i in read_impressions(service.catalog) if i.experiment and i.experiment.get("experiment") == name]
    metrics = log_metrics(impressions, by="variant")  # impressions of this experiment only: arm labels may repeat across experiments
    labels = list(arms)
    short = {a: metrics[a]["queries"] if a in metrics else 0 for a in labels}
    short = {a: n for a, n in short.items() if n < 2}
    if short:
        raise OnlineError(f"arms {short}: fewer than 2 users each; give the experiment more users")
    counts = [metrics[a]["queries"] for a in labels]
    per_query, per_user = {}, {}
    for arm in labels:
        mine = [i for i in impressions if i.experiment.get("variant") == arm and i.shown]
        t = query_table(mine)
        per_query[arm] = _summary(t["clicked"] / t["shown"])
        users = np.unique([i.user for i in mine], return_inverse=True)[1]
        count = np.bincount(users)
        per_user[arm] = {"ctr": _summary(np.bincount(users, t["clicked"] / t["shown"]) / count),
                         "click_rate": _summary(np.bincount(users, (t["clicks"] > 0).astype(float)) / count)}
    tests, ctr_tests = {}, {}
    c = metrics[control]
    for arm in labels:
        if arm == control:
            continue
        m = metrics[arm]
        tests[arm] = two_proportion_test(round(c["click_rate"] * c["queries"]), c["queries"], round(m["click_rate"] * m["queries"]), m["queries"])
        ctr_tests[arm] = mean_diff_test(per_query[control], per_query[arm])
    return {"metrics": metrics, "srm_p": srm_test(counts, [1.0] * len(labels)), "tests": tests, "ctr_tests": ctr_tests,
            "per_query_ctr": per_query, "per_user": per_user, "searches_per_user": searches_per_user}


def run_interleaving(service: VisualSearchService, data: StudyData, model: ClickModel, arm_a: tuple[str, str | None],
                     arm_b: tuple[str, str | None], n_users: int, seed: int = 0, name: str = "interleave",
                     searches_per_user: int = 1, progress: bool = False) -> dict[str, int]:
    """Team-draft interleave two rankers for ``n_users`` fresh users, ``searches_per_user`` searches each; returns
    ``{"a": wins, "b": wins, "tie": ties}`` per query (``a`` is ``arm_a``), counted from the service's log."""
    exp = Experiment(service, name, dict([arm_a, arm_b]), mode="interleave", seed=seed)
    run_simulated_users(exp, model, data.query_images, data.query_labels, n_users=n_users, k=N_RANKS, seed=seed,
                        user_prefix=f"{name}-", searches_per_user=searches_per_user, progress=progress and f"{name}: users")
    outcomes = interleaving_outcomes(read_impressions(service.catalog), experiment=name)
    return {w: outcomes.count(w) for w in ("a", "b", "tie")}


#: Total queries at which power is evaluated (log-spaced), for the power curves.
POWER_GRID = np.unique(np.geomspace(20, 2e7, 60).astype(np.int64))


def power_comparison(ab: dict, wins: Mapping[str, int], a: str, b: str, target: float = 0.8, n_sims: int = 2000,
                     seed: int = 0, grid: np.ndarray = POWER_GRID) -> tuple[dict, dict]:
    """Queries an A/B test and interleaving need for ``target`` power on the pair (a, b), from logged outcomes.

    Args:
        ab: ``run_ab`` of an experiment with arms a and b (its ``per_user`` summaries; users searched
            ``ab["searches_per_user"]`` times each, so the A/B unit is the user).
        wins: ``run_interleaving``'s outcome counts for the same pair (team a = ``a``), per query.

    Returns:
        ``(row, curves)``: ``row["queries_analytic"]`` gives total queries (A/B: both arms) for the A/B
        test on per-user CTR and on per-user click rate (Welch, normal approximation) and for
        interleaving (the sign test); None where the measured difference is exactly 0, with the reason
        in ``row["notes"]``. ``row["interleaving_simulated"]`` reads the simulated sign-test curve;
        ``row["ratio_ab_to_interleaving"]`` divides the better A/B metric's count by interleaving's.
        ``curves`` holds the ``PowerCurve`` of each design, against total queries.
    """
    from visual_search.online.power import (
        ab_mean_power_curve,
        ab_mean_queries_for_power,
        interleaving_power_curve,
        interleaving_queries_for_power,
        queries_to_power,
    )

    per_user, s = ab["per_user"], ab["searches_per_user"]
    row: dict = {"searches_per_user": s, "ab_users_per_arm": {a: per_user[a]["ctr"]["n"], b: per_user[b]["ctr"]["n"]},
                 "ab_per_user": {a: per_user[a], b: per_user[b]}, "interleaving": dict(wins),
                 "queries_analytic": {}, "notes": {}}
    curves = {}
    for metric in ("ctr", "click_rate"):
        ua, ub = per_user[a][metric], per_user[b][metric]
        label = f"ab_per_user_{metric}"
        try:
            row["queries_analytic"][label] = 2 * s * ab_mean_queries_for_power(ua["mean"], ua["var"], ub["mean"], ub["var"], power=target)
            curves[f"A/B per-user {metric.replace('_', ' ')}"] = ab_mean_power_curve(ua["mean"], ua["var"], ub["mean"], ub["var"], grid,
                                                                                     queries_per_unit=s)
        except OnlineError as err:
            row["queries_analytic"][label] = None
            row["notes"][label] = str(err)
    try:
        row["queries_analytic"]["interleaving"] = interleaving_queries_for_power(wins["a"], wins["b"], wins["tie"], power=target)
    except OnlineError as err:
        row["queries_analytic"]["interleaving"] = None
        row["notes"]["interleaving"] = str(err)
    curves["interleaving"] = interleaving_power_curve(wins["a"], wins["b"], wins["tie"], grid, n_sims=n_sims, seed=seed)
    row["interleaving_simulated"] = queries_to_power(curves["interleaving"], target)
    n = row["queries_analytic"]
    best_ab = min((v for k, v in n.items() if k.startswith("ab_") and v), default=None)
    row["ab_queries_best"] = best_ab
    row["ratio_ab_to_interleaving"] = best_ab / n["interleaving"] if best_ab and n["interleaving"] else None
    return row, curves


def order_agreement(offline: Sequence[float], online: Sequence[float]) -> dict:
    """Kendall's tau between two scorings of the same rankers, and whether they order them identically."""
    from scipy.stats import kendalltau

    offline, online = np.asarray(offline, float), np.asarray(online, float)
    if offline.shape != online.shape or len(offline) < 2:
        raise OnlineError(f"offline, online: expected two equal-length score lists of >= 2 rankers, got {offline.shape} and {online.shape}")
    tau = kendalltau(offline, online)
    return {"kendall_tau": float(tau.statistic), "p_value": float(tau.pvalue),
            "same_order": bool(np.array_equal(np.argsort(-offline, kind="stable"), np.argsort(-online, kind="stable")))}


__all__ = [
    "N_RANKS", "RANKERS", "ClickPairs", "MeanDiffTest", "StudyData", "mean_diff_test", "click_pairs", "finetune_on_clicks", "ips", "measure_position_bias",
    "POWER_GRID", "offline_scores", "order_agreement", "power_comparison", "rankers", "run_ab", "run_interleaving", "sizes", "study_data",
]
