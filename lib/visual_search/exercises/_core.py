"""The machinery behind every exercise check: cases, comparisons, and a result that explains itself.

A check is a function ``check(answer)`` written with :func:`checker`. Its body calls the
student's ``answer`` through :func:`call` on randomised cases and compares what comes back
with the library's own implementation through :func:`expect_close` or :func:`expect_equal`.
The first mismatch stops the check, and the message says which case, what was expected,
what came back, and a hint; a stub that still raises ``NotImplementedError`` is told so.
A check never raises for a wrong answer, so a notebook with unanswered exercises still
runs top to bottom; it returns a :class:`CheckResult`, which tests read.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visual_search.errors import VisualSearchError

#: chapter ("ch01") -> exercise name -> its check. Filled by :func:`checker`.
EXERCISES: dict[str, dict[str, Callable[..., CheckResult]]] = {}


class ExerciseError(VisualSearchError):
    """A check was called wrongly (not the student's answer being wrong: that is a failed check)."""


class Mismatch(ExerciseError):  # noqa: N818 - internal control flow, never escapes a check
    """Raised inside a check body at the first case the answer gets wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class CheckResult:
    """What a check found. ``bool(result)`` is whether the answer passed."""

    exercise: str
    passed: bool
    message: str
    cases: int = 0
    seed: int | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:  # already printed by the check; show nothing twice
        pass


def _short(value: Any, limit: int = 160) -> str:
    """A readable, bounded rendering of a value for a hint."""
    if isinstance(value, np.ndarray):
        with np.printoptions(precision=4, threshold=12, edgeitems=3, suppress=True):
            text = f"array(shape={value.shape}, dtype={value.dtype}) {np.array2string(value)}"
    elif isinstance(value, float | np.floating):
        text = f"{float(value):.6g}"
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def call(answer: Callable[..., Any], *args: Any, case: str, **kwargs: Any) -> Any:
    """Call the student's ``answer``; an exception from it becomes a hint that names the case."""
    try:
        return answer(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as err:  # noqa: BLE001 - any error in student code is feedback, not a crash
        raise Mismatch(f"{case}: your answer raised {type(err).__name__}: {err}") from None


def expect_equal(got: Any, expected: Any, case: str, hint: str = "") -> None:
    """Fail with expected/got unless ``got == expected`` (arrays: same shape and values)."""
    if isinstance(expected, np.ndarray):
        ok = isinstance(got, np.ndarray | list | tuple) and np.shape(got) == expected.shape and np.array_equal(np.asarray(got), expected)
    else:
        try:
            ok = bool(got == expected)
        except Exception:  # noqa: BLE001 - e.g. an array compared with a scalar
            ok = False
    if not ok:
        _fail(got, expected, case, hint)


def expect_close(got: Any, expected: Any, case: str, hint: str = "", rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """Fail with expected/got unless ``got`` is numerically close to ``expected`` (same shape)."""
    try:
        g = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        _fail(got, expected, case, hint or "expected a number or an array of numbers")
    e = np.asarray(expected, dtype=np.float64)
    if g.shape != e.shape:
        _fail(got, expected, case, f"the shape should be {e.shape}, not {g.shape}. {hint}".strip())
    if not np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=False) or not np.isfinite(g).all():
        _fail(got, expected, case, hint)


def expect_pair(got: Any, case: str, names: str = "(D, I)", hint: str = "") -> tuple[Any, Any]:
    """Fail unless ``got`` is a pair (a 2-tuple or 2-list); return its two parts."""
    if not (isinstance(got, tuple | list) and len(got) == 2):
        _fail(got, f"a pair {names}", case, hint or f"return a pair {names}")
    return got[0], got[1]


def _fail(got: Any, expected: Any, case: str, hint: str) -> None:
    message = f"{case}: expected {_short(expected)}, got {_short(got)}."
    raise Mismatch(f"{message} Hint: {hint}" if hint else message)


def checker(body: Callable[[Callable[..., Any], np.random.Generator], Iterator[str] | int | None]) -> Callable[..., CheckResult]:
    """Turn a check body into ``check(answer, seed=None) -> CheckResult``, registered under its chapter.

    The body receives the answer and a seeded ``numpy`` generator, runs its cases (through
    :func:`call` and the ``expect_*`` helpers) and returns how many it ran. The seed is
    random unless given, so each run tries new cases; a failure prints the seed that
    reproduces it.
    """
    chapter = body.__module__.rsplit(".", 1)[-1]
    name = body.__name__
    label = f"{chapter}.{name}"

    @functools.wraps(body)
    def check(answer: Any, seed: int | None = None, quiet: bool = False) -> CheckResult:
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        rng = np.random.default_rng(seed)
        try:
            if answer is None or answer is Ellipsis:
                raise Mismatch("no answer yet: pass your function (or value) to the check")
            cases = body(answer, rng) or 0
            result = CheckResult(label, True, f"✓ {label}: correct ({cases} randomised cases passed)" if cases else f"✓ {label}: correct", int(cases), seed)
        except NotImplementedError:
            result = CheckResult(label, False, f"✗ {label}: not answered yet: your function still raises NotImplementedError. "
                                 "Replace the `raise NotImplementedError` line with your code and run the cell again.", 0, seed)
        except Mismatch as m:
            result = CheckResult(label, False, f"✗ {label} (seed {seed}): {m.message}", 0, seed)
        if not quiet:
            print(result.message)
        return result

    EXERCISES.setdefault(chapter, {})[name] = check
    return check
