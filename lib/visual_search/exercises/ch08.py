"""Checks for chapter 08, online metrics: sizing and testing an A/B test, the sample-ratio check,
team-draft interleaving and its credit, and an inverse-propensity-weighted CTR.

Every expected value comes from ``visual_search.online`` (``sample_size``, ``two_proportion_test``,
``srm_test``, ``team_draft_interleave``, ``interleaving_winner``, ``ips_weights``) on small random
inputs; no service, log or data set is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from visual_search.exercises._core import Mismatch, _short, call, checker, expect_close, expect_equal, expect_pair
from visual_search.online import interleaving_winner, ips_weights, sample_size, srm_test, team_draft_interleave, two_proportion_test


@checker
def sample_size_per_arm(answer: Callable[[float, float, float, float], int], rng: np.random.Generator) -> int:
    """``answer(p_base, mde, alpha, power)`` -> users per arm: ``online.sample_size`` or up to two users more."""
    n = 10
    for i in range(n):
        p_base = round(float(rng.uniform(0.02, 0.6)), 3)
        mde = round(float(rng.uniform(0.005, 0.08)), 3)
        alpha, power = float(rng.choice([0.05, 0.01, 0.1])), float(rng.choice([0.8, 0.9]))
        case = f"case {i + 1} (p_base={p_base}, mde={mde}, alpha={alpha}, power={power})"
        want = sample_size(p_base, mde, alpha=alpha, power=power)
        got = call(answer, p_base, mde, alpha, power, case=case)
        hint = ("h = 2 asin(sqrt(p_base + mde)) - 2 asin(sqrt(p_base)); n = 2 ((z_{1-alpha/2} + z_power) / h)**2 with "
                "scipy.stats.norm.ppf for the quantiles, rounded UP (the closed form ignores the far rejection tail, so it may land a "
                "user or two above the library's exact solution; that passes)")
        expect_close(got, want, case, hint, rtol=1e-4, atol=2.0)
        if float(got) != int(got):
            raise Mismatch(f"{case}: expected a whole number of users such as {want}, got {_short(got)}. Hint: round up with math.ceil")
        if int(got) < want:
            raise Mismatch(f"{case}: expected at least {want} users, got {int(got)}. Hint: round UP (math.ceil): "
                           "a test one user short of its size is underpowered")
    return n


@checker
def z_test(answer: Callable[[int, int, int, int], tuple], rng: np.random.Generator) -> int:
    """``answer(clicks_a, n_a, clicks_b, n_b)`` -> (z, two-sided p) of the pooled two-proportion z-test."""
    n = 10
    for i in range(n):
        n_a, n_b = int(rng.integers(50, 5000)), int(rng.integers(50, 5000))
        p = float(rng.uniform(0.05, 0.6))
        lift = float(rng.choice([0.0, 0.02, -0.03, 0.06]))
        clicks_a, clicks_b = int(rng.binomial(n_a, p)), int(rng.binomial(n_b, min(max(p + lift, 0.01), 0.99)))
        case = f"case {i + 1} (clicks_a={clicks_a}, n_a={n_a}, clicks_b={clicks_b}, n_b={n_b})"
        want = two_proportion_test(clicks_a, n_a, clicks_b, n_b)
        got = call(answer, clicks_a, n_a, clicks_b, n_b, case=case)
        expect_pair(got, case, "(z, p_value)")
        expect_close(got[0], want.z, case + ", z",
                     "z = (p_b - p_a) / sqrt(p (1 - p) (1/n_a + 1/n_b)) with the POOLED rate p = (clicks_a + clicks_b) / (n_a + n_b); "
                     "B minus A, so a lower B gives a negative z")
        expect_close(got[1], want.p_value, case + ", p_value", "two-sided: p = 2 * scipy.stats.norm.sf(abs(z))")
    return n


@checker
def srm_p_value(answer: Callable[[list, list], float], rng: np.random.Generator) -> int:
    """``answer(counts, ratios)`` -> the chi-square goodness-of-fit p-value of the arm sizes against the planned split."""
    n = 10
    for i in range(n):
        arms = int(rng.integers(2, 5))
        ratios = [1.0] * arms if i % 2 == 0 else [float(r) for r in rng.choice([1.0, 2.0, 0.5, 3.0], size=arms)]
        planned = np.asarray(ratios) / sum(ratios)
        drift = rng.uniform(-0.03, 0.03, size=arms) if i % 3 == 0 else np.zeros(arms)  # a broken split, sometimes
        shares = np.clip(planned + drift, 0.01, None)
        counts = [int(c) for c in rng.multinomial(int(rng.integers(200, 20_000)), shares / shares.sum())]
        case = f"case {i + 1} (counts={counts}, ratios={ratios})"
        got = call(answer, list(counts), list(ratios), case=case)
        expect_close(got, srm_test(counts, ratios), case,
                     "expected count of arm i = total x ratios[i] / sum(ratios); chi2 = sum (observed - expected)**2 / expected; "
                     "p = scipy.stats.chi2.sf(chi2, df=number of arms - 1)")
    return n


def _rankings(rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Two rankings of 2..8 distinct ids from 0..11 that usually overlap."""
    a = [int(x) for x in rng.choice(12, size=int(rng.integers(2, 9)), replace=False)]
    b = [int(x) for x in rng.choice(12, size=int(rng.integers(2, 9)), replace=False)]
    return a, b


