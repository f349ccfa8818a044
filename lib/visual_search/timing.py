"""Wall-clock timing the same way everywhere: benchmarks, the index harness and the notebooks.

    from visual_search.timing import Timer, throughput, timed

    with Timer() as t:                      # seconds of a block
        index.add(x)
    print(t.seconds)

    with timed("supervised training"):      # the same, printed as "  supervised training: 4.2 s"
        train(...)

    rate = throughput(embed_fn, images)     # images per second per core: one thread, best of 2

Rules the numbers follow, so two measurements compare:

* ``time.perf_counter`` (monotonic, the best resolution the OS has).
* **Best of ``repeats``**, not the mean: the first run also pays one-off costs
  (page faults, caches, lazy imports), and later runs can only be slowed down by
  other processes, never sped up, so the minimum is the least noisy estimate.
* **One thread by default.** Per-core numbers are what a capacity plan multiplies,
  and multi-threaded small batches slow down badly when another process shares
  the cores. ``threads`` limits BLAS/OpenMP pools (threadpoolctl) and, when torch
  is loaded, torch's intra-op threads, and restores both afterwards.

Bad arguments raise ``visual_search.errors.VisualSearchError``. This module is a leaf:
it imports only the other leaves (``errors``, ``_checks``), so anything may use it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from typing import Any

from visual_search._checks import check_int
from visual_search.errors import VisualSearchError


class Timer:
    """Context manager that measures the seconds its block took.

    ``seconds`` is NaN inside the block and the elapsed wall-clock time after it.
    """

    def __init__(self) -> None:
        self.seconds = float("nan")
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


@contextmanager
def timed(label: str, print_fn: Callable[[str], Any] = print) -> Iterator[Timer]:
    """A ``Timer`` that prints ``"  <label>: <seconds> s"`` when its block ends (also on an error)."""
    timer = Timer()
    try:
        with timer:
            yield timer
    finally:
        print_fn(f"  {label}: {timer.seconds:.1f} s")


@contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Run a block with at most ``threads`` BLAS/OpenMP threads (and torch threads, if torch is loaded).

    ``None`` changes nothing. The previous limits are restored afterwards.
    """
    if threads is None:
        yield
        return
    threads = check_int(threads, "threads", low=1)
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")  # never import torch just to time NumPy code
    before = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None:
            torch.set_num_threads(threads)
        with threadpool_limits(threads):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


def best_seconds(fn: Callable[[], Any], repeats: int = 2, threads: int | None = 1) -> float:
    """The fastest of ``repeats`` calls of ``fn()``, in seconds, with at most ``threads`` threads."""
    repeats = check_int(repeats, "repeats", low=1)
    best = float("inf")
    with limit_threads(threads):
        for _ in range(repeats):  # the first run also warms up
            with Timer() as t:
                fn()
            best = min(best, t.seconds)
    return best


def throughput(fn: Callable[[Any], Any], items: Sized, threads: int | None = 1, repeats: int = 2) -> float:
    """Items per second of ``fn(items)`` as one batch: the best of ``repeats`` runs on ``threads`` threads.

    Args:
        fn: called as ``fn(items)``, e.g. an embedding function or ``lambda q: index.search(q, 10)``.
        items: anything with a length (images, query vectors).
        threads: thread limit while timing (default 1: a per-core number); ``None`` leaves the
            current setting alone (e.g. a notebook that already called ``threadpool_limits(1)``).
        repeats: runs; the fastest counts.

    Returns:
        ``len(items) / best seconds``.
    """
    if len(items) == 0:
        raise VisualSearchError("items: empty, nothing to time")
    return len(items) / best_seconds(lambda: fn(items), repeats=repeats, threads=threads)


__all__ = ["Timer", "best_seconds", "limit_threads", "throughput", "timed"]
