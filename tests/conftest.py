"""Shared fixtures. Tests run with VISUAL_SEARCH_FAST=1 (make test sets it)."""

from __future__ import annotations

import pytest

from visual_search import data


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
