"""How many queries an A/B test and an interleaving experiment need, from outcomes the service logged.

Both experiments compare the same two rankers on the same simulated users; they
differ in the unit they measure:

* **A/B** splits the users, so each query sees one ranker. Two metrics: the share of
  queries with a click (``click_rate``), with the pooled two-proportion z-test
  (``ab.two_proportion_test``), and each query's CTR (clicked results / results
  shown), a per-query mean, with the two-sample test (``ab_mean_*``). Either way its
  noise is the whole spread of user and query behaviour.
* **Interleaving** shows every query both rankers at once, so each query is its own
  control: the outcome is which team got more clicks (``"a"``, ``"b"`` or ``"tie"``),
  tested with the two-sided sign test over the non-tied queries.

Two ways to get queries-to-power, reported side by side:

* analytic (``ab_queries_for_power``, ``interleaving_queries_for_power``), the usual
  normal approximations, from the rates measured in the log;
* simulated (``ab_power_curve``, ``interleaving_power_curve``): at each n, run the
  real test on ``n_sims`` experiments of n queries resampled from the logged outcomes
  and count the rejections. Resampling binary (or three-way) outcomes with
  replacement is exactly a binomial (multinomial) draw with the logged rates, which
  is what the code draws, so n can be far larger than the log itself.

``queries_to_power`` reads the first n of a curve at which the power reaches the target.

Errors: ``visual_search.errors.OnlineError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from visual_search._checks import check_int, check_real, check_seed
from visual_search.errors import OnlineError
from visual_search.online.ab import _pooled_z, _two_sided_p, sample_size


def _rate(p: object, name: str, open_ends: bool = True) -> float:
    return check_real(p, name, low=0.0, high=1.0, low_open=open_ends, high_open=open_ends, error=OnlineError)


def _levels(alpha: float, power: float) -> tuple[float, float]:
    return (check_real(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True, error=OnlineError),
            check_real(power, "power", low=0.0, high=1.0, low_open=True, high_open=True, error=OnlineError))


def _grid(ns: Sequence[int]) -> np.ndarray:
    grid = np.asarray(ns)
    if grid.ndim != 1 or not len(grid) or grid.dtype.kind not in "iu" or grid.min() < 2:
        raise OnlineError(f"ns: expected a 1-D array of integer query counts >= 2, got {grid!r}")
    return grid.astype(np.int64)


def ab_queries_for_power(p_a: float, p_b: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Queries per arm for the z-test to detect ``p_b - p_a`` (``ab.sample_size``, Cohen's h); total = twice this.

    Raises:
        OnlineError: rates outside (0, 1), equal rates (no difference to detect), bad alpha or power.
    """
    p_a, p_b = _rate(p_a, "p_a"), _rate(p_b, "p_b")
    alpha, power = _levels(alpha, power)
    if p_a == p_b:
        raise OnlineError(f"p_a == p_b == {p_a}: no difference to detect, at any sample size")
    low, high = sorted((p_a, p_b))  # Cohen's h is symmetric: the same n detects a rise or a fall
    return sample_size(low, high - low, alpha=alpha, power=power)


def _mean_args(mean_a: float, var_a: float, mean_b: float, var_b: float) -> tuple[float, float]:
    for value, name in ((mean_a, "mean_a"), (mean_b, "mean_b")):
        check_real(value, name, error=OnlineError)
    for value, name in ((var_a, "var_a"), (var_b, "var_b")):
        check_real(value, name, low=0.0, error=OnlineError)
    if var_a + var_b <= 0:
        raise OnlineError("var_a + var_b must be > 0: without noise any difference is detected by one query")
    if mean_a == mean_b:
        raise OnlineError(f"mean_a == mean_b == {mean_a}: no difference to detect, at any sample size")
    return abs(float(mean_b) - float(mean_a)), float(var_a) + float(var_b)


