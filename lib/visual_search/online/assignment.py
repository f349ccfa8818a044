"""Deterministic assignment of users to experiment variants, by hashing.

An online experiment must show each user the same variant on every visit (or the
user sees both rankers and the comparison is muddled), without storing a table of
who got what. Hashing does it: ``SHA-256(experiment salt + user id)`` is a
pseudo-random number in [0, 1) that depends only on the pair, so

* the same user always lands in the same variant of one experiment (deterministic,
  on every server, with no shared state);
* two experiments use different salts (their names), so a user's variant in one
  says nothing about their variant in another: the splits are independent, and a
  ranker tested in experiment X is not confounded with the variant of experiment Y;
* a traffic split (``weights``) cuts [0, 1) into consecutive slices, one per variant.

Example::

    assign("user-42", "ranker-v2-vs-v1")                          # 'a' or 'b', always the same
    assign("user-42", "new-ui", variants=("old", "new"), weights=(0.9, 0.1))
"""

from __future__ import annotations

import bisect
import hashlib
import math
import numbers
from collections.abc import Sequence

import numpy as np

from visual_search.errors import OnlineError

#: The hash's first 8 bytes, read as an integer, divided by this: a uniform number in [0, 1).
_SCALE = float(2**64)


def _check_name(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise OnlineError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _check_variants(variants: Sequence[str]) -> tuple[str, ...]:
    if isinstance(variants, (str, bytes)) or not isinstance(variants, Sequence):
        raise OnlineError(f"variants must be a sequence of variant names (e.g. ('a', 'b')), got {variants!r}")
    variants = tuple(variants)
    if len(variants) < 2:
        raise OnlineError(f"variants must name at least 2 variants, got {len(variants)}: {variants!r}")
    for variant in variants:
        _check_name(variant, "variants: each variant")
    if len(set(variants)) != len(variants):
        duplicates = sorted({v for v in variants if variants.count(v) > 1})
        raise OnlineError(f"variants must be distinct, got duplicates {duplicates!r}")
    return variants


def _check_weights(weights: Sequence[float] | None, n_variants: int) -> list[float]:
    """The cumulative traffic shares, normalised so that the last one is exactly 1."""
    if weights is None:
        return [(i + 1) / n_variants for i in range(n_variants)]
    if isinstance(weights, (str, bytes)) or not isinstance(weights, (Sequence, np.ndarray)):
        raise OnlineError(f"weights must be a sequence of non-negative numbers, one per variant, got {weights!r}")
    weights = list(weights.tolist() if isinstance(weights, np.ndarray) else weights)
    if len(weights) != n_variants:
        raise OnlineError(f"weights must have one entry per variant ({n_variants}), got {len(weights)}")
    for w in weights:
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, numbers.Real) or not math.isfinite(float(w)) or w < 0:
            raise OnlineError(f"weights must be finite non-negative numbers, got {w!r} in {weights!r}")
    total = float(sum(weights))
    if total <= 0:
        raise OnlineError(f"weights must not all be zero, got {weights!r}")
    cumulative, running = [], 0.0
    for w in weights:
        running += float(w)
        cumulative.append(running / total)
    cumulative[-1] = 1.0  # no rounding gap at the top: every u in [0, 1) lands somewhere
    return cumulative


def bucket(user_id: str, experiment: str) -> float:
    """The user's position in [0, 1) for one experiment: the salted SHA-256 hash, scaled.

    Args:
        user_id: the user's id (a non-empty string).
        experiment: the experiment's name, used as the salt.

    Returns:
        A number in [0, 1) that depends only on (experiment, user_id), uniformly
        spread over users, and unrelated between experiments.
    """
    _check_name(user_id, "user_id")
    _check_name(experiment, "experiment")
    # the salt's length goes first, so ("ab", "c") and ("a", "bc") cannot collide
    key = f"{len(experiment)}:{experiment}:{user_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / _SCALE


def assign(user_id: str, experiment: str, variants: Sequence[str] = ("a", "b"), weights: Sequence[float] | None = None) -> str:
    """The variant a user sees in an experiment: the same on every call, independent across experiments.

    Args:
        user_id: the user's id (a non-empty string).
        experiment: the experiment's name; it salts the hash, so each experiment
            splits users afresh.
        variants: at least two distinct, non-empty variant names.
        weights: the traffic share of each variant (non-negative, not all zero;
            normalised, so ``(9, 1)`` means 90 % / 10 %). None: an equal split.

    Returns:
        One of ``variants``.

    Raises:
        OnlineError: an empty or non-string id or name, fewer than 2 or duplicate
            variants, or weights of the wrong length, negative, NaN or all zero.
    """
    variants = _check_variants(variants)
    cumulative = _check_weights(weights, len(variants))
    u = bucket(user_id, experiment)
    return variants[bisect.bisect_right(cumulative, u)]


__all__ = ["assign", "bucket"]
