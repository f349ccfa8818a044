"""Growth curves: the power-law fit against closed forms, the operating point, and the real-like vectors."""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.errors import ScaleError
from visual_search.scale import growth
from visual_search.scale.growth import GrowthMethod, fit_exponent, fits, measure_growth, measure_point


@pytest.mark.parametrize("exponent, c", [(-1.0, 3e7), (-0.5, 2e5), (0.0, 40.0), (0.3, 0.01)])
def test_fit_recovers_an_exact_power_law(exponent, c):
    ns = np.array([1e4, 1e5, 1e6])
    fit = fit_exponent(ns, c * ns**exponent)
    assert fit["exponent"] == pytest.approx(exponent, abs=1e-9)
    assert fit["c"] == pytest.approx(c, rel=1e-9)
    assert fit["max_rel_error"] < 1e-9 and (fit["n_min"], fit["n_max"]) == (1e4, 1e6)


def test_fit_is_least_squares_in_log_space():
    ns, values = np.array([1e4, 1e5, 1e6]), np.array([1000.0, 300.0, 50.0])
    slope, intercept = np.polyfit(np.log(ns), np.log(values), 1)
    fit = fit_exponent(ns, values)
    assert fit["exponent"] == pytest.approx(slope) and fit["c"] == pytest.approx(np.exp(intercept))
    assert fit["max_rel_error"] > 0.01  # not a power law: the misfit shows


@pytest.mark.parametrize("ns, values, message", [
    ([1e4], [1.0], "two or more"),
    ([1e4, 1e5], [1.0], "two or more"),
    ([1e4, 1e4], [1.0, 2.0], "all equal"),
    ([1e4, 1e5], [1.0, 0.0], "positive"),
    ([1e4, np.nan], [1.0, 2.0], "finite"),
])
def test_fit_refuses_what_it_cannot_fit(ns, values, message):
    with pytest.raises(ScaleError, match=message):
        fit_exponent(ns, values)


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    x = (centres[rng.integers(40, size=4000)] + 0.3 * rng.normal(size=(4000, 16))).astype(np.float32)
    q = (centres[rng.integers(40, size=50)] + 0.3 * rng.normal(size=(50, 16))).astype(np.float32)
    return x, q


def test_operating_point_is_the_first_sweep_point_that_reaches_the_target(vectors):
    x, q = vectors
    truth = growth.exact_search(q, x, 10, metric="l2")[1]
    ivf = GrowthMethod("ivf", "IVF", lambda n: ("ivf", {"nlist": 32}), "nprobe", lambda n: (1, 2, 4, 8, 16, 32))
    row = measure_point(ivf, x, q, truth, recall_target=0.9)
    assert row["reached_target"] and row["recall@10"] >= 0.9
    assert row["sweep"][-1]["search"] == row["search"]  # it stopped there: the cheaper points fell short
    assert all(p["recall@10"] < 0.9 for p in row["sweep"][:-1])
    # the point it picked, searched again, gives that recall
    index = growth.build_index("ivf", 16, nlist=32)
    index.train(x).add(x)
    assert growth.recall_at_k(index.search(q, 10, params=row["search"])[1], truth) == pytest.approx(row["recall@10"])


def test_an_unreachable_target_takes_the_knee_and_says_so(vectors):
    x, q = vectors
    truth = growth.exact_search(q, x, 10, metric="l2")[1]
    pq = GrowthMethod("ivfpq", "IVF-PQ", lambda n: ("ivfpq", {"nlist": 8, "m": 2, "nbits": 4}), "nprobe", lambda n: (1, 2, 4, 8))
    row = measure_point(pq, x, q, truth, recall_target=0.999)
    assert not row["reached_target"]
    best = max(p["recall@10"] for p in row["sweep"])
    assert len(row["sweep"]) == 4 and row["recall@10"] >= best - 0.01


def test_growth_rows_and_fits_cover_every_method_and_size(vectors):
    x, q = vectors
    methods = [m for m in growth.default_methods() if m.key in ("exact", "ivf", "hnsw")]
    rows = measure_growth(x, q, sizes=(1000, 2000, 4000), methods=methods, progress=False)
    assert [(r["key"], r["n"]) for r in rows] == [(m.key, n) for n in (1000, 2000, 4000) for m in methods]
    exact = [r for r in rows if r["key"] == "exact"]
    assert all(r["recall@10"] == 1.0 and r["bytes_per_vector"] == pytest.approx(4 * 16 + 8) for r in exact)
    fitted = fits(rows)
    assert set(fitted) == {"exact", "ivf", "hnsw"}
    assert all(set(f) >= {"qps", "latency_ms", "build_s"} for f in fitted.values())


@pytest.mark.parametrize("sizes, message", [((10, 5000), "sizes"), ((0,), "sizes")])
def test_growth_refuses_sizes_outside_the_data(vectors, sizes, message):
    x, q = vectors
    with pytest.raises(ScaleError, match=message):
        measure_growth(x, q, sizes=sizes, progress=False)


def test_real_like_vectors_are_unit_embeddings_reproducible_by_seed(sample):
    images = sample.gallery_images[:300]
    a = growth.growth_vectors(500, 20, seed=3, images=images, progress=False)
    b = growth.growth_vectors(500, 20, seed=3, images=images, progress=False)
    c = growth.growth_vectors(500, 20, seed=4, images=images, progress=False)
    assert a[0].shape == (500, 64) and a[1].shape == (20, 64) and a[0].dtype == np.float32
    assert np.allclose(np.linalg.norm(a[0], axis=1), 1, atol=1e-4)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])
    # augmented copies of the same 300 images: each base vector's nearest other is far closer than a typical pair
    sims = a[0] @ a[0].T
    np.fill_diagonal(sims, -1)
    typical = np.median(sims[~np.eye(len(sims), dtype=bool)])
    assert np.median(sims.max(axis=1)) > typical + 0.4, (np.median(sims.max(axis=1)), typical)
