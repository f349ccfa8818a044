"""Solutions to chapter 08's checked exercises (notebooks/08_online_metrics_ab_testing.ipynb).

Each function has the name and signature of the notebook's stub; ``tests/test_exercises.py``
feeds it to ``check.ch08.<name>``. Try the exercise before reading on.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def sample_size_per_arm(p_base, mde, alpha=0.05, power=0.8):
    """The closed form n = 2 ((z_{1-alpha/2} + z_power) / h)^2 with Cohen's h, rounded up."""
    h = 2 * math.asin(math.sqrt(p_base + mde)) - 2 * math.asin(math.sqrt(p_base))
    n = 2 * ((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) / h) ** 2
    return max(1, math.ceil(n))


def z_test(clicks_a, n_a, clicks_b, n_b):
    """Pooled two-proportion z statistic of p_b - p_a, and its two-sided p-value."""
    p_a, p_b = clicks_a / n_a, clicks_b / n_b
    pooled = (clicks_a + clicks_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = (p_b - p_a) / se if se > 0 else 0.0
    return z, float(2 * stats.norm.sf(abs(z)))


def srm_p_value(counts, ratios):
    """Chi-square goodness of fit of the observed arm sizes to the planned shares."""
    observed = np.asarray(counts, dtype=float)
    expected = observed.sum() * np.asarray(ratios, dtype=float) / np.sum(ratios)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    return float(stats.chi2.sf(chi2, df=len(counts) - 1))


def team_draft(ranking_a, ranking_b, a_first, k):
    """Team draft with the coins given: each round both teams pick their best unused item, in the coin's order."""
    limit = min(k, len(set(ranking_a) | set(ranking_b)))
    source = {"a": list(ranking_a), "b": list(ranking_b)}
    items, teams, used = [], [], set()

    def best_unused(team):
        return next((x for x in source[team] if x not in used), None)

    for first in a_first:
        if len(items) >= limit:
            break
        for team in ("a", "b") if first else ("b", "a"):
            if len(items) >= limit:
                break
            item = best_unused(team)
            if item is None:  # this team has nothing left: the other one picks instead
                team = "b" if team == "a" else "a"
                item = best_unused(team)
            items.append(item)
            teams.append(team)
            used.add(item)
    return items, teams


def winner(teams, clicked_positions):
    """Each click credits the team of its (0-based) position; more credits wins, equal is a tie."""
    credit_a = sum(teams[p] == "a" for p in clicked_positions)
    credit_b = len(clicked_positions) - credit_a
    return "a" if credit_a > credit_b else "b" if credit_b > credit_a else "tie"


def ips_ctr(click_ranks, theta, n_shown, max_weight=10.0):
    """Clicks weighted by min(1 / theta_rank, max_weight), summed, per result shown."""
    theta = np.asarray(theta, dtype=float)
    ranks = np.asarray(click_ranks, dtype=int)
    return float(np.minimum(1.0 / theta[ranks - 1], max_weight).sum() / n_shown)
