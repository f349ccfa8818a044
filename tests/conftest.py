"""Shared fixtures. Every test runs in fast mode, however pytest is started."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ["VISUAL_SEARCH_FAST"] = "1"  # before the library is imported anywhere: small data, nothing written to figures/ or results/
# One thread for OpenMP (Faiss, torch) and BLAS, in this process and the notebook kernels it starts:
# `make test` runs two pytest workers on two cores, and more threads than cores only thrash.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import faiss  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from visual_search import data  # noqa: E402

faiss.omp_set_num_threads(1)
torch.set_num_threads(1)


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
def _outputs_in_tmp(tmp_path, monkeypatch):
    """Nothing a test runs may write figures or results into the repo (or share them with another worker)."""
    monkeypatch.setenv("VISUAL_SEARCH_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("VISUAL_SEARCH_RESULTS", str(tmp_path / "results"))


@pytest.fixture(scope="session")
def sample() -> data.Sample:
    return data.load_sample()


@pytest.fixture
def torch_load_calls(monkeypatch) -> list:
    """Every ``torch.load`` call from now on, as ``(file, weights_only)``; the loads still happen."""
    calls = []
    real_load = torch.load

    def spy(f, *args, **kwargs):
        calls.append((f, kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


# ---- the sample-gallery service data dir, shared by the service and online-evaluation tests ----------
@pytest.fixture(scope="module")
def encoder():
    from visual_search.models import load_pretrained

    return load_pretrained()


@pytest.fixture(scope="module")
def template(tmp_path_factory, encoder) -> Path:
    """A built sample-gallery data dir, closed (index saved): built once per module, copied per test."""
    from visual_search.service import VisualSearchService, load_gallery

    path = tmp_path_factory.mktemp("template") / "data"
    VisualSearchService(path, encoder, gallery=load_gallery("sample"), progress=False).close()
    return path


@pytest.fixture
def data_dir(template, tmp_path) -> Path:
    """A private copy of ``template`` for a test that writes (copying is milliseconds; building is a second)."""
    path = tmp_path / "data"
    shutil.copytree(template, path)
    return path


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 worker slots, started once per test process and stopped at the end.

    Tests that need Ray take this fixture; nothing else starts or stops Ray.
    """
    from visual_search.scale import ray_runtime

    ray = ray_runtime.start(num_cpus=2)
    yield ray
    ray_runtime.stop()
