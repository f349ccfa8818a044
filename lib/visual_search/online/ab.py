"""A/B tests on click-through rate: the significance test, its sample size, and its pitfalls.

Written by hand, with numpy and scipy's distributions, because the formulas are the
lesson; the tests check each against statsmodels or scipy.

* ``two_proportion_test``: the pooled two-proportion z-test (as statsmodels'
  ``proportions_ztest``) and the Wald interval for ``p_b - p_a`` (as
  ``confint_proportions_2indep(method="wald")``).
* ``sample_size``: users per arm to detect an absolute lift, from Cohen's h and
  the normal power equation (as statsmodels' ``NormalIndPower``).
* ``srm_test``: the sample-ratio-mismatch check. If a 50/50 experiment shows
  5,000 vs 5,300 users, assignment or logging is broken, and no metric from it
  can be trusted; check this before reading any result.
* ``aggregate_ctr`` / ``compare_ctr``: CTR per impression and per user, and a
  test on per-user means. Impressions of one user are correlated (some users
  click a lot, some never), so a test that treats every impression as an
  independent coin flip understates the variance and finds "significant"
  differences that are noise. The unit of randomisation is the user, so the unit
  of analysis must be the user too: average each user's CTR, then compare the
  means of those per-user CTRs with a Welch t-test.
* ``simulate_aa_tests`` and ``simulate_peeking``: A/A simulations (no true
  difference) that measure false-positive rates: the per-impression test under
  heterogeneous users, and "peek every day, stop at the first p < alpha".

Every bad input raises ``OnlineError`` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from visual_search._checks import check_int, check_real, check_seed
from visual_search.errors import OnlineError

# ---- checks -------------------------------------------------------------------------------


def _alpha(alpha: float) -> float:
    return check_real(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True, error=OnlineError)


def _counts(clicks: int, n: int, arm: str) -> tuple[int, int]:
    n = check_int(n, f"n_{arm}", low=1, error=OnlineError)
    clicks = check_int(clicks, f"clicks_{arm}", low=0, error=OnlineError)
    if clicks > n:
        raise OnlineError(f"clicks_{arm} must be <= n_{arm} ({n}), got {clicks}")
    return clicks, n


# ---- the two-proportion z-test ------------------------------------------------------------


@dataclass(frozen=True)
class TwoProportionResult:
    """The outcome of a two-proportion test of B against A.

    Attributes:
        p_a, p_b: the observed rates (clicks / impressions) of A and B.
        diff: ``p_b - p_a``, the estimated lift.
        z: the pooled z statistic of ``diff``.
        p_value: two-sided p-value of ``z``.
        ci: the Wald ``1 - alpha`` confidence interval (low, high) for ``diff``.
        alpha: the significance level.
        significant: ``p_value < alpha``.
    """

    p_a: float
    p_b: float
    diff: float
    z: float
    p_value: float
    ci: tuple[float, float]
    alpha: float
    significant: bool


def _pooled_z(clicks_a, n_a, clicks_b, n_b):
    """The pooled z statistic (numpy, elementwise); 0 where the pooled rate is 0 or 1 (then diff is 0 too)."""
    clicks_a, n_a, clicks_b, n_b = (np.asarray(x, dtype=float) for x in (clicks_a, n_a, clicks_b, n_b))
    pooled = (clicks_a + clicks_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    diff = clicks_b / n_b - clicks_a / n_a
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, diff / np.where(se > 0, se, 1.0), 0.0)


def _two_sided_p(z):
    """``2 * P(Z > |z|)`` for a standard normal Z (elementwise)."""
    return 2.0 * stats.norm.sf(np.abs(z))


def two_proportion_test(clicks_a: int, n_a: int, clicks_b: int, n_b: int, alpha: float = 0.05) -> TwoProportionResult:
    """Is B's click rate different from A's? The pooled two-proportion z-test, with a Wald interval.

    Under the null (equal rates) both arms share one rate, so the standard error uses
    the pooled rate ``(clicks_a + clicks_b) / (n_a + n_b)``:
    ``z = (p_b - p_a) / sqrt(p(1 - p)(1/n_a + 1/n_b))``. The confidence interval is
    about the size of the lift, not the null, so it uses each arm's own variance:
    ``diff ± z_{1-alpha/2} sqrt(p_a(1-p_a)/n_a + p_b(1-p_b)/n_b)``.

    The counts must be independent trials: pass users (e.g. "clicked at least once")
    or use ``compare_ctr`` for impressions, which are correlated within a user.

    Args:
        clicks_a, n_a: clicks (successes) and trials of the control, 0 <= clicks <= n, n >= 1.
        clicks_b, n_b: the same for the treatment.
        alpha: significance level in (0, 1).

    Returns:
        A ``TwoProportionResult``. When no trial or every trial clicked in both arms
        (pooled rate 0 or 1), there is no evidence of a difference: z = 0, p = 1.
    """
    clicks_a, n_a = _counts(clicks_a, n_a, "a")
    clicks_b, n_b = _counts(clicks_b, n_b, "b")
    alpha = _alpha(alpha)
    p_a, p_b = clicks_a / n_a, clicks_b / n_b
    diff = p_b - p_a
    z = float(_pooled_z(clicks_a, n_a, clicks_b, n_b))
    p_value = float(_two_sided_p(z))
    half = float(stats.norm.isf(alpha / 2)) * math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    return TwoProportionResult(p_a, p_b, diff, z, p_value, (diff - half, diff + half), alpha, p_value < alpha)


# ---- sample size ----------------------------------------------------------------------------


def _two_sided_power(h: float, n_per_arm: float, alpha: float) -> float:
    """Power of the two-sided z-test for effect ``h`` with ``n_per_arm`` in each arm (both tails counted)."""
    shift = h * math.sqrt(n_per_arm / 2.0)  # the effective sample size of two equal arms is n / 2
    crit = stats.norm.isf(alpha / 2)
    return float(stats.norm.sf(crit - shift) + stats.norm.cdf(-crit - shift))


def sample_size(p_base: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Users per arm needed to detect an absolute lift of ``mde`` over ``p_base`` (two-sided test).

    The effect is Cohen's h, ``2 asin(sqrt(p_base + mde)) - 2 asin(sqrt(p_base))``:
    the arcsine transform makes a proportion's variance constant, so one formula
    serves every base rate. With ``n`` users per arm the z statistic is shifted by
    ``h sqrt(n / 2)``, and the power counts both rejection tails::

        power = P(Z > z_{1-alpha/2} - h sqrt(n/2)) + P(Z < -z_{1-alpha/2} - h sqrt(n/2))

    The closed form ``n = 2 ((z_{1-alpha/2} + z_power) / h)^2`` ignores the far tail;
    this solves the equation above exactly (as statsmodels' ``NormalIndPower`` does)
    and rounds up. Small lifts are expensive: n grows as ``1 / mde^2``.

    Args:
        p_base: the control's rate, in (0, 1).
        mde: the minimum detectable effect, an absolute lift > 0 with ``p_base + mde < 1``.
        alpha: significance level in (0, 1).
        power: the wanted chance of detecting the lift, in (alpha, 1).

    Returns:
        The number of users in EACH arm (an int >= 1).
    """
    p_base = check_real(p_base, "p_base", low=0.0, high=1.0, low_open=True, high_open=True, error=OnlineError)
    mde = check_real(mde, "mde", low=0.0, low_open=True, error=OnlineError)
    if p_base + mde >= 1:
        raise OnlineError(f"p_base + mde must be < 1, got p_base={p_base!r} + mde={mde!r}")
    alpha = _alpha(alpha)
    power = check_real(power, "power", low=0.0, high=1.0, low_open=True, high_open=True, error=OnlineError)
    if power <= alpha:
        raise OnlineError(f"power must exceed alpha ({alpha}): any test rejects with probability alpha, got power={power!r}")
    h = 2 * math.asin(math.sqrt(p_base + mde)) - 2 * math.asin(math.sqrt(p_base))
    closed = 2 * ((stats.norm.isf(alpha / 2) + stats.norm.ppf(power)) / h) ** 2
    upper = closed * 1.01 + 1.0  # the far tail only adds power, so the root lies below the closed form
    n = optimize.brentq(lambda n: _two_sided_power(h, n, alpha) - power, 1e-12, upper, xtol=1e-12, rtol=1e-14)
    return max(1, math.ceil(n))


