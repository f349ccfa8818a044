"""A/B testing: the z-test, sample size and SRM check against statsmodels/scipy; hashing
assignment; per-user CTR; and the A/A and peeking simulations' false-positive rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_effectsize, proportions_ztest

from visual_search.errors import OnlineError
from visual_search.online.ab import (
    aggregate_ctr,
    compare_ctr,
    sample_size,
    simulate_aa_tests,
    simulate_peeking,
    srm_test,
    two_proportion_test,
)
from visual_search.online.assignment import assign, bucket

# ---- two-proportion z-test ------------------------------------------------------------------


def test_two_proportion_worked_example():
    # 120/1000 vs 150/1000: pooled rate 0.135, se = sqrt(0.135 * 0.865 * (1/1000 + 1/1000))
    r = two_proportion_test(120, 1000, 150, 1000)
    se = math.sqrt(0.135 * 0.865 * 0.002)
    assert r.p_a == 0.12 and r.p_b == 0.15
    assert r.diff == pytest.approx(0.03)
    assert r.z == pytest.approx(0.03 / se) and r.z == pytest.approx(1.96305, abs=1e-5)
    assert r.p_value == pytest.approx(math.erfc(r.z / math.sqrt(2)))
    assert r.p_value == pytest.approx(0.04964, abs=1e-5) and r.significant
    half = 1.959963984540054 * math.sqrt(0.12 * 0.88 / 1000 + 0.15 * 0.85 / 1000)
    assert r.ci == pytest.approx((0.03 - half, 0.03 + half))
    assert not two_proportion_test(120, 1000, 150, 1000, alpha=0.01).significant


def test_no_difference_and_degenerate_rates():
    assert two_proportion_test(50, 500, 50, 500).p_value == pytest.approx(1.0)
    r = two_proportion_test(0, 10, 0, 20)  # pooled rate 0: no evidence of a difference
    assert (r.z, r.p_value, r.diff, r.significant) == (0.0, 1.0, 0.0, False)
    assert two_proportion_test(7, 7, 9, 9).p_value == 1.0


@pytest.mark.parametrize("seed", range(40))
def test_two_proportion_matches_statsmodels(seed):
    rng = np.random.default_rng(seed)
    n_a, n_b = (int(x) for x in rng.integers(20, 50_000, size=2))
    rate = rng.uniform(0.01, 0.6)
    clicks_a = int(rng.binomial(n_a, rate))
    clicks_b = int(rng.binomial(n_b, min(rate * rng.uniform(0.8, 1.25), 0.99)))
    alpha = float(rng.uniform(0.005, 0.2))
    r = two_proportion_test(clicks_a, n_a, clicks_b, n_b, alpha=alpha)
    z, p = proportions_ztest([clicks_b, clicks_a], [n_b, n_a])
    low, high = confint_proportions_2indep(clicks_b, n_b, clicks_a, n_a, method="wald", compare="diff", alpha=alpha)
    assert r.z == pytest.approx(float(z), rel=1e-9, abs=1e-12)
    assert r.p_value == pytest.approx(float(p), rel=1e-9, abs=1e-12)
    assert r.ci == pytest.approx((float(low), float(high)), rel=1e-9, abs=1e-12)
    assert r.diff == pytest.approx(clicks_b / n_b - clicks_a / n_a, abs=1e-15)
    assert r.significant == (r.p_value < alpha) and r.alpha == alpha


# ---- sample size ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_sample_size_matches_statsmodels(seed):
    rng = np.random.default_rng(1000 + seed)
    p_base = float(rng.uniform(0.01, 0.7))
    mde = float(rng.uniform(0.002, 0.2) * min(p_base, 1 - p_base) + 1e-4)
    alpha = float(rng.choice([0.01, 0.05, 0.1, rng.uniform(0.001, 0.3)]))
    power = float(rng.uniform(max(alpha, 0.5) + 0.01, 0.99))
    expected = NormalIndPower().solve_power(
        effect_size=proportion_effectsize(p_base + mde, p_base), alpha=alpha, power=power, ratio=1.0, alternative="two-sided"
    )
    expected = float(np.squeeze(expected))
    got = sample_size(p_base, mde, alpha, power)
    if abs(expected - round(expected)) < 1e-6:  # a root on an integer: rounding up may go either way
        assert got in (round(expected), round(expected) + 1)
    else:
        assert got == math.ceil(expected)


def test_sample_size_worked_example_and_shape():
    # 10% -> 11% at alpha 0.05, power 0.8: the textbook ~14,750 users per arm
    assert sample_size(0.10, 0.01) == 14745
    # halving the lift roughly quadruples n; asking for more power costs more users
    assert 3.8 < sample_size(0.10, 0.005) / sample_size(0.10, 0.01) < 4.2
    assert sample_size(0.10, 0.01, power=0.9) > sample_size(0.10, 0.01, power=0.8)
    assert sample_size(0.10, 0.01, alpha=0.01) > sample_size(0.10, 0.01, alpha=0.05)


# ---- sample-ratio mismatch ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_srm_matches_scipy_chisquare(seed):
    rng = np.random.default_rng(2000 + seed)
    k = int(rng.integers(2, 6))
    ratios = rng.uniform(0.1, 3.0, size=k)
    counts = rng.multinomial(int(rng.integers(50, 100_000)), rng.dirichlet(ratios * 50))
    expected = stats.chisquare(counts, f_exp=counts.sum() * ratios / ratios.sum()).pvalue
    assert srm_test(list(counts), list(ratios)) == pytest.approx(float(expected), rel=1e-9, abs=1e-300)


def test_srm_catches_a_broken_split():
    assert srm_test([5000, 5300], [0.5, 0.5]) < 0.01  # 50/50 planned, 300 users missing from one arm
    assert srm_test([5000, 5040], [1, 1]) > 0.5  # ordinary noise
    assert srm_test([9000, 1000], [9, 1]) == pytest.approx(1.0)  # a 90/10 split, exactly as planned
    assert srm_test(np.array([9000, 1000]), np.array([1, 1])) < 1e-100


# ---- assignment -----------------------------------------------------------------------------

USERS = [f"user-{i}" for i in range(20_000)]


def test_assign_is_deterministic_and_in_range():
    first = [assign(u, "exp-1") for u in USERS[:500]]
    assert first == [assign(u, "exp-1") for u in USERS[:500]]
    assert set(first) == {"a", "b"}
    assert all(0.0 <= bucket(u, "exp-1") < 1.0 for u in USERS[:500])


def test_assign_splits_50_50_within_3_binomial_sd():
    n_a = sum(assign(u, "exp-1") == "a" for u in USERS)
    sd = math.sqrt(len(USERS) * 0.25)  # binomial(20,000, 0.5): sd ≈ 70.7
    assert abs(n_a - len(USERS) / 2) < 3 * sd


@pytest.mark.parametrize("weights", [(0.9, 0.1), (1, 2, 1), (3, 0, 1)])
def test_assign_respects_weights_within_3_binomial_sd(weights):
    variants = tuple("xyz"[: len(weights)])
    seen = [assign(u, "weighted", variants, weights) for u in USERS]
    for variant, w in zip(variants, weights):
        share = w / sum(weights)
        sd = math.sqrt(len(USERS) * share * (1 - share))
        assert abs(seen.count(variant) - len(USERS) * share) <= 3 * sd, (variant, seen.count(variant))


def test_assign_is_independent_across_experiments():
    one = np.array([assign(u, "exp-1") == "a" for u in USERS])
    two = np.array([assign(u, "exp-2") == "a" for u in USERS])
    assert (one != two).any()
    table = [[np.sum(one & two), np.sum(one & ~two)], [np.sum(~one & two), np.sum(~one & ~two)]]
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_salt_cannot_be_shifted_into_the_user_id():
    assert bucket("c", "ab") != bucket("bc", "a")


# ---- per-user CTR ---------------------------------------------------------------------------


def _rows(seed=0, users=60, rate_b=0.12):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(users):
        variant = "a" if i % 2 else "b"
        p = rng.beta(1, 8) if variant == "a" else min(rng.beta(1, 8) + rate_b - 0.1, 1.0)
        for _ in range(int(rng.integers(1, 30))):
            rows.append((f"u{i}", variant, int(rng.random() < p)))
    return rows


def test_aggregate_ctr_worked_example():
    rows = [("u1", "a", 1), ("u1", "a", 0), ("u1", "a", 0), ("u1", "a", 1), ("u2", "a", 0), ("u3", "b", True), ("u4", "b", 0), ("u4", "b", 1)]
    agg = aggregate_ctr(rows)
    a, b = agg["a"], agg["b"]
    assert (a.impressions, a.clicks, a.users) == (5, 2, 2)
    assert a.impression_ctr == pytest.approx(2 / 5)  # u1's four impressions dominate
    assert a.user_mean_ctr == pytest.approx((2 / 4 + 0) / 2)  # each user counts once
    assert list(b.user_ctrs) == [1.0, 0.5] and b.user_mean_ctr == pytest.approx(0.75)
    assert b.user_ctr_std == pytest.approx(np.std([1.0, 0.5], ddof=1))


@pytest.mark.parametrize("seed", range(5))
def test_compare_ctr_per_user_test_is_welch_on_user_means(seed):
    rows = _rows(seed)
    result = compare_ctr(rows)
    a, b = result.a.user_ctrs, result.b.user_ctrs
    expected = stats.ttest_ind(b, a, equal_var=False)
    assert result.per_user.t == pytest.approx(float(expected.statistic), rel=1e-9)
    assert result.per_user.p_value == pytest.approx(float(expected.pvalue), rel=1e-9)
    assert result.per_user.diff == pytest.approx(b.mean() - a.mean())
    imp = two_proportion_test(result.a.clicks, result.a.impressions, result.b.clicks, result.b.impressions)
    assert result.per_impression == imp


# ---- simulations ----------------------------------------------------------------------------


def test_aa_per_user_test_holds_alpha_and_per_impression_does_not():
    result = simulate_aa_tests(n_tests=1000, users_per_arm=200, impressions_per_user=20, base_ctr=0.1, user_heterogeneity=0.1, seed=0)
    assert 0.035 <= result.per_user_fpr <= 0.065, result
    assert result.per_impression_fpr > 0.15, result  # design effect 1 + 19 * 0.1 = 2.9: expect ≈ 25 %
    assert result == simulate_aa_tests(n_tests=1000, users_per_arm=200, impressions_per_user=20, base_ctr=0.1, user_heterogeneity=0.1, seed=0)


def test_aa_without_heterogeneity_both_tests_hold_alpha():
    result = simulate_aa_tests(n_tests=1000, users_per_arm=200, impressions_per_user=10, base_ctr=0.1, user_heterogeneity=0.0, seed=1)
    assert 0.03 <= result.per_impression_fpr <= 0.07 and 0.03 <= result.per_user_fpr <= 0.07, result


def test_peeking_inflates_the_false_positive_rate():
    result = simulate_peeking(n_tests=1000, days=14, users_per_day_per_arm=100, base_ctr=0.1, seed=0)
    assert 0.035 <= result.fixed_horizon_fpr <= 0.065, result
    assert result.peeking_fpr > 2.5 * result.fixed_horizon_fpr and result.peeking_fpr > 0.15, result
    curve = result.stopped_by_day
    assert curve.shape == (14,) and np.all(np.diff(curve) >= 0) and curve[-1] == result.peeking_fpr
    assert curve[0] == pytest.approx(0.05, abs=0.02)  # one peek is one honest test
    again = simulate_peeking(n_tests=1000, days=14, users_per_day_per_arm=100, base_ctr=0.1, seed=0)
    assert np.array_equal(again.stopped_by_day, curve)
    assert not np.array_equal(simulate_peeking(seed=1).stopped_by_day, curve)


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: two_proportion_test(-1, 10, 1, 10), "clicks_a"),
        (lambda: two_proportion_test(11, 10, 1, 10), "clicks_a"),
        (lambda: two_proportion_test(1, 10, 3, 0), "n_b"),
        (lambda: two_proportion_test(1.0, 10, 1, 10), "clicks_a"),
        (lambda: two_proportion_test(1, True, 1, 10), "n_a"),
        (lambda: two_proportion_test(1, 10, float("nan"), 10), "clicks_b"),
        (lambda: two_proportion_test(1, 10, 1, 10, alpha=0), "alpha"),
        (lambda: two_proportion_test(1, 10, 1, 10, alpha=1.5), "alpha"),
        (lambda: two_proportion_test(1, 10, 1, 10, alpha=float("nan")), "alpha"),
        (lambda: sample_size(0.1, 0), "mde"),
        (lambda: sample_size(0.1, -0.01), "mde"),
        (lambda: sample_size(0.6, 0.4), "p_base + mde"),
        (lambda: sample_size(0.0, 0.1), "p_base"),
        (lambda: sample_size(float("nan"), 0.1), "p_base"),
        (lambda: sample_size(0.1, 0.01, power=1.0), "power"),
        (lambda: sample_size(0.1, 0.01, alpha=0.5, power=0.4), "power"),
        (lambda: sample_size(0.1, 0.01, alpha=-0.1), "alpha"),
        (lambda: srm_test([10, 20], [1, 1, 1]), "same length"),
        (lambda: srm_test([10, 20], [1, -1]), "ratios"),
        (lambda: srm_test([10, -20], [1, 1]), "counts"),
        (lambda: srm_test([10, 2.5], [1, 1]), "counts"),
        (lambda: srm_test([0, 0], [1, 1]), "counts"),
        (lambda: srm_test([10], [1]), "counts"),
        (lambda: srm_test("10", "1"), "counts"),
        (lambda: srm_test([10, 20], [1, float("nan")]), "ratios"),
        (lambda: assign("", "exp"), "user_id"),
        (lambda: assign(42, "exp"), "user_id"),
        (lambda: assign("u", ""), "experiment"),
        (lambda: assign("u", "exp", variants=("a",)), "variants"),
        (lambda: assign("u", "exp", variants=("a", "a")), "variants"),
        (lambda: assign("u", "exp", variants="ab"), "variants"),
        (lambda: assign("u", "exp", weights=(1,)), "weights"),
        (lambda: assign("u", "exp", weights=(1, -1)), "weights"),
        (lambda: assign("u", "exp", weights=(0, 0)), "weights"),
        (lambda: assign("u", "exp", weights=(1, float("nan"))), "weights"),
        (lambda: aggregate_ctr([("u1", "c", 1)]), "unknown variant"),
        (lambda: aggregate_ctr([("u1", "a", 2), ("u2", "b", 0)]), "clicked"),
        (lambda: aggregate_ctr([("u1", "a", 1), ("u1", "b", 0)]), "u1"),
        (lambda: aggregate_ctr([("u1", "a")]), "rows[0]"),
        (lambda: aggregate_ctr([("u1", "a", 1)]), "'b'"),
        (lambda: compare_ctr([("u1", "a", 1), ("u2", "b", 0), ("u3", "b", 1)]), "at least 2 users"),
        (lambda: compare_ctr([], control="a", treatment="a"), "distinct"),
        (lambda: simulate_aa_tests(n_tests=0), "n_tests"),
        (lambda: simulate_aa_tests(users_per_arm=1), "users_per_arm"),
        (lambda: simulate_aa_tests(user_heterogeneity=1.0), "user_heterogeneity"),
        (lambda: simulate_aa_tests(base_ctr=1.0), "base_ctr"),
        (lambda: simulate_aa_tests(seed=-1), "seed"),
        (lambda: simulate_peeking(days=0), "days"),
        (lambda: simulate_peeking(users_per_day_per_arm=2.0), "users_per_day_per_arm"),
        (lambda: simulate_peeking(alpha=1), "alpha"),
    ],
)
def test_bad_input_raises_online_error_naming_it(call, name):
    with pytest.raises(OnlineError) as info:
        call()
    assert name in str(info.value), str(info.value)