def ab_mean_queries_for_power(mean_a: float, var_a: float, mean_b: float, var_b: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Units per arm for a two-sample (Welch) test of a mean metric, such as each query's CTR (clicked
    results / results shown) or each user's mean CTR over their searches:
    ``(z_{1-alpha/2} + z_power)**2 (var_a + var_b) / (mean_b - mean_a)**2``, where the means and
    variances are over the unit (query or user).

    Raises:
        OnlineError: equal means, zero total variance, negative variances, bad alpha or power.
    """
    diff, var = _mean_args(mean_a, var_a, mean_b, var_b)
    alpha, power = _levels(alpha, power)
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return int(np.ceil(z**2 * var / diff**2))


def ab_mean_power_curve(mean_a: float, var_a: float, mean_b: float, var_b: float, ns: Sequence[int], alpha: float = 0.05,
                        queries_per_unit: int = 1) -> PowerCurve:
    """Normal-approximation power of the two-sample test of a per-unit mean, at each total query count n of ``ns``
    (``n_sims`` is 0: computed, not simulated).

    The unit is what the means and variances are over: a query (``queries_per_unit=1``), or a
    user who searches ``queries_per_unit`` times, whose per-user mean is the metric; either way
    ``n // queries_per_unit // 2`` units go to each arm.

    Raises:
        OnlineError: as ``ab_mean_queries_for_power``, or a bad grid or ``queries_per_unit``.
    """
    diff, var = _mean_args(mean_a, var_a, mean_b, var_b)
    alpha, _ = _levels(alpha, 0.5)
    per_unit = check_int(queries_per_unit, "queries_per_unit", low=1, error=OnlineError)
    grid = _grid(ns)
    units = np.maximum(grid // per_unit // 2, 1)
    shift = diff / np.sqrt(var / units)
    z = stats.norm.ppf(1 - alpha / 2)
    return PowerCurve(grid, stats.norm.sf(z - shift) + stats.norm.cdf(-z - shift), 0, alpha)


def interleaving_queries_for_power(wins_a: int, wins_b: int, ties: int, alpha: float = 0.05, power: float = 0.8) -> int:
    """Interleaved queries for the sign test to detect the measured preference, normal approximation.

    With ``p`` the share of non-tied queries that ``b`` wins, the sign test needs
    ``m = ((z_{1-alpha/2} / 2 + z_power * sqrt(p (1 - p))) / (p - 1/2))**2`` non-tied
    queries, and ties are a share ``t`` of all queries, so ``m / (1 - t)`` queries in all.

    Raises:
        OnlineError: negative counts, no non-tied query, an exact 50/50 split, bad alpha or power.
    """
    counts = [check_int(c, name, low=0, error=OnlineError) for c, name in ((wins_a, "wins_a"), (wins_b, "wins_b"), (ties, "ties"))]
    alpha, power = _levels(alpha, power)
    decided = counts[0] + counts[1]
    if decided == 0:
        raise OnlineError("no query had a winner (all ties): interleaving has nothing to count")
    p = counts[1] / decided
    if p == 0.5:
        raise OnlineError(f"wins_a == wins_b == {counts[0]}: no preference to detect, at any sample size")
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    m = ((za * 0.5 + zb * np.sqrt(p * (1 - p))) / (p - 0.5)) ** 2
    tie_share = counts[2] / sum(counts)
    return int(np.ceil(m / (1 - tie_share)))


@dataclass(frozen=True)
class PowerCurve:
    """Simulated power at each total query count ``ns`` (A/B: both arms together), from ``n_sims`` experiments each."""

    ns: np.ndarray
    power: np.ndarray
    n_sims: int
    alpha: float


def ab_power_curve(p_a: float, p_b: float, ns: Sequence[int], n_sims: int = 2000, alpha: float = 0.05, seed: int = 0) -> PowerCurve:
    """Power of the pooled z-test on click rate with ``n // 2`` queries per arm, at each total n of ``ns``.

    ``p_a`` and ``p_b`` are the arms' logged click rates (queries with a click / queries).

    Raises:
        OnlineError: bad rates, grid, n_sims, alpha or seed.
    """
    p_a, p_b = _rate(p_a, "p_a", False), _rate(p_b, "p_b", False)
    grid = _grid(ns)
    n_sims = check_int(n_sims, "n_sims", low=1, high=1_000_000, error=OnlineError)
    alpha, _ = _levels(alpha, 0.5)
    rng = np.random.default_rng(check_seed(seed, error=OnlineError))
    per_arm = grid // 2
    clicks_a = rng.binomial(per_arm[:, None], p_a, size=(len(grid), n_sims))
    clicks_b = rng.binomial(per_arm[:, None], p_b, size=(len(grid), n_sims))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = _two_sided_p(_pooled_z(clicks_a, per_arm[:, None], clicks_b, per_arm[:, None]))
    return PowerCurve(grid, np.nan_to_num(p < alpha, nan=0.0).mean(axis=1), n_sims, alpha)


def interleaving_power_curve(wins_a: int, wins_b: int, ties: int, ns: Sequence[int], n_sims: int = 2000,
                             alpha: float = 0.05, seed: int = 0) -> PowerCurve:
    """Power of the two-sided exact sign test on n interleaved queries drawn with the logged outcome shares.

    Raises:
        OnlineError: negative or all-zero counts, a bad grid, n_sims, alpha or seed.
    """
    counts = np.array([check_int(c, name, low=0, error=OnlineError) for c, name in ((wins_a, "wins_a"), (wins_b, "wins_b"), (ties, "ties"))])
    if counts.sum() == 0:
        raise OnlineError("wins_a, wins_b, ties: no outcomes to resample")
    grid = _grid(ns)
    n_sims = check_int(n_sims, "n_sims", low=1, high=1_000_000, error=OnlineError)
    alpha, _ = _levels(alpha, 0.5)
    rng = np.random.default_rng(check_seed(seed, error=OnlineError))
    shares = counts / counts.sum()
    power = np.empty(len(grid))
    for i, n in enumerate(grid):
        draws = rng.multinomial(int(n), shares, size=n_sims)  # (sim, [a, b, tie])
        decided = draws[:, 0] + draws[:, 1]
        low = np.minimum(draws[:, 0], draws[:, 1])
        p = np.where(decided > 0, np.minimum(1.0, 2 * stats.binom.cdf(low, np.maximum(decided, 1), 0.5)), 1.0)
        power[i] = float((p < alpha).mean())
    return PowerCurve(grid, power, n_sims, alpha)


def queries_to_power(curve: PowerCurve, target: float = 0.8) -> int | None:
    """The first n of the curve whose simulated power reaches ``target`` (None: the grid never does)."""
    target = _rate(target, "target")
    reached = np.flatnonzero(curve.power >= target)
    return int(curve.ns[reached[0]]) if len(reached) else None


__all__ = [
    "PowerCurve",
    "ab_mean_power_curve",
    "ab_mean_queries_for_power",
    "ab_power_curve",
    "ab_queries_for_power",
    "interleaving_power_curve",
    "interleaving_queries_for_power",
    "queries_to_power",
]
