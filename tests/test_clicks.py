"""Click logs: the simulator's shapes, position bias and determinism, and a ClickLog refusing inconsistent arrays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from visual_search import clicks, contrastive, data
from visual_search.clicks import ClickLog, simulate_click_log
from visual_search.errors import ClickLogError, VisualSearchError


@pytest.fixture(scope="module")
def gallery_labels() -> np.ndarray:
    return data.load_sample().gallery_labels  # 2,000 images, 200 per class


@pytest.fixture(scope="module")
def click_log(gallery_labels) -> ClickLog:
    return simulate_click_log(gallery_labels, n_sessions=4000, n_shown=10, seed=0)


# ---- the simulator ---------------------------------------------------------------------------


def test_click_log_shapes_and_clicks_only_on_shown_items(click_log, gallery_labels):
    s = 4000
    assert len(click_log) == s
    assert click_log.query_ids.shape == (s,) and click_log.shown_ids.shape == (s, 10)
    assert click_log.clicked_ids.shape == (s,) and click_log.positions.shape == (s,)
    assert all(x.dtype == np.int64 for x in (click_log.query_ids, click_log.shown_ids, click_log.clicked_ids, click_log.positions))
    clicked = click_log.positions >= 0
    np.testing.assert_array_equal(clicked, click_log.clicked_ids >= 0)
    np.testing.assert_array_equal(click_log.shown_ids[clicked, click_log.positions[clicked]], click_log.clicked_ids[clicked])
    assert 0.2 < clicked.mean() < 0.95  # clicks are sparse: many sessions have none
    assert not (click_log.shown_ids == click_log.query_ids[:, None]).any()  # the query is not shown to itself
    assert all(len(set(row)) == 10 for row in click_log.shown_ids.tolist())


def test_click_log_position_bias_is_visible(click_log, gallery_labels):
    per_position = np.bincount(click_log.positions[click_log.positions >= 0], minlength=10)
    assert per_position[0] > 3 * per_position[5]
    flat = simulate_click_log(gallery_labels, n_sessions=4000, position_bias=0.0, seed=0)
    steep = simulate_click_log(gallery_labels, n_sessions=4000, position_bias=2.0, seed=0)

    def top_share(log: ClickLog) -> float:
        return float(np.mean(log.positions[log.positions >= 0] == 0))

    assert top_share(flat) < top_share(click_log) < top_share(steep)
    assert np.mean(flat.positions[flat.positions >= 0]) > np.mean(click_log.positions[click_log.positions >= 0])


def test_clicks_follow_relevance(click_log, gallery_labels):
    clicked = click_log.clicked_ids >= 0
    q, c = click_log.query_ids[clicked], click_log.clicked_ids[clicked]
    same_class = gallery_labels[q] == gallery_labels[c]
    assert 0.6 < same_class.mean() < 0.99  # mostly the query's class, but noisy
    same_super = data.SUPER_CATEGORY_OF_LABEL[gallery_labels[c]] == data.SUPER_CATEGORY_OF_LABEL[gallery_labels[q]]
    assert same_super[~same_class].mean() > 0.5  # most wrong clicks are near misses (a shirt for a pullover)


def test_click_log_deterministic_per_seed(gallery_labels):
    a = simulate_click_log(gallery_labels, n_sessions=300, seed=5)
    b = simulate_click_log(gallery_labels, n_sessions=300, seed=5)
    c = simulate_click_log(gallery_labels, n_sessions=300, seed=6)
    for field in ("query_ids", "shown_ids", "clicked_ids", "positions"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.shown_ids, c.shown_ids)


def test_click_log_shows_the_given_ranking(gallery_labels):
    n_images = len(gallery_labels)
    ranking = (np.arange(n_images)[:, None] + np.arange(1, 13)[None, :]) % n_images  # the next 12 ids
    log = simulate_click_log(gallery_labels, n_sessions=50, n_shown=10, seed=0, ranking=ranking)
    np.testing.assert_array_equal(log.shown_ids, ranking[log.query_ids, :10])


def test_contrastive_reexports_the_same_objects():
    assert contrastive.ClickLog is clicks.ClickLog
    assert contrastive.simulate_click_log is clicks.simulate_click_log
    assert contrastive.CLICK_PROBABILITY is clicks.CLICK_PROBABILITY
    assert contrastive.RANDOM_SHOWN_SAME_CLASS == clicks.RANDOM_SHOWN_SAME_CLASS


# ---- a ClickLog checks its own arrays --------------------------------------------------------


def _fields(**changes) -> dict:
    """A consistent two-session log (one click at position 2, one session without), with ``changes`` applied."""
    fields = {
        "query_ids": np.array([0, 1], np.int64),
        "shown_ids": np.array([[5, 6, 7], [8, 9, 4]], np.int64),
        "clicked_ids": np.array([7, -1], np.int64),
        "positions": np.array([2, -1], np.int64),
    }
    return {**fields, **changes}


def test_a_consistent_log_is_accepted_and_kept_as_int64():
    log = ClickLog(**_fields())
    assert len(log) == 2
    same = _fields()
    log = ClickLog(**same)
    assert log.query_ids is same["query_ids"]  # already int64: not copied
    converted = ClickLog(query_ids=[0, 1], shown_ids=np.array([[5, 6, 7], [8, 9, 4]], np.int32), clicked_ids=[7, -1], positions=np.array([2, -1], np.int16))
    assert all(getattr(converted, f.name).dtype == np.int64 for f in dataclasses.fields(ClickLog))
    np.testing.assert_array_equal(converted.shown_ids, same["shown_ids"])


def test_an_empty_log_is_accepted():
    log = ClickLog(np.zeros(0, np.int64), np.zeros((0, 10), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert len(log) == 0


def test_a_simulated_log_passes_its_own_checks(click_log):
    again = ClickLog(**{f.name: getattr(click_log, f.name).copy() for f in dataclasses.fields(ClickLog)})
    np.testing.assert_array_equal(again.clicked_ids, click_log.clicked_ids)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"query_ids": np.array([0.0, 1.0])}, r"ClickLog\.query_ids: expected a 1-D array of integer ids, got float64"),
        ({"query_ids": np.array([True, False])}, r"ClickLog\.query_ids: expected a 1-D array of integer ids, got bool"),
        ({"query_ids": np.array([[0, 1]])}, r"ClickLog\.query_ids: expected a 1-D array"),
        ({"shown_ids": np.array([5, 6, 7])}, r"ClickLog\.shown_ids: expected a 2-D array"),
        ({"clicked_ids": [[7], [-1]]}, r"ClickLog\.clicked_ids: expected a 1-D array"),
        ({"positions": np.array([2.0, -1.0])}, r"ClickLog\.positions: expected a 1-D array of integer ids, got float64"),
        ({"query_ids": [[0], [1, 2]]}, r"ClickLog\.query_ids: expected a 1-D array of integer ids, got list"),
        ({"shown_ids": np.array([[5, 6, 7]])}, r"ClickLog\.shown_ids: expected 2 rows .* got shape \[1, 3\]"),
        ({"clicked_ids": np.array([7, -1, 3])}, r"ClickLog\.clicked_ids: expected 2 rows .* got shape \[3\]"),
        ({"positions": np.array([2])}, r"ClickLog\.positions: expected 2 rows"),
        ({"query_ids": np.array([0, -3])}, r"ClickLog\.query_ids: ids must be >= 0, got -3"),
        ({"shown_ids": np.array([[5, 6, 7], [8, -1, 4]])}, r"ClickLog\.shown_ids: ids must be >= 0, got -1"),
        ({"clicked_ids": np.array([7, -2])}, r"ClickLog\.clicked_ids: ids must be >= -1 \(-1: no click\), got -2"),
        ({"positions": np.array([3, -1])}, r"ClickLog\.positions: must be in -1\.\.2 .* got -1\.\.3"),
        ({"positions": np.array([2, -2])}, r"ClickLog\.positions: must be in -1\.\.2"),
        ({"positions": np.array([-1, -1])}, r"ClickLog\.positions: session 0 has position -1 but clicked_ids 7"),
        ({"positions": np.array([2, 0])}, r"ClickLog\.positions: session 1 has position 0 but clicked_ids -1"),
        ({"clicked_ids": np.array([6, -1])}, r"ClickLog\.clicked_ids: session 0 clicked 6, but shown_ids\[0, 2\] \(its position\) is 7"),
        ({"clicked_ids": np.array([7, 4]), "positions": np.array([2, 0])}, r"ClickLog\.clicked_ids: session 1 clicked 4, but shown_ids\[1, 0\]"),
    ],
)
def test_a_forged_log_is_refused_naming_the_field(changes, message):
    with pytest.raises(ClickLogError, match=message):
        ClickLog(**_fields(**changes))


# ---- bad simulator input ---------------------------------------------------------------------

_L = np.array([0, 1, 2])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: simulate_click_log(np.array([0, 1, 12]), 5), r"labels: expected at least 2 class labels in 0\.\.9"),
        (lambda: simulate_click_log(np.array([0]), 5), r"labels: expected at least 2 class labels in 0\.\.9, got 1 labels"),
        (lambda: simulate_click_log(np.array([0.0, 1.0]), 5), "labels: expected a 1-D array of integer ids, got float64"),
        (lambda: simulate_click_log(_L, 5, n_shown=3), "n_shown=3 is more than the 2 images"),
        (lambda: simulate_click_log(_L, 0), "n_sessions must be an integer >= 1"),
        (lambda: simulate_click_log(_L, 2.0), "n_sessions must be an integer >= 1, got 2.0"),
        (lambda: simulate_click_log(_L, 5, n_shown=True), "n_shown must be an integer >= 1, got True"),
        (lambda: simulate_click_log(_L, 5, n_shown=1, position_bias=-1.0), "position_bias must be a finite number >= 0"),
        (lambda: simulate_click_log(_L, 5, n_shown=1, position_bias=float("inf")), "position_bias must be a finite number >= 0"),
        (lambda: simulate_click_log(_L, 5, n_shown=1, seed=-1), r"seed must be an integer in \[0, 4294967295\], got -1"),
        (lambda: simulate_click_log(_L, 5, n_shown=1, seed=1.5), r"seed must be an integer in \[0, 4294967295\]"),
        (lambda: simulate_click_log(_L, 5, n_shown=2, ranking=np.zeros((3, 1), np.int64)), r"ranking: expected \[N=3, >= n_shown=2\]"),
        (lambda: simulate_click_log(_L, 5, n_shown=1, ranking=np.full((3, 1), 3)), r"ranking: ids must be in 0\.\.2"),
        (lambda: simulate_click_log(_L, 5, n_shown=1, ranking=np.zeros((3, 1))), "ranking: expected a 2-D array of integer ids, got float64"),
    ],
)
def test_bad_simulator_input_raises(call, message):
    with pytest.raises(ClickLogError, match=message):
        call()


def test_click_log_error_is_a_value_error_of_the_family():
    assert issubclass(ClickLogError, VisualSearchError) and issubclass(ClickLogError, ValueError)