# ---- sample-ratio mismatch -------------------------------------------------------------------


def srm_test(counts: Sequence[int], ratios: Sequence[float]) -> float:
    """The sample-ratio-mismatch p-value: do the observed arm sizes fit the planned split?

    A chi-square goodness-of-fit test of ``counts`` against the expected
    ``sum(counts) * ratios / sum(ratios)``, with ``len(counts) - 1`` degrees of
    freedom (as ``scipy.stats.chisquare``). A tiny p-value (the usual alarm is
    p < 0.001) means assignment or logging lost users unevenly, e.g. a bot filter
    or a crash in one arm, and the experiment's results are biased.

    Args:
        counts: the users (or sessions) observed in each arm, non-negative integers, not all 0.
        ratios: the planned share of each arm, positive numbers (normalised; ``(1, 1)`` is 50/50).

    Returns:
        The p-value, in [0, 1].
    """
    for value, name in ((counts, "counts"), (ratios, "ratios")):
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise OnlineError(f"{name} must be a sequence with one entry per arm, got {value!r}")
    if len(counts) != len(ratios):
        raise OnlineError(f"counts and ratios must have the same length, got {len(counts)} and {len(ratios)}")
    if len(counts) < 2:
        raise OnlineError(f"counts must cover at least 2 arms, got {len(counts)}")
    observed = np.array([check_int(c, "counts: each count", low=0, error=OnlineError) for c in counts], dtype=float)
    shares = np.array([check_real(r, "ratios: each ratio", low=0.0, low_open=True, error=OnlineError) for r in ratios])
    if observed.sum() == 0:
        raise OnlineError("counts must not all be zero")
    expected = observed.sum() * shares / shares.sum()
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    return float(stats.chi2.sf(chi2, df=len(counts) - 1))


