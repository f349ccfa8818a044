"""Contrastive training data (chapter 03): data points, and three sources of positives.

A contrastive data point is a query, one positive (an image that should rank
high for it) and n-1 negatives; its label is the index of the positive among the
n candidates. ``make_datapoints`` builds them from id arrays. The positives come
from one of three sources, each returning ``(query_ids, positive_ids)``:

* ``positives_from_augmentation``: every image is its own positive (the two views
  are made at training time by ``visual_search.augment.augment_batch``);
* ``positives_from_clicks``: the clicked result of each session of a
  ``visual_search.clicks.ClickLog``;
* ``positives_from_labels``: another image of the same class (human labels).

``combine_positives`` merges sources; ``positive_precision`` measures how clean one is.

Errors: ``visual_search.errors.ContrastiveError``.

Data flow: imports ``clicks`` (the ``ClickLog`` it reads), ``errors`` and ``_checks``.
"""

from __future__ import annotations

import numpy as np
import torch

from visual_search._checks import check_int, check_seed
from visual_search.clicks import ClickLog
from visual_search.errors import ContrastiveError


def _ids(x: object, name: str, ndim: int = 1) -> np.ndarray:
    """``x`` as an int64 numpy array of ``ndim`` dimensions, or ContrastiveError."""
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    if arr.ndim != ndim or not (np.issubdtype(arr.dtype, np.integer) or (arr.size == 0 and arr.dtype == np.float64)):
        raise ContrastiveError(f"{name}: expected a {ndim}-D array of integer ids, got {arr.dtype} with shape {list(arr.shape)}")
    return arr.astype(np.int64)


# ---- Data points: a query, its positive, n-1 negatives -------------------------------------


