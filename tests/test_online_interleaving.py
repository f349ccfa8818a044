"""Team-draft interleaving: invariants on random rankings, hand-worked credit, the sign test, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from visual_search.errors import OnlineError
from visual_search.online.interleaving import (
    aggregate_interleaving,
    interleaving_credits,
    interleaving_winner,
    sign_test_p_value,
    team_draft_interleave,
)


def random_rankings(rng, n_items=30):
    a = rng.permutation(n_items)[: rng.integers(1, 16)]
    b = rng.permutation(n_items)[: rng.integers(1, 16)]
    return a, b


def test_invariants_on_random_rankings():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a, b = random_rankings(rng)
        k = None if rng.random() < 0.5 else int(rng.integers(1, 20))
        items, teams = team_draft_interleave(a, b, rng, k=k)
        union = set(a.tolist()) | set(b.tolist())
        assert len(items) == len(teams) == (len(union) if k is None else min(k, len(union)))
        assert len(set(items)) == len(items)  # each item once
        assert set(items) <= union
        used, exhausted_at = set(), None
        for i, (item, team) in enumerate(zip(items, teams)):
            # each team adds its highest-ranked item not yet on the page
            own = a if team == "a" else b
            assert item == next(x for x in own.tolist() if x not in used)
            used.add(item)
            prefix = teams[: i + 1]
            left_a = any(x not in used for x in a.tolist())
            left_b = any(x not in used for x in b.tolist())
            if exhausted_at is None:
                assert abs(prefix.count("a") - prefix.count("b")) <= 1, (a, b, teams)
                if not (left_a and left_b):
                    exhausted_at = i  # from here on the other ranking fills the page alone


def test_identical_rankings_split_credit_evenly_on_average():
    rng = np.random.default_rng(1)
    ranking = np.arange(10)
    share_a = []
    for _ in range(2000):
        items, teams = team_draft_interleave(ranking, ranking, rng)
        assert items == list(range(10))  # the same page whoever picks
        clicks = np.flatnonzero(rng.random(10) < 1 / np.arange(1, 11))  # position-biased clicks
        ca, cb = interleaving_credits(teams, clicks)
        if ca + cb:
            share_a.append(ca / (ca + cb))
    # mean of ~1,700 shares in [0, 1]: standard error < 0.5 / sqrt(1700) ~ 0.012; 4 sigma ~ 0.05
    assert abs(np.mean(share_a) - 0.5) < 0.05


def test_seeded_determinism():
    a, b = [5, 3, 8, 1, 9], [3, 7, 5, 2]
    first = team_draft_interleave(a, b, np.random.default_rng(42), k=6)
    assert team_draft_interleave(a, b, np.random.default_rng(42), k=6) == first
    pages = {tuple(team_draft_interleave(a, b, np.random.default_rng(s))[1]) for s in range(20)}
    assert len(pages) > 1  # the coin matters


def test_hand_worked_page():
    class Coins:  # a stand-in is refused: the rng must be a real Generator
        pass

    with pytest.raises(OnlineError, match="rng"):
        team_draft_interleave([1], [2], Coins())
    # find a seed whose first coin lets a pick first, and one where b does
    for seed in range(100):
        if np.random.default_rng(seed).random() < 0.5:
            a_first = seed
            break
    items, teams = team_draft_interleave([1, 2, 3], [2, 4, 1], np.random.default_rng(a_first), k=2)
    assert items == [1, 2] and teams == ["a", "b"]
    # a is exhausted after its three: b fills the rest alone
    items, teams = team_draft_interleave([1], [1, 2, 3], np.random.default_rng(a_first))
    assert items == [1, 2, 3] and teams == ["a", "b", "b"]


def test_credit_and_winner_by_hand():
    teams = ["a", "b", "b", "a", "b"]
    assert interleaving_credits(teams, [0, 3]) == (2, 0)
    assert interleaving_winner(teams, [0, 3]) == "a"
    assert interleaving_winner(teams, [1, 2, 3]) == "b"
    assert interleaving_winner(teams, [0, 1]) == "tie"
    assert interleaving_winner(teams, []) == "tie"
    assert interleaving_winner(teams, np.array([4])) == "b"


def test_aggregate_and_sign_test():
    s = aggregate_interleaving(["a"] * 7 + ["b"] * 2 + ["tie"] * 3)
    assert (s.wins_a, s.wins_b, s.ties, s.n) == (7, 2, 3, 12)
    assert s.delta == pytest.approx((7 + 1.5) / 12 - 0.5)
    assert s.p_value == pytest.approx(stats.binomtest(7, 9, 0.5).pvalue)
    for wa, wb in [(0, 0), (5, 5), (10, 0), (3, 30), (260, 240)]:
        expected = 1.0 if wa + wb == 0 else stats.binomtest(wa, wa + wb, 0.5).pvalue
        assert sign_test_p_value(wa, wb) == pytest.approx(expected)
    empty = aggregate_interleaving([])
    assert (empty.n, empty.delta, empty.p_value) == (0, 0.0, 1.0)


@pytest.mark.parametrize("a, b", [([1, 2, 1], [3]), ([1], [2, 2]), ([[1, 2]], [3]), ("abc", [1]), ({1, 2}, [1])])
def test_bad_rankings(a, b):
    with pytest.raises(OnlineError):
        team_draft_interleave(a, b, np.random.default_rng(0))


def test_bad_k_clicks_teams_outcomes():
    rng = np.random.default_rng(0)
    for k in (0, -1, 2.0, True):
        with pytest.raises(OnlineError, match="k"):
            team_draft_interleave([1], [2], rng, k=k)
    teams = ["a", "b", "a"]
    for clicks in ([3], [-1], [0, 0], [1.0]):
        with pytest.raises(OnlineError):
            interleaving_winner(teams, clicks)
    for bad in (["a", "c"], ["A"], "ab", [1, "a"]):
        with pytest.raises(OnlineError, match="teams"):
            interleaving_winner(bad, [])
    with pytest.raises(OnlineError, match="outcomes"):
        aggregate_interleaving(["a", "draw"])
    with pytest.raises(OnlineError):
        sign_test_p_value(-1, 2)