# ---- CTR per impression and per user ---------------------------------------------------------


@dataclass(frozen=True)
class VariantCTR:
    """One variant's clicks, counted per impression and per user.

    Attributes:
        impressions, clicks: totals over all impressions.
        users: distinct users.
        impression_ctr: ``clicks / impressions`` (every impression weighs the same;
            heavy users dominate it).
        user_ctrs: each user's own CTR, in order of first appearance.
        user_mean_ctr: the mean of ``user_ctrs`` (every user weighs the same).
        user_ctr_std: their sample standard deviation (ddof=1; 0 with one user).
    """

    impressions: int
    clicks: int
    users: int
    impression_ctr: float
    user_ctrs: np.ndarray
    user_mean_ctr: float
    user_ctr_std: float


def _clicked(value: object, row: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    raise OnlineError(f"rows[{row}]: clicked must be 0 or 1, got {value!r}")


def aggregate_ctr(rows: Iterable[tuple[Hashable, str, int]], variants: Sequence[str] = ("a", "b")) -> dict[str, VariantCTR]:
    """Aggregate per-impression rows into per-variant counts, per impression and per user.

    Args:
        rows: ``(user_id, variant, clicked)`` per impression; ``clicked`` is 0/1 (or a bool).
        variants: the variants the experiment has; a row with another variant is an error,
            and every variant must have at least one impression.

    Returns:
        ``{variant: VariantCTR}`` in the order of ``variants``.

    Raises:
        OnlineError: a malformed row, an unknown variant, a user seen in two variants
            (assignment is broken), or a variant with no impressions.
    """
    variants = tuple(variants)
    if len(variants) < 1 or len(set(variants)) != len(variants):
        raise OnlineError(f"variants must be distinct names, at least one, got {variants!r}")
    per_user: dict[str, dict[Hashable, list[int]]] = {v: {} for v in variants}  # user -> [impressions, clicks]
    variant_of: dict[Hashable, str] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, (tuple, list)) or len(row) != 3:
            raise OnlineError(f"rows[{i}] must be (user_id, variant, clicked), got {row!r}")
        user, variant, clicked = row
        if not isinstance(user, Hashable) or isinstance(user, (bool, float)) or user is None:
            raise OnlineError(f"rows[{i}]: user_id must be a string or integer id, got {user!r}")
        if not isinstance(variant, str) or variant not in per_user:
            raise OnlineError(f"rows[{i}]: unknown variant {variant!r}; the variants are {variants!r}")
        seen = variant_of.setdefault(user, variant)
        if seen != variant:
            raise OnlineError(f"rows[{i}]: user {user!r} appears in variants {seen!r} and {variant!r}; assignment must be per user")
        counts = per_user[variant].setdefault(user, [0, 0])
        counts[0] += 1
        counts[1] += _clicked(clicked, i)
    out = {}
    for variant, users in per_user.items():
        if not users:
            raise OnlineError(f"variant {variant!r} has no impressions in rows")
        table = np.array(list(users.values()), dtype=float)
        ctrs = table[:, 1] / table[:, 0]
        out[variant] = VariantCTR(
            impressions=int(table[:, 0].sum()),
            clicks=int(table[:, 1].sum()),
            users=len(users),
            impression_ctr=float(table[:, 1].sum() / table[:, 0].sum()),
            user_ctrs=ctrs,
            user_mean_ctr=float(ctrs.mean()),
            user_ctr_std=float(ctrs.std(ddof=1)) if len(ctrs) > 1 else 0.0,
        )
    return out