def make_datapoints(
    query_ids: np.ndarray, positive_ids: np.ndarray, pool_ids: np.ndarray, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Build the design notes' data points: for each query, n candidates of which one is the positive.

    For query b the n-1 negatives are drawn uniformly without replacement from
    ``pool_ids`` (duplicates in the pool count once), never the query itself nor its
    positive; the positive is then put at a uniformly random position, and that
    position is the label. The negatives are random, so some share the query's class
    ("false negatives"); with many classes they are few, and the loss tolerates them.

    Args:
        query_ids: int ``[B]``, the query of each data point.
        positive_ids: int ``[B]``, its positive (a source from ``positives_from_*``).
        pool_ids: int ``[P]``, the images negatives are drawn from.
        n: candidates per data point (1 positive + n-1 negatives), >= 2.
        seed: the random seed, in [0, 2**32 - 1]; the same seed gives the same data points.

    Returns:
        ``(candidates, labels)``: int64 ``[B, n]`` candidate ids and int64 ``[B]`` with
        ``candidates[b, labels[b]] == positive_ids[b]``. Feed them to
        ``softmax_cross_entropy`` as ``E[query_ids]``, ``E[candidates]``, ``labels``.

    Raises:
        ContrastiveError: for mismatched id arrays, n < 2, a bad seed, or a pool too small
            to give some query n-1 negatives.
    """
    query_ids, positive_ids = _ids(query_ids, "query_ids"), _ids(positive_ids, "positive_ids")
    if query_ids.shape != positive_ids.shape:
        raise ContrastiveError(f"query_ids {list(query_ids.shape)} and positive_ids {list(positive_ids.shape)} must have the same length")
    pool = np.unique(_ids(pool_ids, "pool_ids"))  # sorted, each id once
    n = check_int(n, "n", low=2, error=ContrastiveError)
    seed = check_seed(seed, "seed", error=ContrastiveError)
    # Which pool positions each query excludes: its own id and its positive's (once if they are equal).
    excluded = []
    for ids in (query_ids, positive_ids):
        pos = np.searchsorted(pool, ids)
        present = (pos < len(pool)) & (pool[np.minimum(pos, len(pool) - 1)] == ids) if len(pool) else np.zeros(len(ids), bool)
        excluded.append(np.where(present, pos, -1))
    excluded[1] = np.where(excluded[1] == excluded[0], -1, excluded[1])
    ex = np.sort(np.stack(excluded, axis=1), axis=1)  # [B, 2], -1 = nothing to exclude
    available = len(pool) - (ex >= 0).sum(axis=1)
    if len(query_ids) and (available < n - 1).any():
        b = int(np.argmax(available < n - 1))
        raise ContrastiveError(
            f"n={n} needs n-1={n - 1} negatives but pool_ids has only {available[b]} distinct ids "
            f"other than query {query_ids[b]} and its positive {positive_ids[b]}"
        )
    rng = np.random.default_rng(seed)
    negatives = np.empty((len(query_ids), n - 1), dtype=np.int64)
    for b in range(len(query_ids)):
        idx = rng.choice(available[b], n - 1, replace=False)  # a rank among the allowed pool positions...
        for e in ex[b]:
            if e >= 0:
                idx += idx >= e  # ...mapped to a pool position by skipping the excluded ones (ascending)
        negatives[b] = pool[idx]
    labels = rng.integers(0, n, size=len(query_ids)).astype(np.int64)
    candidates = np.empty((len(query_ids), n), dtype=np.int64)
    is_positive = np.arange(n)[None, :] == labels[:, None]
    candidates[is_positive] = positive_ids
    candidates[~is_positive] = negatives.reshape(-1)  # row by row, in order, around the positive
    return candidates, labels


# ---- Three sources of positives ------------------------------------------------------------
#
# Each returns ``(query_ids, positive_ids)``, int64 arrays of equal length.
#   (a) augmentation: free, always right, but only ever "the same image, distorted";
#   (b) clicks: free and about real similarity, but noisy, sparse and position-biased;
#   (c) human labels: accurate, but costly (here class labels stand in for annotators).
# ``positive_precision`` measures the noise of each source.


def positives_from_augmentation(n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Self-supervision: every image is its own positive.

    The pair (i, i) means "two different views of image i": the views are made at
    training time by ``augment_batch`` (a fresh random crop, flip, rotation, colour
    change and blur for each), so the ids alone look trivial. This is SimCLR's source.

    Args:
        n_images: how many images, >= 1.

    Returns:
        ``(query_ids, positive_ids)``, both ``arange(n_images)`` as int64.

    Raises:
        ContrastiveError: if ``n_images`` is not an integer >= 1.
    """
    n_images = check_int(n_images, "n_images", low=1, error=ContrastiveError)
    ids = np.arange(n_images, dtype=np.int64)
    return ids, ids.copy()


def positives_from_clicks(log: ClickLog) -> tuple[np.ndarray, np.ndarray]:
    """Clicks as positives: the (query, clicked image) pair of every session with a click.

    Args:
        log: a ``visual_search.clicks.ClickLog`` (e.g. from ``simulate_click_log``); it
            checked its own arrays when it was made.

    Returns:
        ``(query_ids, positive_ids)``, int64, one pair per session that has a click;
        sessions without a click give no data point (clicks are sparse).

    Raises:
        ContrastiveError: if ``log`` is not a ClickLog or its arrays disagree in length.
    """
    if not isinstance(log, ClickLog):
        raise ContrastiveError(f"log: expected a ClickLog, got {type(log).__name__}")
    query_ids, clicked = _ids(log.query_ids, "log.query_ids"), _ids(log.clicked_ids, "log.clicked_ids")
    if query_ids.shape != clicked.shape:  # only if its arrays were swapped after the ClickLog checked them
        raise ContrastiveError(f"log.query_ids {list(query_ids.shape)} and log.clicked_ids {list(clicked.shape)} must have the same length")
    mask = clicked >= 0
    return query_ids[mask], clicked[mask]


def positives_from_labels(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Human judgement: for each image, a different random image that annotators put in its class.

    Class labels stand in for human annotators: accurate positives, but in a real
    system every pair costs money and time.

    Args:
        labels: int ``[N]`` class labels.
        seed: the random seed, in [0, 2**32 - 1]; the same seed gives the same pairs.

    Returns:
        ``(query_ids, positive_ids)``: ``arange(N)`` and, for each image, another image
        (never itself) with the same label, chosen uniformly; int64.

    Raises:
        ContrastiveError: if labels is not 1-D integers, some class has a single image, or
            the seed is bad.
    """
    labels = _ids(labels, "labels")
    seed = check_seed(seed, "seed", error=ContrastiveError)
    rng = np.random.default_rng(seed)
    positives = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            raise ContrastiveError(f"labels: class {c} has a single image ({members[0]}), which has no other image to pair with")
        pick = rng.integers(0, len(members) - 1, size=len(members))
        pick += pick >= np.arange(len(members))  # skip the image itself
        positives[members] = members[pick]
    return np.arange(len(labels), dtype=np.int64), positives


def combine_positives(*pairs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge positives from several sources (e.g. clicks for volume, labels to fix their noise).

    Args:
        *pairs: ``(query_ids, positive_ids)`` tuples, as the ``positives_from_*`` functions return.

    Returns:
        ``(query_ids, positive_ids)``: the concatenations, in the order given, int64.

    Raises:
        ContrastiveError: if no pair is given, or one is not two equal-length 1-D id arrays.
    """
    if not pairs:
        raise ContrastiveError("pairs: give at least one (query_ids, positive_ids) tuple")
    queries, positives = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ContrastiveError(f"pairs[{i}]: expected a (query_ids, positive_ids) tuple, got {type(pair).__name__}")
        q, p = _ids(pair[0], f"pairs[{i}] query_ids"), _ids(pair[1], f"pairs[{i}] positive_ids")
        if q.shape != p.shape:
            raise ContrastiveError(f"pairs[{i}]: query_ids {list(q.shape)} and positive_ids {list(p.shape)} must have the same length")
        queries.append(q)
        positives.append(p)
    return np.concatenate(queries), np.concatenate(positives)


def positive_precision(query_ids: np.ndarray, positive_ids: np.ndarray, labels: np.ndarray) -> float:
    """How clean a source of positives is: the fraction of pairs whose positive has the query's class.

    1.0 for human labels, and for augmentation, whose positive is the query itself; below
    1 for clicks, by as much as users click on other classes. Chance level is the sum of
    the squared class frequencies (0.1 on balanced Fashion-MNIST).

    Args:
        query_ids, positive_ids: int ``[M]`` pairs, M >= 1.
        labels: int ``[N]`` class labels of all images.

    Returns:
        The fraction in [0, 1].

    Raises:
        ContrastiveError: for mismatched or empty pairs, or ids outside 0..N-1.
    """
    query_ids, positive_ids, labels = _ids(query_ids, "query_ids"), _ids(positive_ids, "positive_ids"), _ids(labels, "labels")
    if query_ids.shape != positive_ids.shape or len(query_ids) == 0:
        raise ContrastiveError(f"query_ids {list(query_ids.shape)} and positive_ids {list(positive_ids.shape)} must be non-empty and of the same length")
    for name, ids in (("query_ids", query_ids), ("positive_ids", positive_ids)):
        if ids.min() < 0 or ids.max() >= len(labels):
            raise ContrastiveError(f"{name}: ids must be in 0..{len(labels) - 1} (the labels), got {ids.min()}..{ids.max()}")
    return float(np.mean(labels[query_ids] == labels[positive_ids]))


__all__ = [
    "combine_positives",
    "make_datapoints",
    "positive_precision",
    "positives_from_augmentation",
    "positives_from_clicks",
    "positives_from_labels",
]
