"""Team-draft interleaving: compare two rankers on the same query, with one result page.

An A/B test splits users and compares two pages; interleaving shows each user ONE
page that mixes both rankings, and asks which ranking's results they clicked. Every
query compares both systems under the same user and intent, so it needs far fewer
queries than an A/B test to tell two rankers apart (Chapelle et al. 2012).

Team draft (Radlinski, Kurup and Joachims 2008) builds the page like captains picking
teams: in each round a fair coin decides which team picks first, then each team, in
that order, adds its highest-ranked item not already on the page. ``teams[i]`` records
who contributed ``items[i]``. While both rankings still have unused items, the two
teams' counts differ by at most one at every prefix of the page, so neither ranking is
favoured by position. Once one ranking has nothing left to add, the other fills the
rest of the page alone.

Credit: each click counts for the team of the clicked position; the team with more
credits wins the query, equal credits (including no clicks) is a tie. Over many
queries, ``aggregate_interleaving`` counts wins and ties and ``sign_test_p_value``
tests "a and b are equally good" with an exact two-sided binomial (sign) test on the
wins, ties left out.

Positions are 0-based here (``items[0]`` is the top); the service's ranks are 1-based.

Errors: ``visual_search.errors.OnlineError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from visual_search._checks import check_int
from visual_search.errors import OnlineError

TEAMS = ("a", "b")
OUTCOMES = ("a", "b", "tie")


def _ranking(ranking: object, name: str) -> list:
    """``ranking`` as a list of distinct hashable items, or OnlineError naming it."""
    if isinstance(ranking, (str, bytes, set, frozenset, dict)):
        raise OnlineError(f"{name}: expected an ordered 1-D sequence of item ids, got {type(ranking).__name__}")
    try:
        arr = np.asarray(ranking)
    except (TypeError, ValueError) as err:
        raise OnlineError(f"{name}: expected a 1-D sequence of item ids ({err})") from None
    if arr.ndim != 1:
        raise OnlineError(f"{name}: expected a 1-D sequence of item ids, got shape {list(arr.shape)}")
    items = arr.tolist()
    try:
        distinct = len(set(items))
    except TypeError as err:
        raise OnlineError(f"{name}: item ids must be hashable ({err})") from None
    if distinct != len(items):
        seen, dup = set(), None
        for item in items:
            if item in seen:
                dup = item
                break
            seen.add(item)
        raise OnlineError(f"{name}: item {dup!r} appears more than once; a ranking lists each item once")
    return items


def _generator(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise OnlineError(f"rng: expected a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def team_draft_interleave(ranking_a: Sequence, ranking_b: Sequence, rng: np.random.Generator, k: int | None = None) -> tuple[list, list[str]]:
    """Interleave two rankings by team draft.

    Args:
        ranking_a, ranking_b: item ids, best first (1-D, each item at most once; the two may share items).
        rng: a numpy Generator; it draws one fair coin per round.
        k: the page length (default: the size of the union of the two rankings); the page is
            shorter when the union is smaller.

    Returns:
        ``(items, teams)``: the page, top first, and for each position the team, ``"a"`` or
        ``"b"``, that put the item there.

    Raises:
        OnlineError: a ranking that is not 1-D or repeats an item, a bad ``k`` or ``rng``.
    """
    a = _ranking(ranking_a, "ranking_a")
    b = _ranking(ranking_b, "ranking_b")
    rng = _generator(rng)
    union = len(set(a) | set(b))
    k = check_int(k, "k", low=1, error=OnlineError, allow_none=True)
    limit = union if k is None else min(k, union)
    items: list = []
    teams: list[str] = []
    used: set = set()
    cursor = {"a": 0, "b": 0}
    source = {"a": a, "b": b}

    def next_of(team: str):
        ranking, i = source[team], cursor[team]
        while i < len(ranking) and ranking[i] in used:
            i += 1
        cursor[team] = i
        return ranking[i] if i < len(ranking) else None

    while len(items) < limit:
        order = ("a", "b") if rng.random() < 0.5 else ("b", "a")
        for team in order:
            if len(items) >= limit:
                break
            item = next_of(team)
            if item is None:
                other = "b" if team == "a" else "a"
                item = next_of(other)
                if item is None:
                    break
                team = other
            items.append(item)
            teams.append(team)
            used.add(item)
    return items, teams


def _teams(teams: object) -> list[str]:
    if isinstance(teams, (str, bytes)):
        raise OnlineError(f"teams: expected a sequence of 'a'/'b' labels, got the string {teams!r}")
    labels = list(teams)
    bad = [t for t in labels if not isinstance(t, str) or t not in TEAMS]
    if bad:
        raise OnlineError(f"teams: every label must be 'a' or 'b', got {bad[0]!r}")
    return labels


def interleaving_credits(teams: Sequence[str], clicked_positions: Iterable[int]) -> tuple[int, int]:
    """``(credits of a, credits of b)``: each click counts for the team of its (0-based) position.

    Raises:
        OnlineError: labels other than 'a'/'b', a position off the page, not an integer, or clicked twice.
    """
    labels = _teams(teams)
    positions = [check_int(p, "clicked position", low=0, high=len(labels) - 1, error=OnlineError) for p in clicked_positions]
    if len(set(positions)) != len(positions):
        raise OnlineError(f"clicked_positions: a position appears more than once, got {sorted(positions)}")
    credit_a = sum(labels[p] == "a" for p in positions)
    return credit_a, len(positions) - credit_a


def interleaving_winner(teams: Sequence[str], clicked_positions: Iterable[int]) -> str:
    """``"a"``, ``"b"`` or ``"tie"``: the team with more credited clicks (no clicks: a tie)."""
    credit_a, credit_b = interleaving_credits(teams, clicked_positions)
    return "a" if credit_a > credit_b else "b" if credit_b > credit_a else "tie"


def sign_test_p_value(wins_a: int, wins_b: int) -> float:
    """Two-sided exact binomial (sign) test of "a and b win equally often", ties left out.

    ``p = min(1, 2 * P(X <= min(wins_a, wins_b)))`` with ``X ~ Binomial(wins_a + wins_b, 1/2)``;
    1.0 when there are no wins at all (nothing to tell them apart).
    """
    wins_a = check_int(wins_a, "wins_a", low=0, error=OnlineError)
    wins_b = check_int(wins_b, "wins_b", low=0, error=OnlineError)
    n = wins_a + wins_b
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(wins_a, wins_b), n, 0.5)))


@dataclass(frozen=True)
class InterleavingSummary:
    """Outcomes of many interleaved queries.

    Attributes:
        wins_a, wins_b, ties: counts of queries.
        delta: ``(wins_a + ties / 2) / n - 1/2`` (Chapelle et al.'s preference, in [-1/2, 1/2];
            > 0 favours a), 0.0 for no queries.
        p_value: ``sign_test_p_value(wins_a, wins_b)``.
    """

    wins_a: int
    wins_b: int
    ties: int
    delta: float
    p_value: float

    @property
    def n(self) -> int:
        return self.wins_a + self.wins_b + self.ties


def aggregate_interleaving(outcomes: Iterable[str]) -> InterleavingSummary:
    """Count ``interleaving_winner`` outcomes over queries; see ``InterleavingSummary``.

    Raises:
        OnlineError: an outcome other than 'a', 'b', 'tie'.
    """
    if isinstance(outcomes, (str, bytes)):
        raise OnlineError(f"outcomes: expected a sequence of 'a'/'b'/'tie', got the string {outcomes!r}")
    counts = {o: 0 for o in OUTCOMES}
    for o in outcomes:
        if not isinstance(o, str) or o not in counts:
            raise OnlineError(f"outcomes: each must be one of {OUTCOMES}, got {o!r}")
        counts[o] += 1
    n = sum(counts.values())
    delta = 0.0 if n == 0 else (counts["a"] + counts["tie"] / 2) / n - 0.5
    return InterleavingSummary(counts["a"], counts["b"], counts["tie"], delta, sign_test_p_value(counts["a"], counts["b"]))


__all__ = [
    "InterleavingSummary",
    "aggregate_interleaving",
    "interleaving_credits",
    "interleaving_winner",
    "sign_test_p_value",
    "team_draft_interleave",
]