@dataclass(frozen=True)
class UserMeanTestResult:
    """Welch's t-test of B's per-user mean CTR against A's.

    Attributes:
        mean_a, mean_b: the per-user mean CTRs.
        diff: ``mean_b - mean_a``.
        t, df: Welch's t statistic and its Welch–Satterthwaite degrees of freedom.
        p_value: two-sided p-value.
        alpha, significant: the level and ``p_value < alpha``.
    """

    mean_a: float
    mean_b: float
    diff: float
    t: float
    df: float
    p_value: float
    alpha: float
    significant: bool


def _welch(mean_a, var_a, n_a, mean_b, var_b, n_b):
    """Welch's t, df and two-sided p (numpy, elementwise); t = 0, p = 1 where both variances are 0."""
    se2_a, se2_b = var_a / n_a, var_b / n_b
    se2 = se2_a + se2_b
    ok = se2 > 0
    safe = np.where(ok, se2, 1.0)
    t = np.where(ok, (mean_b - mean_a) / np.sqrt(safe), 0.0)
    denom = np.where(ok, se2_a**2 / (n_a - 1) + se2_b**2 / (n_b - 1), 1.0)
    df = np.where(ok, safe**2 / np.where(denom > 0, denom, 1.0), np.inf)
    p = np.where(ok, 2.0 * stats.t.sf(np.abs(t), df), 1.0)
    return t, df, p


@dataclass(frozen=True)
class CTRComparison:
    """Both readings of one A/B log: the naive per-impression test and the per-user one.

    Attributes:
        a, b: each variant's ``VariantCTR``.
        per_impression: the two-proportion z-test on impression counts (too optimistic when
            users differ: it treats correlated impressions as independent).
        per_user: Welch's t-test on per-user CTRs (the user is the unit of randomisation).
    """

    a: VariantCTR
    b: VariantCTR
    per_impression: TwoProportionResult
    per_user: UserMeanTestResult


