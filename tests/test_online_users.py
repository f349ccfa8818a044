"""Simulated users: the click models match their own formulas, seeded, and relevance follows the label rule.

Tolerances: an empirical click rate over n impressions is checked against its true
probability p within 4 binomial standard deviations, 4 * sqrt(p (1 - p) / n), plus
1e-9 for p in {0, 1}. With about 60 such checks, a false failure has probability
below 60 * 6.3e-5 ~ 0.4%, and the seeds are fixed, so a run either passes or fails every time.
"""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.data import CLASS_NAMES
from visual_search.errors import OnlineError
from visual_search.online.users import (
    ATTRACTIVENESS,
    CascadeModel,
    PositionBasedModel,
    grades_from_labels,
    relevance_grades,
    simulate_click_matrix,
    simulate_clicks,
)

N = 40_000
GRADES = np.array([5, 0, 3, 1, 2, 4, 0, 3, 5, 1])  # a fixed page, top first


def within_4_sigma(rates, probs, n):
    sigma = np.sqrt(probs * (1 - probs) / n)
    assert (np.abs(rates - probs) <= 4 * sigma + 1e-9).all(), (rates, probs)


@pytest.mark.parametrize("eta", [0.0, 1.0, 2.0])
def test_pbm_click_rate_per_rank_is_examination_times_attractiveness(eta):
    model = PositionBasedModel(eta=eta)
    clicks = simulate_click_matrix(model, np.tile(GRADES, (N, 1)), np.random.default_rng(1))
    truth = model.examination_curve(10) * np.asarray(ATTRACTIVENESS)[GRADES]
    np.testing.assert_allclose(truth, 1 / np.arange(1, 11) ** eta * np.asarray(ATTRACTIVENESS)[GRADES])
    np.testing.assert_allclose(model.click_probabilities(GRADES), truth)
    within_4_sigma(clicks.mean(axis=0), truth, N)


def test_pbm_with_an_explicit_curve_and_table():
    model = PositionBasedModel(examination=(1.0, 0.5, 0.25), attractiveness=(0, 0.2, 0.4, 0.6, 0.8, 1.0))
    np.testing.assert_allclose(model.examination_curve(5), [1, 0.5, 0.25, 0, 0])
    grades = np.array([5, 5, 5, 5, 0])
    clicks = simulate_click_matrix(model, np.tile(grades, (N, 1)), np.random.default_rng(2))
    within_4_sigma(clicks.mean(axis=0), np.array([1, 0.5, 0.25, 0, 0]), N)


def test_cascade_without_continuation_clicks_at_most_once_and_matches_its_formula():
    model = CascadeModel(continuation=0.0)
    clicks = simulate_click_matrix(model, np.tile(GRADES, (N, 1)), np.random.default_rng(3))
    assert clicks.sum(axis=1).max() == 1  # never a click after the first
    a = np.asarray(ATTRACTIVENESS)[GRADES]
    truth = a * np.concatenate([[1], np.cumprod(1 - a)[:-1]])
    np.testing.assert_allclose(model.click_probabilities(GRADES), truth)
    within_4_sigma(clicks.mean(axis=0), truth, N)


def test_cascade_with_continuation():
    model = CascadeModel(continuation=0.5)
    clicks = simulate_click_matrix(model, np.tile(GRADES, (N, 1)), np.random.default_rng(4))
    assert clicks.sum(axis=1).max() > 1
    a = np.asarray(ATTRACTIVENESS)[GRADES]
    truth = a * np.concatenate([[1], np.cumprod(1 - a * 0.5)[:-1]])
    within_4_sigma(clicks.mean(axis=0), truth, N)
    always = simulate_click_matrix(CascadeModel(continuation=1.0), np.tile(GRADES, (N, 1)), np.random.default_rng(5))
    within_4_sigma(always.mean(axis=0), a, N)  # continuation 1: every rank examined, a PBM with eta 0


def test_seeded_determinism():
    for model in (PositionBasedModel(), CascadeModel(continuation=0.3)):
        first = simulate_clicks(model, GRADES, np.random.default_rng(7))
        assert np.array_equal(first, simulate_clicks(model, GRADES, np.random.default_rng(7)))
        assert first.dtype == np.int64 and (np.diff(first) > 0).all()
        m1 = simulate_click_matrix(model, np.tile(GRADES, (50, 1)), np.random.default_rng(8))
        m2 = simulate_click_matrix(model, np.tile(GRADES, (50, 1)), np.random.default_rng(8))
        assert np.array_equal(m1, m2)
    assert simulate_clicks(PositionBasedModel(), np.array([], dtype=np.int64), np.random.default_rng(0)).size == 0


def test_relevance_from_labels_follows_the_super_categories():
    name = {n: i for i, n in enumerate(CLASS_NAMES)}
    sneaker = name["Sneaker"]
    shown = [name[n] for n in ("Sneaker", "Sandal", "Ankle boot", "Bag", "Shirt", "Trouser")] + [None]
    assert grades_from_labels(sneaker, shown).tolist() == [3, 1, 1, 0, 0, 0, 0]
    coat = name["Coat"]
    shown = [name[n] for n in ("T-shirt/top", "Pullover", "Coat", "Shirt", "Dress", "Trouser", "Bag")]
    assert grades_from_labels(coat, shown).tolist() == [1, 1, 3, 1, 0, 0, 0]
    for lonely in ("Trouser", "Dress", "Bag"):  # alone in their super-category
        others = [i for i in range(10) if i != name[lonely]]
        assert grades_from_labels(name[lonely], others).tolist() == [0] * 9


def test_relevance_grades_prefer_the_graded_row():
    labels = {10: 7, 11: 5, 12: 8, 99: 7}
    row = np.zeros(20, dtype=np.uint8)
    row[10], row[12] = 5, 2
    g = relevance_grades([10, 11, 12, 99, 50], 7, labels.get, grades_row=row)
    assert g.tolist() == [5, 0, 2, 3, 0]  # ids 10..12 from the row; 99 (beyond it) from labels; 50 unknown: 0
    assert relevance_grades([10, 11, 12, 99, 50], 7, labels.get).tolist() == [3, 1, 0, 3, 0]


def test_bad_input():
    rng = np.random.default_rng(0)
    for bad in (dict(eta=-1), dict(eta=float("nan")), dict(attractiveness=(0.1, 0.2)), dict(attractiveness=(0, 0, 0, 0, 0, 2)),
                dict(examination=(1.5,)), dict(examination=[[1.0]])):
        with pytest.raises(OnlineError):
            PositionBasedModel(**bad)
    for c in (-0.1, 1.1, "x"):
        with pytest.raises(OnlineError, match="continuation"):
            CascadeModel(continuation=c)
    for grades in ([6], [-1], [1.5], [[1, 2]], [True]):
        with pytest.raises(OnlineError, match="grades"):
            simulate_clicks(PositionBasedModel(), np.array(grades), rng)
    with pytest.raises(OnlineError, match="rng"):
        simulate_clicks(PositionBasedModel(), GRADES, 0)
    with pytest.raises(OnlineError, match="model"):
        simulate_click_matrix("pbm", GRADES[None], rng)
    with pytest.raises(OnlineError):
        grades_from_labels(10, [1])
