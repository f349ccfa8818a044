"""Shared fixtures. Every test runs in fast mode, however pytest is started."""

from __future__ import annotations

import os

os.environ["VISUAL_SEARCH_FAST"] = "1"  # before the library is imported anywhere: small data, nothing written to figures/ or results/

import pytest  # noqa: E402

from visual_search import data  # noqa: E402


def _full_data_available() -> bool:
    try:
        data.find_data_dir("train", download=False)
        data.find_data_dir("test", download=False)
        return True
    except data.DataError:
        return False


FULL_DATA = _full_data_available()
needs_full_data = pytest.mark.skipif(not FULL_DATA, reason="full Fashion-MNIST not installed (run `make data`)")


@pytest.fixture(autouse=True)
def _figures_in_tmp(tmp_path, monkeypatch):
    """Nothing a test runs may write figures into the repo."""
    monkeypatch.setenv("VISUAL_SEARCH_FIGURES", str(tmp_path / "figures"))


@pytest.fixture(scope="session")
def sample() -> data.Sample:
    return data.load_sample()