def compare_ctr(rows: Iterable[tuple[Hashable, str, int]], control: str = "a", treatment: str = "b", alpha: float = 0.05) -> CTRComparison:
    """Compare two variants' CTR from per-impression rows, per impression and per user.

    Args:
        rows: ``(user_id, variant, clicked)`` per impression, variants ``control`` and ``treatment`` only.
        control, treatment: the two variant names (distinct).
        alpha: significance level in (0, 1).

    Returns:
        A ``CTRComparison``; read ``per_user``. Each variant needs at least 2 users.
    """
    alpha = _alpha(alpha)
    if not isinstance(control, str) or not isinstance(treatment, str) or control == treatment:
        raise OnlineError(f"control and treatment must be two distinct variant names, got {control!r} and {treatment!r}")
    agg = aggregate_ctr(rows, (control, treatment))
    a, b = agg[control], agg[treatment]
    for name, v in ((control, a), (treatment, b)):
        if v.users < 2:
            raise OnlineError(f"variant {name!r} needs at least 2 users for a per-user test, got {v.users}")
    per_impression = two_proportion_test(a.clicks, a.impressions, b.clicks, b.impressions, alpha)
    t, df, p = _welch(a.user_mean_ctr, a.user_ctr_std**2, a.users, b.user_mean_ctr, b.user_ctr_std**2, b.users)
    p = float(p)
    per_user = UserMeanTestResult(a.user_mean_ctr, b.user_mean_ctr, b.user_mean_ctr - a.user_mean_ctr, float(t), float(df), p, alpha, p < alpha)
    return CTRComparison(a, b, per_impression, per_user)


# ---- simulations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AATestResult:
    """False-positive rates of A/A tests (no true difference), by unit of analysis.

    Attributes:
        per_impression_fpr: share of tests the per-impression z-test called significant.
        per_user_fpr: share the per-user Welch t-test called significant (≈ alpha when valid).
        n_tests, alpha: how many A/A tests, at which level.
    """

    per_impression_fpr: float
    per_user_fpr: float
    n_tests: int
    alpha: float


def _user_ctrs(rng: np.random.Generator, shape: tuple[int, ...], base_ctr: float, rho: float) -> np.ndarray:
    """Each user's true CTR: Beta with mean ``base_ctr`` and intra-user correlation ``rho`` (constant if rho = 0)."""
    if rho == 0:
        return np.full(shape, base_ctr)
    concentration = (1.0 - rho) / rho  # a + b of the Beta; Var(p) = rho * base_ctr * (1 - base_ctr)
    return rng.beta(base_ctr * concentration, (1.0 - base_ctr) * concentration, size=shape)


def simulate_aa_tests(
    n_tests: int = 1000,
    users_per_arm: int = 200,
    impressions_per_user: int = 20,
    base_ctr: float = 0.1,
    user_heterogeneity: float = 0.1,
    alpha: float = 0.05,
    seed: int = 0,
) -> AATestResult:
    """Run many A/A tests and count how often each test cries "significant".

    Both arms draw users from the same population, so every rejection is a false
    positive and a valid test rejects about ``alpha`` of the time. Each user has a
    true CTR drawn from a Beta with mean ``base_ctr`` and variance
    ``user_heterogeneity * base_ctr * (1 - base_ctr)`` (``user_heterogeneity`` is the
    intra-user correlation of clicks, rho), then clicks on each of their impressions
    with that probability. The per-impression z-test's variance is too small by the
    design effect ``1 + (impressions_per_user - 1) * rho``, so its false-positive
    rate climbs well above alpha; the per-user test stays at alpha.

    Args:
        n_tests: how many A/A tests (>= 1).
        users_per_arm: users in each arm (>= 2).
        impressions_per_user: impressions per user (>= 1).
        base_ctr: the population's mean CTR, in (0, 1).
        user_heterogeneity: rho in [0, 1); 0 makes every user identical (then both tests are valid).
        alpha: significance level in (0, 1).
        seed: the random seed; the same seed gives the same rates.

    Returns:
        An ``AATestResult``.
    """
    n_tests = check_int(n_tests, "n_tests", low=1, error=OnlineError)
    users = check_int(users_per_arm, "users_per_arm", low=2, error=OnlineError)
    m = check_int(impressions_per_user, "impressions_per_user", low=1, error=OnlineError)
    base_ctr = check_real(base_ctr, "base_ctr", low=0.0, high=1.0, low_open=True, high_open=True, error=OnlineError)
    rho = check_real(user_heterogeneity, "user_heterogeneity", low=0.0, high=1.0, high_open=True, error=OnlineError)
    alpha = _alpha(alpha)
    rng = np.random.default_rng(check_seed(seed, error=OnlineError))
    p_true = _user_ctrs(rng, (n_tests, 2, users), base_ctr, rho)
    clicks = rng.binomial(m, p_true)  # (test, arm, user)
    totals = clicks.sum(axis=2)
    impressions = users * m
    z = _pooled_z(totals[:, 0], impressions, totals[:, 1], impressions)
    per_impression = _two_sided_p(z) < alpha
    ctrs = clicks / m
    means, variances = ctrs.mean(axis=2), ctrs.var(axis=2, ddof=1)
    _, _, p_user = _welch(means[:, 0], variances[:, 0], users, means[:, 1], variances[:, 1], users)
    return AATestResult(float(per_impression.mean()), float((p_user < alpha).mean()), n_tests, alpha)


