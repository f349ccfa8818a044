"""The integer, real-number and seed checks that every module does where a parameter is given.

One place for "is this an integer in range?", so every parameter in the library is
refused the same way, at construction, with a message that names it::

    nprobe = check_int(nprobe, "ivf: nprobe", low=1, error=VectorIndexError)

Booleans are refused as integers (``True`` is an ``int`` in Python, but
``n_trees=True`` is a bug), and so are floats, even integral ones (``2.0``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from visual_search.errors import VisualSearchError

#: Seeds are accepted in this range by every random generator the library uses
#: (NumPy, torch, Annoy's 32-bit seed, datasketch).
SEED_MAX = 2**32 - 1


def _range_text(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def check_int(
    value: object,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    error: type[VisualSearchError] = VisualSearchError,
    allow_none: bool = False,
) -> int | None:
    """Return ``value`` as a Python int if it is an integer within ``[low, high]``; else raise ``error``.

    Args:
        value: what the caller passed.
        name: how the message names it (e.g. ``"ivf: nprobe"``).
        low, high: inclusive bounds (None: unbounded on that side).
        error: the ``VisualSearchError`` subclass to raise.
        allow_none: accept None (and return it).

    Returns:
        ``int(value)``, or None when allowed and given.
    """
    if value is None and allow_none:
        return None
    bounds = _range_text(low, high)
    what = f"an integer {bounds}".rstrip() + (" or None" if allow_none else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise error(f"{name} must be {what}, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{name} must be {what}, got {value!r}")
    return value


def check_real(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    error: type[VisualSearchError] = VisualSearchError,
) -> float:
    """Return ``value`` as a finite float within the bounds (open or closed on each side); else raise ``error``."""
    bounds = _range_text(low, high, low_open, high_open)
    what = f"a finite number {bounds}".rstrip()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise error(f"{name} must be {what}, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise error(f"{name} must be {what}, got {value!r}")
    return value


def check_seed(value: object, name: str = "seed", *, error: type[VisualSearchError] = VisualSearchError, allow_none: bool = False) -> int | None:
    """A seed: an integer in ``[0, 2**32 - 1]`` (what every generator here accepts), or None when allowed."""
    return check_int(value, name, low=0, high=SEED_MAX, error=error, allow_none=allow_none)
