"""visual_search.timing: Timer, timed, thread limits and throughput."""

from __future__ import annotations

import time

import pytest
import torch
from threadpoolctl import threadpool_info

from visual_search import timing
from visual_search.errors import VisualSearchError


def test_timer_measures_its_block():
    timer = timing.Timer()
    assert timer.seconds != timer.seconds  # NaN before the block ends
    with timer:
        time.sleep(0.01)
    assert 0.009 < timer.seconds < 1


def test_timed_prints_the_label_even_when_the_block_fails():
    lines = []
    with pytest.raises(RuntimeError), timing.timed("step", print_fn=lines.append):
        raise RuntimeError("boom")
    assert len(lines) == 1 and lines[0].startswith("  step: ") and lines[0].endswith(" s")


def test_limit_threads_sets_and_restores_torch_and_blas():
    before = torch.get_num_threads()
    blas_before = [p["num_threads"] for p in threadpool_info()]
    with timing.limit_threads(1):
        assert torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert torch.get_num_threads() == before
    assert [p["num_threads"] for p in threadpool_info()] == blas_before
    with timing.limit_threads(None):  # changes nothing
        assert torch.get_num_threads() == before


def test_throughput_is_items_over_the_best_run():
    calls = []

    def fn(items):
        calls.append(len(items))
        time.sleep(0.1 if len(calls) == 1 else 0.005)  # a slow first (warm-up) run

    rate = timing.throughput(fn, list(range(10)), repeats=3)
    assert calls == [10, 10, 10]
    assert 10 / 0.05 < rate < 10 / 0.004  # the fastest run counts, not the first


@pytest.mark.parametrize("kwargs, message", [({"repeats": 0}, "repeats"), ({"threads": 0}, "threads"), ({"threads": True}, "threads")])
def test_throughput_rejects_bad_arguments(kwargs, message):
    with pytest.raises(VisualSearchError, match=message):
        timing.throughput(len, [1, 2], **kwargs)
    with pytest.raises(VisualSearchError, match="empty"):
        timing.throughput(len, [])