@dataclass(frozen=True)
class PeekingResult:
    """False-positive rates of A/A tests read once at the end vs. peeked at every day.

    Attributes:
        fixed_horizon_fpr: share significant when tested once, after the last day (≈ alpha).
        peeking_fpr: share stopped as "significant" at the first daily p < alpha.
        stopped_by_day: ``stopped_by_day[d]`` is the share of tests stopped on or before
            day ``d + 1``; it only grows, and its last value is ``peeking_fpr``.
        n_tests, days, alpha: the simulation's size and level.
    """

    fixed_horizon_fpr: float
    peeking_fpr: float
    stopped_by_day: np.ndarray
    n_tests: int
    days: int
    alpha: float


def simulate_peeking(
    n_tests: int = 1000,
    days: int = 14,
    users_per_day_per_arm: int = 100,
    base_ctr: float = 0.1,
    alpha: float = 0.05,
    seed: int = 0,
) -> PeekingResult:
    """Show why "stop as soon as it is significant" is wrong: A/A tests peeked at daily.

    Each day each arm gets ``users_per_day_per_arm`` new users, who each click (at
    least once) with probability ``base_ctr``, the same in both arms. The
    fixed-horizon analyst runs one z-test on the cumulative counts after the last
    day; the peeker runs it every day and stops at the first p < alpha. Each peek is
    another chance for noise to cross the line, so the peeker's false-positive rate
    grows with the number of peeks, far above alpha (sequential tests or a fixed
    horizon chosen with ``sample_size`` fix it).

    Args:
        n_tests: how many A/A tests (>= 1).
        days: days in the experiment, one peek a day (>= 1).
        users_per_day_per_arm: new users per arm per day (>= 1).
        base_ctr: every user's click probability, in (0, 1).
        alpha: significance level in (0, 1).
        seed: the random seed; the same seed gives the same rates.

    Returns:
        A ``PeekingResult``.
    """
    n_tests = check_int(n_tests, "n_tests", low=1, error=OnlineError)
    days = check_int(days, "days", low=1, error=OnlineError)
    per_day = check_int(users_per_day_per_arm, "users_per_day_per_arm", low=1, error=OnlineError)
    base_ctr = check_real(base_ctr, "base_ctr", low=0.0, high=1.0, low_open=True, high_open=True, error=OnlineError)
    alpha = _alpha(alpha)
    rng = np.random.default_rng(check_seed(seed, error=OnlineError))
    clicks = rng.binomial(per_day, base_ctr, size=(n_tests, days, 2)).cumsum(axis=1)
    n = per_day * np.arange(1, days + 1)  # users per arm so far, by day
    significant = _two_sided_p(_pooled_z(clicks[:, :, 0], n, clicks[:, :, 1], n)) < alpha  # (test, day)
    stopped_by_day = np.logical_or.accumulate(significant, axis=1).mean(axis=0)
    return PeekingResult(float(significant[:, -1].mean()), float(stopped_by_day[-1]), stopped_by_day, n_tests, days, alpha)


__all__ = [
    "TwoProportionResult",
    "two_proportion_test",
    "sample_size",
    "srm_test",
    "VariantCTR",
    "aggregate_ctr",
    "UserMeanTestResult",
    "CTRComparison",
    "compare_ctr",
    "AATestResult",
    "simulate_aa_tests",
    "PeekingResult",
    "simulate_peeking",
]
