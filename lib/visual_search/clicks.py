"""Click logs: the format of a search log, and a simulator of users clicking on results.

A click log records, per search session, the query, the results shown (top to
bottom), and which one the user clicked, if any. Two chapters read it:

* chapter 03 (contrastive training data) turns clicks into positives
  (``contrastive.positives_from_clicks``) and measures how noisy, sparse and
  position-biased they are;
* the online-evaluation chapter uses the same ``ClickLog`` to measure a ranking
  from user behaviour (click-through rate, click position) instead of labels.

We have no users, so ``simulate_click_log`` simulates them with a standard
generative model (position-biased examination, relevance-driven attraction, a
cascade). A ``ClickLog`` checks its own arrays when it is made, so a log built by
hand or loaded from elsewhere is refused, with the field named, if it is
inconsistent (a click on an item that was not shown, a position off the page).

Errors: ``visual_search.errors.ClickLogError``, a ``ValueError``.

Data flow: this module imports only ``data`` from the library (the super-categories
that decide a simulated click's relevance), plus ``errors`` and ``_checks``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visual_search import data
from visual_search._checks import check_int, check_real, check_seed
from visual_search.errors import ClickLogError

#: Probability that a user clicks an item they examined, by its relevance to the query.
CLICK_PROBABILITY: dict[str, float] = {"same class": 0.6, "same super-category": 0.2, "other": 0.03}
#: Without a ``ranking``, the fraction of shown items (on average) that share the query's class.
RANDOM_SHOWN_SAME_CLASS: float = 0.5


def _int_array(x: object, name: str, ndim: int) -> np.ndarray:
    """``x`` as an int64 numpy array of ``ndim`` dimensions, or ClickLogError naming it.

    Integer numpy arrays, sequences and (CPU) torch tensors are accepted; booleans and
    floats are not (an empty float array, what ``np.array([])`` gives, counts as integer).
    """
    if hasattr(x, "detach"):  # a torch tensor: without importing torch here
        x = x.detach().cpu()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:  # a ragged list, say
        raise ClickLogError(f"{name}: expected a {ndim}-D array of integer ids, got {type(x).__name__} that is not an array ({err})") from None
    integer = np.issubdtype(arr.dtype, np.integer) or (arr.size == 0 and arr.dtype == np.float64)
    if arr.ndim != ndim or not integer:
        raise ClickLogError(f"{name}: expected a {ndim}-D array of integer ids, got {arr.dtype} with shape {list(arr.shape)}")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True)
class ClickLog:
    """A (simulated) search log: one row per session.

    The arrays are checked when the log is made and stored as int64 (integer arrays
    of another dtype are converted), so every ``ClickLog`` is consistent.

    Attributes:
        query_ids: int64 ``[S]``, the query image of each session, ids >= 0.
        shown_ids: int64 ``[S, n_shown]``, the images shown, top to bottom, ids >= 0.
        clicked_ids: int64 ``[S]``, the clicked image, or -1 when the user clicked nothing.
        positions: int64 ``[S]``, the 0-based position of the click in ``shown_ids``
            (0..n_shown-1), or -1 exactly where ``clicked_ids`` is -1; where it is not,
            ``shown_ids[s, positions[s]] == clicked_ids[s]``.

    Raises:
        ClickLogError: (when made) for a non-integer array, a wrong shape, a negative id,
            a position off the page, or a click that disagrees with what was shown there;
            the message names the field.
    """

    query_ids: np.ndarray
    shown_ids: np.ndarray
    clicked_ids: np.ndarray
    positions: np.ndarray

    def __post_init__(self) -> None:
        query_ids = _int_array(self.query_ids, "ClickLog.query_ids", 1)
        shown_ids = _int_array(self.shown_ids, "ClickLog.shown_ids", 2)
        clicked_ids = _int_array(self.clicked_ids, "ClickLog.clicked_ids", 1)
        positions = _int_array(self.positions, "ClickLog.positions", 1)
        n_sessions, n_shown = len(query_ids), shown_ids.shape[1]
        for name, arr in (("shown_ids", shown_ids), ("clicked_ids", clicked_ids), ("positions", positions)):
            if len(arr) != n_sessions:
                raise ClickLogError(f"ClickLog.{name}: expected {n_sessions} rows (one per session, as query_ids), got shape {list(arr.shape)}")
        for name, arr, low in (("query_ids", query_ids, 0), ("shown_ids", shown_ids, 0), ("clicked_ids", clicked_ids, -1)):
            if arr.size and arr.min() < low:
                raise ClickLogError(f"ClickLog.{name}: ids must be >= {low}" + (" (-1: no click)" if low < 0 else "") + f", got {arr.min()}")
        if positions.size and (positions.min() < -1 or positions.max() >= n_shown):
            raise ClickLogError(f"ClickLog.positions: must be in -1..{n_shown - 1} (-1: no click, else a position on the page of {n_shown}), got {positions.min()}..{positions.max()}")
        no_click = clicked_ids == -1
        if (no_click != (positions == -1)).any():
            s = int(np.argmax(no_click != (positions == -1)))
            raise ClickLogError(f"ClickLog.positions: session {s} has position {positions[s]} but clicked_ids {clicked_ids[s]}; a position is -1 exactly when the click is -1")
        sessions = np.flatnonzero(~no_click)
        wrong = shown_ids[sessions, positions[sessions]] != clicked_ids[sessions]
        if wrong.any():
            s = int(sessions[np.argmax(wrong)])
            raise ClickLogError(
                f"ClickLog.clicked_ids: session {s} clicked {clicked_ids[s]}, but shown_ids[{s}, {positions[s]}] (its position) is {shown_ids[s, positions[s]]}"
            )
        for name, arr in (("query_ids", query_ids), ("shown_ids", shown_ids), ("clicked_ids", clicked_ids), ("positions", positions)):
            object.__setattr__(self, name, arr)  # the int64 arrays (the same objects when they already were)

    def __len__(self) -> int:
        return len(self.query_ids)


def simulate_click_log(
    labels: np.ndarray,
    n_sessions: int,
    n_shown: int = 10,
    position_bias: float = 1.0,
    seed: int = 0,
    ranking: np.ndarray | None = None,
) -> ClickLog:
    """Simulate users clicking on search results, to teach where click positives come from.

    The generative model, per session:

    1. **Query.** A uniformly random image of the N is the query.
    2. **Results.** The "production system" shows ``n_shown`` images: the first
       ``n_shown`` entries of ``ranking[query]`` if a ranking is given (for instance
       raw-pixel or SimCLR search via ``visual_search.index.exact_search``, without the
       query itself); otherwise a random mix, in random order, of distinct images other
       than the query, each of the query's class with probability
       ``RANDOM_SHOWN_SAME_CLASS`` and of another class otherwise.
    3. **Examination (position bias).** The user looks at position p (0-based) with
       probability ``1 / (p + 1) ** position_bias``, independently per position:
       ``position_bias = 0`` examines everything, larger values look mostly at the top.
    4. **Attraction (relevance and noise).** An examined item attracts a click with
       probability ``CLICK_PROBABILITY``: 0.6 for the query's class, 0.2 for the same
       super-category (``data.SUPER_CATEGORY_OF_LABEL``, e.g. a shirt for a pullover),
       0.03 otherwise (curiosity, mis-taps: noise).
    5. **Cascade.** The user scans top to bottom and clicks the first examined item that
       attracts them, then leaves: at most one click per session, -1 if none.

    So clicks are sparse (many sessions have none), noisy (some clicks are on other
    classes) and biased towards the top of whatever the production system ranked.

    Args:
        labels: int ``[N]`` class labels (0..9) of the images; they decide relevance.
        n_sessions: how many sessions, >= 1.
        n_shown: results per page, >= 1 (and at most N - 1 without a ranking).
        position_bias: the exponent of the examination probability, >= 0.
        seed: the random seed, in [0, 2**32 - 1]; the same seed gives the same log.
        ranking: optional int ``[N, >= n_shown]``, the production system's ranked ids for
            each image as a query.

    Returns:
        A ``ClickLog``.

    Raises:
        ClickLogError: for bad labels, counts, bias or seed, or a ranking of the wrong shape or ids.
    """
    labels = _int_array(labels, "labels", 1)
    n_images = len(labels)
    n_classes = len(data.SUPER_CATEGORY_OF_LABEL)
    if n_images < 2 or labels.min() < 0 or labels.max() >= n_classes:
        raise ClickLogError(f"labels: expected at least 2 class labels in 0..{n_classes - 1}, got {n_images} labels" + (f" in {labels.min()}..{labels.max()}" if n_images else ""))
    n_sessions = check_int(n_sessions, "n_sessions", low=1, error=ClickLogError)
    n_shown = check_int(n_shown, "n_shown", low=1, error=ClickLogError)
    position_bias = check_real(position_bias, "position_bias", low=0, error=ClickLogError)
    seed = check_seed(seed, "seed", error=ClickLogError)
    rng = np.random.default_rng(seed)
    query_ids = rng.integers(0, n_images, size=n_sessions).astype(np.int64)

    if ranking is not None:
        ranking = _int_array(ranking, "ranking", 2)
        if ranking.shape[0] != n_images or ranking.shape[1] < n_shown:
            raise ClickLogError(f"ranking: expected [N={n_images}, >= n_shown={n_shown}] ranked ids, got shape {list(ranking.shape)}")
        if ranking.size and (ranking.min() < 0 or ranking.max() >= n_images):
            raise ClickLogError(f"ranking: ids must be in 0..{n_images - 1}, got {ranking.min()}..{ranking.max()}")
        shown = ranking[query_ids, :n_shown]
    else:
        if n_shown > n_images - 1:
            raise ClickLogError(f"n_shown={n_shown} is more than the {n_images - 1} images other than the query")
        members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
        others = {c: np.flatnonzero(labels != c) for c in members}
        shown = np.empty((n_sessions, n_shown), dtype=np.int64)
        for s, q in enumerate(query_ids):
            same, other = members[labels[q]], others[labels[q]]
            n_same = min(int(rng.binomial(n_shown, RANDOM_SHOWN_SAME_CLASS)), len(same) - 1)
            n_same = max(n_same, n_shown - len(other))  # too few other-class images: fill with the class
            pick = rng.choice(len(same) - 1, n_same, replace=False)
            pick += pick >= np.searchsorted(same, q)  # skip the query itself
            row = np.concatenate([same[pick], other[rng.choice(len(other), n_shown - n_same, replace=False)]])
            shown[s] = rng.permutation(row)

    query_labels = labels[query_ids][:, None]
    shown_labels = labels[shown]
    same_class = shown_labels == query_labels
    same_super = data.SUPER_CATEGORY_OF_LABEL[shown_labels] == data.SUPER_CATEGORY_OF_LABEL[query_labels]
    p_click = np.where(same_class, CLICK_PROBABILITY["same class"], np.where(same_super, CLICK_PROBABILITY["same super-category"], CLICK_PROBABILITY["other"]))
    p_examine = 1.0 / (np.arange(n_shown) + 1.0) ** position_bias
    examined = rng.random((n_sessions, n_shown)) < p_examine[None, :]
    attracted = rng.random((n_sessions, n_shown)) < p_click
    clicks = examined & attracted
    has_click = clicks.any(axis=1)
    positions = np.where(has_click, clicks.argmax(axis=1), -1).astype(np.int64)  # argmax = the first True: the cascade
    clicked = np.where(has_click, shown[np.arange(n_sessions), np.maximum(positions, 0)], -1).astype(np.int64)
    return ClickLog(query_ids=query_ids, shown_ids=shown.astype(np.int64), clicked_ids=clicked, positions=positions)


__all__ = ["CLICK_PROBABILITY", "RANDOM_SHOWN_SAME_CLASS", "ClickLog", "simulate_click_log"]
