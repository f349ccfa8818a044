"""Position bias: the swap estimator and EM recover known examination curves from simulated
PBM logs (within 0.05 at each of the top 10 ranks), EM's likelihood climbs, the naive
per-rank CTR is biased where they are not, IPS weights by hand, and bad inputs refused."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from visual_search.errors import OnlineError
from visual_search.online.position_bias import (
    estimate_theta_em,
    estimate_theta_swap,
    ips_weights,
    naive_theta,
    power_law_theta,
    simulate_pbm_log,
)

R = 10  # the target: every one of the top 10 ranks within TOLERANCE
TOLERANCE = 0.05
CURVES = {
    "power-1": power_law_theta(R, 1.0),
    "power-0.5": power_law_theta(R, 0.5),
    "exponential": np.exp(-np.arange(R) / 4.0),
}


def _ranked_attractiveness(n_queries: int = 200, seed: int = 100) -> np.ndarray:
    """Per-query attractiveness, sorted so the production ranker puts better items higher."""
    rng = np.random.default_rng(seed)
    return -np.sort(-rng.uniform(0.05, 0.95, size=(n_queries, R)), axis=1)


@functools.cache
def _log(curve: str, n_impressions: int, mode: str = "first", swap_rate: float = 0.3, seed: int = 0):
    return simulate_pbm_log(CURVES[curve], _ranked_attractiveness(), n_impressions, swap_rate=swap_rate, mode=mode, seed=seed)


def _max_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    assert estimate.shape == truth.shape
    return float(np.abs(estimate - truth).max())


# ---- the swap intervention ----------------------------------------------------------------


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_swap_first_recovers_the_curve(curve):
    # 60k impressions, 30% swapped: about 2,000 swapped impressions per rank k
    log = _log(curve, 60_000)
    est = estimate_theta_swap(log.rank, log.clicked, log.swap, mode="first")
    assert est.theta[0] == 1.0 and est.mode == "first"
    np.testing.assert_allclose(est.theta[1:], est.ratios)
    assert est.impressions.sum() == len(np.unique(log.impression[log.swap > 0]))
    assert _max_error(est.theta, CURVES[curve]) < TOLERANCE


@pytest.mark.parametrize("curve", ["power-1", "exponential"])
def test_swap_adjacent_recovers_the_curve_with_more_data(curve):
    # each theta_k is a product of k - 1 ratios, so errors compound: it needs a bigger log
    log = _log(curve, 200_000, mode="adjacent")
    est = estimate_theta_swap(log.rank, log.clicked, log.swap, mode="adjacent")
    np.testing.assert_allclose(est.theta[1:], np.cumprod(est.ratios))
    assert _max_error(est.theta, CURVES[curve]) < TOLERANCE


def test_swap_uses_only_ranks_within_n_ranks():
    log = _log("power-1", 60_000)
    full = estimate_theta_swap(log.rank, log.clicked, log.swap)
    keep = (log.rank <= 5) & (log.swap <= 5)
    top5 = estimate_theta_swap(log.rank[keep], log.clicked[keep], log.swap[keep], n_ranks=5)
    np.testing.assert_allclose(top5.theta, full.theta[:5])


def test_swap_on_an_exact_expected_log():
    # expected clicks, not random ones: two items x (gamma .8) and y (gamma .4), theta = (1, .5),
    # 1000 impressions each way; the ratio of summed rates is exactly theta_2 / theta_1
    ranks = np.tile([1, 2], 2000)
    swap = np.repeat([0, 2], 2000)
    p = np.concatenate([np.tile([0.8, 0.2], 1000), np.tile([0.4, 0.4], 1000)])  # theta_r * gamma
    clicked = np.zeros(4000, dtype=int)
    for group in (0, 2):  # round(p * 1000) clicks at each rank of each group
        for rank in (1, 2):
            rows = np.flatnonzero((swap == group) & (ranks == rank))
            clicked[rows[: int(round(p[rows[0]] * 1000))]] = 1
    est = estimate_theta_swap(ranks, clicked, swap)
    assert est.theta == pytest.approx([1.0, 0.5])  # (0.2 + 0.4) / (0.8 + 0.4)


# ---- EM -----------------------------------------------------------------------------------


@pytest.mark.parametrize("curve", sorted(CURVES))
def test_em_recovers_the_curve(curve):
    log = _log(curve, 60_000)
    est = estimate_theta_em(log.rank, log.clicked, log.key)
    assert est.converged and est.theta[0] == 1.0
    assert len(est.keys) == len(est.gamma) == len(np.unique(log.key))
    assert _max_error(est.theta, CURVES[curve]) < TOLERANCE


def test_em_relevance_tracks_the_truth():
    log = _log("power-1", 60_000)
    est = estimate_theta_em(log.rank, log.clicked, log.key)
    truth = _ranked_attractiveness().ravel()[est.keys]
    assert np.corrcoef(est.gamma, truth)[0, 1] > 0.8


@pytest.mark.parametrize("curve", ["power-1", "exponential"])
def test_em_log_likelihood_never_decreases(curve):
    log = _log(curve, 60_000)
    est = estimate_theta_em(log.rank, log.clicked, log.key, max_iter=300)
    ll = est.log_likelihood
    assert len(ll) == est.n_iter + 1 and np.all(np.isfinite(ll))
    assert np.all(np.diff(ll) >= -1e-9 * np.abs(ll[:-1]))
    assert ll[-1] > ll[0]


def test_em_refuses_a_log_where_rank_and_item_never_separate():
    # no intervention: every item always sits at its production rank, so theta is not identifiable
    log = _log("power-1", 5_000, swap_rate=0.0)
    with pytest.raises(OnlineError, match="not identifiable"):
        estimate_theta_em(log.rank, log.clicked, log.key)


# ---- the naive curve is biased; the estimators are not --------------------------------------


def test_naive_ctr_confounds_relevance_with_rank():
    curve = "power-0.5"
    truth = CURVES[curve]
    log = _log(curve, 60_000)
    production = log.swap == 0
    naive = naive_theta(log.rank[production], log.clicked[production])
    # better items sit higher, so the naive curve falls far faster than theta ...
    assert _max_error(naive, truth) > 0.2 and np.all(naive[1:] < truth[1:])
    # ... while both estimators, on the same log with its swapped share, do not
    swap = estimate_theta_swap(log.rank, log.clicked, log.swap)
    em = estimate_theta_em(log.rank, log.clicked, log.key)
    assert _max_error(swap.theta, truth) < TOLERANCE and _max_error(em.theta, truth) < TOLERANCE


def test_naive_ctr_is_right_when_every_rank_shows_equally_good_items():
    # each query's items are equally attractive: rank alone explains the clicks
    truth = CURVES["power-1"]
    gamma = np.repeat(np.random.default_rng(3).uniform(0.2, 0.9, size=(200, 1)), R, axis=1)
    log = simulate_pbm_log(truth, gamma, 40_000, seed=1)
    assert _max_error(naive_theta(log.rank, log.clicked), truth) < TOLERANCE


# ---- the simulator --------------------------------------------------------------------------


def test_simulator_is_seeded_and_swaps_what_it_says():
    theta, gamma = CURVES["power-1"], _ranked_attractiveness(20)
    a = simulate_pbm_log(theta, gamma, 2_000, swap_rate=0.5, seed=7)
    b = simulate_pbm_log(theta, gamma, 2_000, swap_rate=0.5, seed=7)
    c = simulate_pbm_log(theta, gamma, 2_000, swap_rate=0.5, seed=8)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("query", "key", "rank", "clicked", "swap"))
    assert not np.array_equal(a.clicked, c.clicked)
    assert len(a.rank) == 2_000 * R and set(np.unique(a.swap)) <= set(range(R + 1)) - {1}
    position = a.key % R + 1  # the production rank of the item shown
    swapped = a.swap > 0
    assert np.array_equal(position[~swapped], a.rank[~swapped])
    k = a.swap
    assert np.all(position[swapped & (a.rank == 1)] == k[swapped & (a.rank == 1)])
    assert np.all(position[swapped & (a.rank == k)] == 1)
    moved = swapped & (a.rank != 1) & (a.rank != k)
    assert np.array_equal(position[moved], a.rank[moved])
    adj = simulate_pbm_log(theta, gamma, 2_000, swap_rate=1.0, mode="adjacent", seed=7)
    pos, k = adj.key % R + 1, adj.swap
    assert np.all(k >= 2) and np.all(pos[adj.rank == k] == k[adj.rank == k] - 1)
    assert np.all(pos[adj.rank == k - 1] == k[adj.rank == k - 1])


# ---- IPS weights --------------------------------------------------------------------------


def test_ips_weights_by_hand():
    theta = [1.0, 0.5, 0.25, 0.1, 0.05]
    ranks = [1, 2, 3, 4, 5, 2]
    np.testing.assert_allclose(ips_weights(ranks, theta), [1, 2, 4, 10, 10, 2])  # 1 / 0.05 = 20, clipped at 10
    np.testing.assert_allclose(ips_weights(ranks, theta, max_weight=3), [1, 2, 3, 3, 3, 2])
    np.testing.assert_allclose(ips_weights(ranks, theta, max_weight=np.inf), [1, 2, 4, 10, 20, 2])
    assert ips_weights([], theta).shape == (0,)


# ---- bad inputs -----------------------------------------------------------------------------

_R, _C, _S = np.array([1, 2, 1, 2]), np.array([1, 0, 0, 1]), np.array([0, 0, 2, 2])
_THETA, _GAMMA = power_law_theta(3), np.full((2, 3), 0.5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: naive_theta(_R, _C[:3]), "clicked has 3 rows"),
        (lambda: naive_theta([0, 1], [0, 1]), "ranks must be >= 1"),
        (lambda: naive_theta([1, 2], [0, 2]), "clicked must be 0 or 1"),
        (lambda: naive_theta([1.0, np.nan], [0, 1]), "ranks contains NaN"),
        (lambda: naive_theta([1.5, 2.0], [0, 1]), "ranks must hold integers"),
        (lambda: naive_theta(["a", "b"], [0, 1]), "ranks must be an integer array"),
        (lambda: naive_theta([[1, 2]], [[0, 1]]), "ranks must be a 1-D array"),
        (lambda: naive_theta([], []), "ranks is empty"),
        (lambda: naive_theta([1, 3], [1, 0]), "rank 2 has no rows"),
        (lambda: naive_theta([1, 2], [0, 1]), "rank 1 has no clicks"),
        (lambda: estimate_theta_swap(_R, _C, _S[:2]), "swap has 2 rows"),
        (lambda: estimate_theta_swap(_R, _C, [0, 0, 1, 1], min_impressions=1), "swap must be 0"),
        (lambda: estimate_theta_swap(_R, _C, _S, mode="random", min_impressions=1), "mode must be one of"),
        (lambda: estimate_theta_swap(_R, _C, _S), "rank 2 has 1 production-order impressions"),
        (lambda: estimate_theta_swap(_R, _C, [0, 0, 0, 0], min_impressions=1), "rank 2 has 0 swapped impressions"),
        (lambda: estimate_theta_swap(_R, _C, _S, min_impressions=0), "min_impressions"),
        (lambda: estimate_theta_swap(_R, [0, 1, 0, 1], _S, min_impressions=1), "rank 1 has no clicks"),
        (lambda: estimate_theta_swap(_R, _C, _S, n_ranks=1), "n_ranks"),
        (lambda: estimate_theta_em(_R, _C, [0, 1, 0]), "keys has 3 rows"),
        (lambda: estimate_theta_em(_R, _C, [0.5, 1, 0, 1]), "keys must hold integers"),
        (lambda: estimate_theta_em(_R, _C, [0, 1, 1, 0]), "rank 1 has 2 rows; min_rows_per_rank"),
        (lambda: estimate_theta_em(_R, _C, [0, 1, 1, 0], tol=0, min_rows_per_rank=1), "tol"),
        (lambda: estimate_theta_em(_R, _C, [0, 1, 1, 0], max_iter=0, min_rows_per_rank=1), "max_iter"),
        (lambda: estimate_theta_em(_R, _C, [0, 1, 2, 3], min_rows_per_rank=1), "not identifiable"),
        (lambda: simulate_pbm_log([1.0, 0.0, 0.5], _GAMMA, 10), "theta must hold"),
        (lambda: simulate_pbm_log([1.0], _GAMMA[:, :1], 10), "at least 2 ranks"),
        (lambda: simulate_pbm_log(_THETA, np.full((2, 4), 0.5), 10), "attractiveness must have shape"),
        (lambda: simulate_pbm_log(_THETA, np.full((2, 3), 1.5), 10), "attractiveness must hold"),
        (lambda: simulate_pbm_log(_THETA, _GAMMA, 0), "n_impressions"),
        (lambda: simulate_pbm_log(_THETA, _GAMMA, 10, swap_rate=1.5), "swap_rate"),
        (lambda: simulate_pbm_log(_THETA, _GAMMA, 10, mode="pairs"), "mode must be one of"),
        (lambda: simulate_pbm_log(_THETA, _GAMMA, 10, seed=-1), "seed"),
        (lambda: power_law_theta(0), "n_ranks"),
        (lambda: power_law_theta(5, eta=-1.0), "eta"),
        (lambda: ips_weights([1, 4], _THETA), "ranks must be in 1..3"),
        (lambda: ips_weights([1, 2], _THETA, max_weight=0.5), "max_weight"),
        (lambda: ips_weights([1, 2], _THETA, max_weight=True), "max_weight"),
        (lambda: ips_weights([1, 2], [1.0, np.nan]), "theta must hold"),
        (lambda: ips_weights([1, 2], []), "theta must be a non-empty"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_inputs_raise_online_error(call, match):
    with pytest.raises(OnlineError, match=match):
        call()