@checker
def team_draft(answer: Callable[[list, list, list, int], tuple], rng: np.random.Generator) -> int:
    """``answer(ranking_a, ranking_b, a_first, k)`` -> (items, teams), as ``team_draft_interleave`` with those coins."""
    n = 10
    for i in range(n):
        a, b = _rankings(rng)
        union = len(set(a) | set(b))
        k = int(rng.integers(1, union + 3))
        seed = int(rng.integers(0, 2**31))
        a_first = [bool(x) for x in np.random.default_rng(seed).random(k) < 0.5]  # the library's coin, round by round
        want_items, want_teams = team_draft_interleave(a, b, np.random.default_rng(seed), k=k)
        case = f"case {i + 1} (ranking_a={a}, ranking_b={b}, a_first={[int(x) for x in a_first]}, k={k})"
        got = call(answer, list(a), list(b), list(a_first), k, case=case)
        expect_pair(got, case, "(items, teams)")
        hint = ("round r: if a_first[r], team a picks then b, else b then a; each pick is the team's highest-ranked id not yet on "
                "the page; a team with nothing left lets the other team pick instead; stop at min(k, size of the union) items")
        expect_equal([int(x) for x in got[0]] if isinstance(got[0], list | tuple) else got[0], want_items, case + ", the items", hint)
        expect_equal(list(got[1]) if isinstance(got[1], list | tuple) else got[1], want_teams, case + ", the teams",
                     "teams[i] is 'a' or 'b', the team that put items[i] on the page")
    return n


@checker
def winner(answer: Callable[[list, list], str], rng: np.random.Generator) -> int:
    """``answer(teams, clicked_positions)`` -> 'a', 'b' or 'tie', as ``interleaving_winner``."""
    n = 12
    for i in range(n):
        k = int(rng.integers(3, 11))
        teams = [str(t) for t in rng.choice(["a", "b"], size=k)]
        clicks = sorted(int(p) for p in rng.choice(k, size=int(rng.integers(0, min(k, 4) + 1)), replace=False))
        case = f"case {i + 1} (teams={''.join(teams)}, clicked positions {clicks})"
        got = call(answer, list(teams), list(clicks), case=case)
        expect_equal(got, interleaving_winner(teams, clicks), case,
                     "positions are 0-based (teams[p] is the team of the click at position p); the team with more clicks wins; "
                     "equal counts, and no clicks at all, are 'tie'")
    return n


def _theta(rng: np.random.Generator, k: int = 10) -> np.ndarray:
    if rng.random() < 0.5:
        return 1.0 / np.arange(1, k + 1) ** float(rng.uniform(0.5, 1.5))
    return np.sort(rng.uniform(0.05, 1.0, size=k))[::-1]  # any decreasing curve in (0, 1]


@checker
def ips_ctr(answer: Callable[[np.ndarray, np.ndarray, int, float], float], rng: np.random.Generator) -> int:
    """``answer(click_ranks, theta, n_shown, max_weight)`` -> sum of min(1 / theta_rank, max_weight) over clicks, / n_shown."""
    n = 10
    for i in range(n):
        theta = np.round(_theta(rng), 4)
        n_clicks = 0 if i == n - 1 else int(rng.integers(1, 30))
        click_ranks = rng.choice(np.arange(1, 11), size=n_clicks, p=theta / theta.sum())
        n_shown = int(n_clicks * rng.integers(3, 20)) or 10
        max_weight = float(rng.choice([10.0, 3.0, np.inf]))
        case = f"case {i + 1} (click_ranks={click_ranks.tolist()}, theta={theta.tolist()}, n_shown={n_shown}, max_weight={max_weight:g})"
        want = float(ips_weights(click_ranks, theta, max_weight=max_weight).sum() / n_shown)
        got = call(answer, click_ranks.copy(), theta.copy(), n_shown, max_weight, case=case)
        expect_close(got, want, case,
                     "ranks are 1-based, so the click at rank r has propensity theta[r - 1]; weight each click min(1 / theta[r - 1], "
                     "max_weight), sum the weights and divide by n_shown (no clicks: 0.0)")
    return n
