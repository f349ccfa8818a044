"""Queries-to-power: the analytic sizes against statsmodels, the simulated curves against the analytic sizes.

Tolerances: a simulated power from 4,000 experiments has a standard error of about
sqrt(0.8 * 0.2 / 4000) ~ 0.0063, so the A/B curve is checked within 0.04 (over 6 SE)
of 0.8 at the analytic n. The sign test is exact and discrete while the analytic
interleaving size is a normal approximation, so that check allows 0.06. Seeds are
fixed: a run passes or fails every time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from visual_search.errors import OnlineError
from visual_search.online import sign_test_p_value, two_proportion_test
from visual_search.online.power import (
    PowerCurve,
    ab_mean_power_curve,
    ab_mean_queries_for_power,
    ab_power_curve,
    ab_queries_for_power,
    interleaving_power_curve,
    interleaving_queries_for_power,
    queries_to_power,
)

RATES = [(0.3, 0.33), (0.1, 0.15), (0.5, 0.45), (0.2, 0.3)]
MEANS = [(0.1, 0.02, 0.12, 0.03), (0.3, 0.1, 0.25, 0.05), (1.0, 4.0, 1.5, 0.0)]
OUTCOMES = [(40, 60, 100), (30, 45, 25), (55, 45, 10), (10, 20, 70)]


# ---------------------------------------------------------------------------- analytic
@pytest.mark.parametrize("p_a, p_b", RATES)
@pytest.mark.parametrize("alpha, power", [(0.05, 0.8), (0.01, 0.9)])
def test_ab_queries_match_statsmodels(p_a, p_b, alpha, power):
    """Per-arm n: statsmodels' NormalIndPower on Cohen's h (two-sided), rounded up; the same for a rise or a fall."""
    expected = math.ceil(NormalIndPower().solve_power(proportion_effectsize(p_b, p_a), alpha=alpha, power=power, ratio=1.0,
                                                      alternative="two-sided"))
    assert ab_queries_for_power(p_a, p_b, alpha=alpha, power=power) == expected
    assert ab_queries_for_power(p_b, p_a, alpha=alpha, power=power) == expected


@pytest.mark.parametrize("mean_a, var_a, mean_b, var_b", MEANS)
def test_ab_mean_queries_match_statsmodels(mean_a, var_a, mean_b, var_b):
    effect = (mean_b - mean_a) / math.sqrt((var_a + var_b) / 2)
    expected = math.ceil(NormalIndPower().solve_power(abs(effect), alpha=0.05, power=0.8, ratio=1.0, alternative="two-sided"))
    assert ab_mean_queries_for_power(mean_a, var_a, mean_b, var_b) == expected
    assert ab_mean_queries_for_power(mean_b, var_b, mean_a, var_a) == expected


@pytest.mark.parametrize("mean_a, var_a, mean_b, var_b", MEANS)
def test_ab_mean_power_curve_is_statsmodels_power(mean_a, var_a, mean_b, var_b):
    """Total n, n // 2 per arm: the normal power of the two-sample test, 0 simulations; about 0.8 at twice the analytic n."""
    ns = np.array([10, 11, 100, 1000, 5001])
    curve = ab_mean_power_curve(mean_a, var_a, mean_b, var_b, ns)
    effect = abs(mean_b - mean_a) / math.sqrt((var_a + var_b) / 2)
    expected = [NormalIndPower().power(effect, nobs1=int(n) // 2, alpha=0.05, ratio=1.0, alternative="two-sided") for n in ns]
    np.testing.assert_allclose(curve.power, expected, rtol=1e-9, atol=1e-12)
    assert curve.n_sims == 0 and curve.alpha == 0.05 and curve.ns.tolist() == ns.tolist()
    n = ab_mean_queries_for_power(mean_a, var_a, mean_b, var_b)
    at = ab_mean_power_curve(mean_a, var_a, mean_b, var_b, [2 * n - 2, 2 * n]).power
    assert at[0] < 0.8 <= at[1] < 0.8 + 0.01


@pytest.mark.parametrize("wins_a, wins_b, ties", OUTCOMES)
def test_interleaving_queries_follow_the_sign_test_formula(wins_a, wins_b, ties):
    p = wins_b / (wins_a + wins_b)
    za, zb = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    m = ((za / 2 + zb * math.sqrt(p * (1 - p))) / (p - 0.5)) ** 2
    assert interleaving_queries_for_power(wins_a, wins_b, ties) == math.ceil(m / (1 - ties / (wins_a + wins_b + ties)))
    assert interleaving_queries_for_power(wins_b, wins_a, ties) == interleaving_queries_for_power(wins_a, wins_b, ties)
    assert interleaving_queries_for_power(2 * wins_a, 2 * wins_b, 2 * ties) == interleaving_queries_for_power(wins_a, wins_b, ties)


# --------------------------------------------------------------------------- simulated
@pytest.mark.parametrize("p_a, p_b", RATES)
def test_ab_power_curve_reaches_the_target_at_the_analytic_n(p_a, p_b):
    n = ab_queries_for_power(p_a, p_b)
    curve = ab_power_curve(p_a, p_b, [2 * n], n_sims=4000, seed=0)
    assert isinstance(curve, PowerCurve) and curve.n_sims == 4000 and curve.ns.tolist() == [2 * n]
    assert curve.power[0] == pytest.approx(0.8, abs=0.04)


@pytest.mark.parametrize("wins_a, wins_b, ties", OUTCOMES)
def test_interleaving_power_curve_reaches_the_target_near_the_analytic_n(wins_a, wins_b, ties):
    n = interleaving_queries_for_power(wins_a, wins_b, ties)
    curve = interleaving_power_curve(wins_a, wins_b, ties, [n], n_sims=4000, seed=0)
    assert curve.power[0] == pytest.approx(0.8, abs=0.06)


def test_ab_power_curve_runs_the_pooled_z_test():
    """Replaying the curve's draws: the rejection share is that of ``two_proportion_test`` on each simulated experiment."""
    p_a, p_b, ns, n_sims, seed = 0.2, 0.3, [40, 101], 300, 5
    curve = ab_power_curve(p_a, p_b, ns, n_sims=n_sims, seed=seed)
    rng = np.random.default_rng(seed)
    per_arm = np.array(ns) // 2
    clicks_a = rng.binomial(per_arm[:, None], p_a, size=(len(ns), n_sims))
    clicks_b = rng.binomial(per_arm[:, None], p_b, size=(len(ns), n_sims))
    for i, m in enumerate(per_arm):
        rejected = [two_proportion_test(int(a), int(m), int(b), int(m)).p_value < 0.05 for a, b in zip(clicks_a[i], clicks_b[i], strict=True)]
        assert curve.power[i] == pytest.approx(np.mean(rejected), abs=1e-12)


def test_interleaving_power_curve_runs_the_exact_sign_test():
    """Replaying the curve's draws: the rejection share is that of ``sign_test_p_value`` (= scipy's binomtest)."""
    counts, ns, n_sims, seed = (30, 45, 25), [12, 40], 300, 9
    curve = interleaving_power_curve(*counts, ns, n_sims=n_sims, seed=seed)
    rng = np.random.default_rng(seed)
    shares = np.array(counts) / sum(counts)
    for i, n in enumerate(ns):
        draws = rng.multinomial(n, shares, size=n_sims)
        p = [sign_test_p_value(int(a), int(b)) for a, b, _ in draws]
        for a, b, _ in draws[:20]:
            if a + b:
                assert sign_test_p_value(int(a), int(b)) == pytest.approx(stats.binomtest(int(a), int(a + b), 0.5).pvalue, rel=1e-9)
        assert curve.power[i] == pytest.approx(np.mean(np.array(p) < 0.05), abs=1e-12)


def test_a_one_sided_log_gives_the_exact_sign_test_threshold():
    """b wins every query: n decided queries reject iff 2 / 2**n < alpha; 5 give p = 0.0625, 6 give 0.03125."""
    assert sign_test_p_value(0, 5) == stats.binomtest(5, 5, 0.5).pvalue == 0.0625
    assert sign_test_p_value(0, 6) == stats.binomtest(6, 6, 0.5).pvalue == 0.03125
    curve = interleaving_power_curve(0, 7, 0, [4, 5, 6, 7], n_sims=50)
    assert curve.power.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert interleaving_power_curve(0, 7, 0, [5], n_sims=50, alpha=0.07).power.tolist() == [1.0]
    assert queries_to_power(curve) == 6
    assert interleaving_power_curve(0, 0, 9, [10, 100], n_sims=50).power.tolist() == [0.0, 0.0]  # all ties: never a winner


def test_curves_are_seeded_and_monotone_in_n():
    ns = [50, 200, 800, 3200]
    a1, a2 = ab_power_curve(0.2, 0.25, ns, n_sims=1000, seed=3), ab_power_curve(0.2, 0.25, ns, n_sims=1000, seed=3)
    assert np.array_equal(a1.power, a2.power)
    assert not np.array_equal(a1.power, ab_power_curve(0.2, 0.25, ns, n_sims=1000, seed=4).power)
    i1, i2 = interleaving_power_curve(40, 60, 100, ns, n_sims=1000, seed=3), interleaving_power_curve(40, 60, 100, ns, n_sims=1000, seed=3)
    assert np.array_equal(i1.power, i2.power)
    for curve in (a1, i1):
        assert (np.diff(curve.power) > -0.05).all() and curve.power[-1] > curve.power[0]
        assert ((0 <= curve.power) & (curve.power <= 1)).all()


def test_equal_rates_reject_at_about_alpha():
    """No difference: the z-test's rejection rate is its size, about alpha (4,000 sims: SE ~ 0.0034)."""
    assert ab_power_curve(0.3, 0.3, [2000], n_sims=4000, seed=1).power[0] == pytest.approx(0.05, abs=0.015)


def test_queries_to_power_reads_the_first_n_reaching_the_target():
    curve = PowerCurve(np.array([10, 20, 30, 40]), np.array([0.1, 0.79, 0.8, 0.95]), 100, 0.05)
    assert queries_to_power(curve) == 30
    assert queries_to_power(curve, target=0.9) == 40
    assert queries_to_power(curve, target=0.05) == 10
    assert queries_to_power(curve, target=0.99) is None
    tiny = ab_power_curve(0.3, 0.31, [2, 4, 8], n_sims=200, seed=0)
    assert queries_to_power(tiny) is None


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, match", [
    (lambda: ab_queries_for_power(0.2, 0.2), "p_a == p_b"),
    (lambda: ab_queries_for_power(0.0, 0.2), "p_a"),
    (lambda: ab_queries_for_power(0.2, 1.0), "p_b"),
    (lambda: ab_queries_for_power(0.2, float("nan")), "p_b"),
    (lambda: ab_queries_for_power("0.2", 0.3), "p_a"),
    (lambda: ab_queries_for_power(0.2, 0.3, alpha=0.0), "alpha"),
    (lambda: ab_queries_for_power(0.2, 0.3, alpha=1.5), "alpha"),
    (lambda: ab_queries_for_power(0.2, 0.3, power=1.0), "power"),
    (lambda: ab_mean_queries_for_power(0.1, 0.02, 0.1, 0.03), "mean_a == mean_b"),
    (lambda: ab_mean_queries_for_power(0.1, -0.02, 0.2, 0.03), "var_a"),
    (lambda: ab_mean_queries_for_power(0.1, 0.02, 0.2, -1), "var_b"),
    (lambda: ab_mean_queries_for_power(0.1, 0.0, 0.2, 0.0), "var_a \\+ var_b"),
    (lambda: ab_mean_queries_for_power(float("inf"), 0.1, 0.2, 0.1), "mean_a"),
    (lambda: ab_mean_queries_for_power(0.1, 0.1, 0.2, 0.1, alpha=-0.1), "alpha"),
    (lambda: ab_mean_power_curve(0.1, 0.1, 0.2, 0.1, [1, 10]), "ns"),
    (lambda: ab_mean_power_curve(0.1, 0.1, 0.2, 0.1, [10], alpha=2), "alpha"),
    (lambda: interleaving_queries_for_power(-1, 5, 0), "wins_a"),
    (lambda: interleaving_queries_for_power(1, -5, 0), "wins_b"),
    (lambda: interleaving_queries_for_power(1, 5, -1), "ties"),
    (lambda: interleaving_queries_for_power(1.5, 5, 0), "wins_a"),
    (lambda: interleaving_queries_for_power(0, 0, 10), "all ties"),
    (lambda: interleaving_queries_for_power(7, 7, 3), "wins_a == wins_b"),
    (lambda: interleaving_queries_for_power(1, 5, 0, power=0), "power"),
    (lambda: ab_power_curve(0.2, 0.3, [1, 10]), "ns"),
    (lambda: ab_power_curve(0.2, 0.3, []), "ns"),
    (lambda: ab_power_curve(0.2, 0.3, [[10, 20]]), "ns"),
    (lambda: ab_power_curve(0.2, 0.3, [10.0, 20.0]), "ns"),
    (lambda: ab_power_curve(-0.1, 0.3, [10]), "p_a"),
    (lambda: ab_power_curve(0.2, 1.1, [10]), "p_b"),
    (lambda: ab_power_curve(0.2, 0.3, [10], n_sims=0), "n_sims"),
    (lambda: ab_power_curve(0.2, 0.3, [10], alpha=1.0), "alpha"),
    (lambda: ab_power_curve(0.2, 0.3, [10], seed=-1), "seed"),
    (lambda: interleaving_power_curve(0, 0, 0, [10]), "no outcomes"),
    (lambda: interleaving_power_curve(-1, 2, 0, [10]), "wins_a"),
    (lambda: interleaving_power_curve(1, 2, -3, [10]), "ties"),
    (lambda: interleaving_power_curve(1, 2, 0, [0]), "ns"),
    (lambda: interleaving_power_curve(1, 2, 0, [10], n_sims=-5), "n_sims"),
    (lambda: interleaving_power_curve(1, 2, 0, [10], alpha=0), "alpha"),
    (lambda: interleaving_power_curve(1, 2, 0, [10], seed="x"), "seed"),
    (lambda: queries_to_power(PowerCurve(np.array([2]), np.array([0.5]), 1, 0.05), target=1.0), "target"),
    (lambda: queries_to_power(PowerCurve(np.array([2]), np.array([0.5]), 1, 0.05), target=0), "target"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(OnlineError, match=match):
        call()
