"""The graded evaluation set: the grading rule, the committed file, and its reproducibility."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import needs_full_data

from visual_search import evalset as E
from visual_search import viz
from visual_search.data import DataError, build_sample
from visual_search.embed import raw_pixel_embeddings
from visual_search.errors import VectorIndexError
from visual_search.index.exact import exact_search


@pytest.fixture(scope="module")
def ev() -> E.GradedEvalSet:
    return E.load_graded_eval()


def test_grading_rule():
    # queries: a Sneaker (7) and a Coat (4); gallery: Sneaker, Sandal, Coat, Shirt, Bag, copy of query 0
    grades = E.grade_matrix(np.array([7, 4]), np.array([7, 5, 4, 6, 8, 7]), np.array([-1, -1, -1, -1, -1, 0]))
    assert grades.tolist() == [[3, 1, 0, 0, 0, 5], [0, 0, 3, 1, 0, 0]]


def test_committed_eval_set_shape_and_grades(ev):
    assert len(ev) == 500 and ev.grades.shape == (500, 2500)
    np.testing.assert_array_equal(ev.grades, E.grade_matrix(ev.query_labels, ev.gallery_labels, ev.copy_of))
    assert (ev.grades == 5).sum(axis=1).tolist() == [1] * 500  # one planted copy per query
    assert (ev.grades >= E.RELEVANT_GRADE).sum(axis=1).min() > 1  # every query has relevant items
    assert E.EVAL_PATH.stat().st_size < 2_000_000


def test_grade_maps_and_relevant_sets(ev):
    small = ev.subset(10)
    maps, rel = small.grade_maps(), small.relevant_sets()
    assert len(maps) == len(rel) == 10
    for row, grade_map, relevant in zip(small.grades, maps, rel):
        assert all(row[g] == grade for g, grade in grade_map.items()) and 0 not in grade_map.values()
        assert relevant == {g for g, grade in grade_map.items() if grade >= 3}


def test_subset_is_class_balanced_and_keeps_copies_pointing_at_their_queries(ev):
    small = ev.subset(100)
    assert np.bincount(small.query_labels).tolist() == [10] * 10
    assert (small.copy_of >= 0).sum() == 100
    for q in range(100):
        assert np.flatnonzero(small.copy_of == q).tolist() == np.flatnonzero(small.grades[q] == 5).tolist()
    with pytest.raises(DataError, match="n_queries must be in 1..500"):
        ev.subset(0)


def test_perfect_ranking_scores_one(ev):
    small = ev.subset(20)
    ideal = E.rank_ideally(small)  # copy first, then same class
    scores = E.evaluate_rankings(ideal, small)
    assert scores["MRR"] == scores["P@10"] == scores["nDCG@10"] == 1.0
    # AP divides by ALL relevant items (250), so with 100 results even a perfect list scores 100/250
    assert scores["mAP@100"] == pytest.approx(100 / 250)
    # relevant per query: 200 same-class gallery images + 50 planted copies of same-class queries (its own included)
    assert (small.grades >= 3).sum(axis=1).tolist() == [250] * 20
    assert scores["R@10"] == pytest.approx(10 / 250)


def test_evaluate_rankings_checks_shape(ev):
    with pytest.raises(DataError, match=r"expected \[500, K >= 100\]"):
        E.evaluate_rankings(np.zeros((3, 100), dtype=np.int64), ev)
    with pytest.raises(DataError, match=r"got shape \[500, 10\]"):
        E.evaluate_rankings(np.zeros((500, 10), dtype=np.int64), ev)  # too short for mAP@100


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_ranks_unit_vectors_by_cosine_and_caps_k():
    """The one exact search the rankings use: metric="ip" on unit rows is cosine, ties to the lower id."""
    rng = np.random.default_rng(0)
    q, g = _unit(rng, 5, 8), _unit(rng, 50, 8)
    g[7] = g[3]  # a tie: the lower id comes first
    sims, ids = exact_search(q, g, 7, metric="ip")
    for row in range(5):
        brute = sorted(range(50), key=lambda j: (-float(q[row] @ g[j]), j))[:7]
        assert ids[row].tolist() == brute
        np.testing.assert_allclose(sims[row], [q[row] @ g[j] for j in brute], rtol=1e-5, atol=1e-6)
    assert sims.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(exact_search(q, g, 7, metric="cosine")[1], ids)
    # k is capped at the gallery size (cosine_rank used to refuse k > G)
    assert exact_search(q, g, 51, metric="ip")[1].shape == (5, 50)


def test_reference_rankings(ev):
    small = ev.subset(10)
    rankings = E.rank_all(small, k=100, seed=0)
    assert list(rankings) == ["random", "raw pixels", E.ORACLE]
    for ids in rankings.values():
        assert ids.shape == (10, 100) and ids.dtype.kind == "i"
        assert all(len(set(row.tolist())) == 100 for row in ids)  # distinct gallery ids
    np.testing.assert_array_equal(rankings["random"], E.rank_randomly(small, 100, seed=0))
    assert not np.array_equal(rankings["random"], E.rank_randomly(small, 100, seed=1))
    assert E.rank_raw_pixels(small, k=len(small.gallery_images) + 5).shape == (10, len(small.gallery_images))  # k capped
    scores = E.score_rankings(rankings, small)
    assert set(scores) == set(rankings)
    assert list(scores[E.ORACLE]["nDCG@k"]) == list(E.NDCG_KS)
    assert scores[E.ORACLE]["nDCG@10"] == 1.0 and scores["random"]["nDCG@10"] < scores["raw pixels"]["nDCG@10"]
    fig = viz.plot_scores(scores, "test")
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plot_scores_default_oracle_is_the_evalset_oracle():
    import inspect

    assert inspect.signature(viz.plot_scores).parameters["oracle"].default == E.ORACLE


def test_subset_of_the_gallery_keeps_the_copies_and_the_grades(ev):
    small = ev.subset(20, n_gallery=120)
    assert len(small) == 20 and len(small.gallery_images) == 120 and small.grades.shape == (20, 120)
    np.testing.assert_array_equal(small.grades, E.grade_matrix(small.query_labels, small.gallery_labels, small.copy_of))
    assert (small.grades == 5).sum(axis=1).tolist() == [1] * 20  # every kept query keeps its planted copy
    assert np.bincount(small.gallery_labels[small.copy_of < 0], minlength=10).min() >= 9  # ordinary items: all classes
    with pytest.raises(DataError, match="n_gallery must be in 20..2500"):
        ev.subset(20, n_gallery=19)


def test_load_rejects_a_broken_file(tmp_path):
    path = tmp_path / "broken.npz"
    np.savez(path, grades=np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(DataError, match="cannot load the graded evaluation set"):
        E.load_graded_eval(path)


@needs_full_data
def test_committed_files_rebuild_identically(sample, ev):
    """datasets/build_datasets.py is reproducible: same seed, same arrays."""
    rebuilt_sample = build_sample(seed=0)
    for name in rebuilt_sample.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(rebuilt_sample, name), getattr(sample, name), err_msg=name)
    rebuilt = E.build_graded_eval(rebuilt_sample, seed=0)
    for name in rebuilt.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(rebuilt, name), getattr(ev, name), err_msg=name)


@pytest.mark.parametrize(
    "bad, message",
    [(2500, r"id 2500 \(query 0, position 0\) is not a gallery id 0..2499"), (-1, "id -1"), (0.5, "must be integers")],
)
def test_evaluate_rankings_rejects_ids_that_are_not_gallery_ids(ev, bad, message):
    ranked = E.rank_ideally(ev).astype(type(bad) if isinstance(bad, float) else np.int64)
    ranked[0, 0] = bad
    with pytest.raises(DataError, match=message):
        E.evaluate_rankings(ranked, ev)


def test_load_rejects_grades_above_five(tmp_path, ev):
    path = tmp_path / "graded.npz"
    small = ev.subset(2)
    E.save_graded_eval(E.GradedEvalSet(**{**small.__dict__, "grades": small.grades + 5}), path)
    with pytest.raises(DataError, match="grades must be"):
        E.load_graded_eval(path)


def test_building_the_eval_set_leaves_the_global_rng_alone(sample):
    tiny = type(sample)(*(getattr(sample, f)[:5] for f in sample.__dataclass_fields__))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    E.build_graded_eval(tiny, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "queries, gallery, k, message",
    [
        (np.zeros((2, 4), np.float32), np.ones((3, 4), np.float32), -1, "k must be"),
        (np.zeros((2, 4), np.float32), np.ones((3, 4), np.float32), 1.5, "k must be"),
        (np.full((2, 4), np.nan, np.float32), np.ones((3, 4), np.float32), 1, "queries: .*NaN"),
        (np.zeros((2, 4), np.float32), np.full((3, 4), np.inf, np.float32), 1, "base: .*inf"),
        (np.zeros((2, 4), np.float32), np.ones((3, 2), np.float32), 1, "dimension"),
        (np.zeros((2, 4), np.float32), np.ones(4, np.float32), 1, "base: expected a 2-D array"),
        (np.zeros((2, 4), np.float32), np.zeros((0, 4), np.float32), 1, "empty"),
        ("not an array", np.ones((3, 4), np.float32), 1, "queries: dtype"),
    ],
)
def test_exact_search_rejects_bad_input(queries, gallery, k, message):
    """Bad input to the rankings' search fails with the index's error, naming what is wrong."""
    with pytest.raises(VectorIndexError, match=message):
        exact_search(queries, gallery, k, metric="ip")


# ---- unseen_edits: the grade-5 copies, made from edits no training recipe uses ----------------------
def test_unseen_edits_are_reproducible_and_keep_shape_and_dtype(sample):
    x = sample.query_images[:200]
    copies = E.unseen_edits(x, seed=3)
    assert copies.dtype == np.uint8 and copies.shape == x.shape
    np.testing.assert_array_equal(copies, E.unseen_edits(x, seed=3))
    assert not np.array_equal(copies, E.unseen_edits(x, seed=4))
    assert (copies != x).any(axis=(1, 2)).all()  # every copy gets at least one edit


def test_unseen_edits_of_the_committed_set_are_its_copies(ev):
    np.testing.assert_array_equal(E.unseen_edits(ev.query_images, seed=0), ev.gallery_images[ev.copy_of >= 0])


@pytest.mark.parametrize("family", E.UNSEEN_EDITS)
def test_each_edit_family_alone_edits_about_half_the_images(sample, family):
    """One family is applied with probability UNSEEN_EDIT_P (plus the copies where it is the forced one)."""
    x = sample.query_images
    changed = (E.unseen_edits(x, families=(family,)) != x).any(axis=(1, 2)).mean()
    assert 0.4 < changed < 0.7


def _raw_pixel_closeness(originals, copies, labels):
    """Per copy: is its nearest original (raw-pixel cosine) its own, and is its own closer than the median same-class original."""
    a, b = raw_pixel_embeddings(copies), raw_pixel_embeddings(originals)
    sims = a @ b.T
    own = np.diag(sims)
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    median_same = np.array([np.median(row[mask]) for row, mask in zip(sims, same)])
    return sims.argmax(axis=1) == np.arange(len(copies)), own > median_same


@pytest.mark.parametrize(
    "families, min_nearest, min_above_class",
    [
        # measured on the 500 sample queries: 1.0 / 1.0 (pixel values change, positions do not)
        (("jpeg", "sharpen_or_noise"), 0.95, 0.99),
        # measured: 0.33 / 0.91. A 1-2 px shift or a shrink moves every edge, which raw pixels cannot follow,
        # yet the copy stays closer to its own original than to a typical item of its class
        (E.UNSEEN_EDITS, 0.25, 0.85),
    ],
)
def test_copies_differ_from_their_originals_but_stay_close(sample, families, min_nearest, min_above_class):
    x, labels = sample.query_images, sample.query_labels
    copies = E.unseen_edits(x, families=families)
    nearest_is_own, above_class = _raw_pixel_closeness(x, copies, labels)
    assert nearest_is_own.mean() >= min_nearest and above_class.mean() >= min_above_class


def test_an_edit_is_not_a_flip(sample):
    """Shoes all point one way in Fashion-MNIST: a copy must be closer to its original than to the mirror image."""
    footwear = np.isin(sample.query_labels, [5, 7, 9])  # Sandal, Sneaker, Ankle boot
    x = sample.query_images[footwear]
    copies = raw_pixel_embeddings(E.unseen_edits(x))
    to_original = (copies * raw_pixel_embeddings(x)).sum(axis=1)
    to_mirror = (copies * raw_pixel_embeddings(x[:, :, ::-1].copy())).sum(axis=1)
    assert to_original.mean() > to_mirror.mean() + 0.2  # measured: 0.74 against 0.41 on the sample's gallery
    assert (to_original > to_mirror).mean() > 0.85  # measured: 0.92


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 28, 28), np.float32), "images: expected a uint8 .N, H, W. array, got float32"),
        (np.zeros((28, 28), np.uint8), r"got uint8 \[28, 28\]"),
        (np.zeros((2, 28, 28, 1), np.uint8), r"got uint8 \[2, 28, 28, 1\]"),
        ([[[0]]], "images: .*got list"),
    ],
)
def test_unseen_edits_rejects_bad_images(images, message):
    with pytest.raises(DataError, match=message):
        E.unseen_edits(images)


@pytest.mark.parametrize("families", [(), ("flip",), "jpeg"])
def test_unseen_edits_rejects_unknown_families(families):
    with pytest.raises(DataError, match="families"):
        E.unseen_edits(np.zeros((2, 28, 28), np.uint8), families=families)


def test_unseen_edits_is_fast_and_leaves_the_global_rngs_alone():
    x = np.random.default_rng(0).integers(0, 256, size=(2000, 28, 28), dtype=np.uint8)
    np.random.seed(7)
    torch.manual_seed(7)
    expected = np.random.rand(), torch.rand(1)
    np.random.seed(7)
    torch.manual_seed(7)
    start = time.perf_counter()
    E.unseen_edits(x)
    assert time.perf_counter() - start < 5  # about 0.3 s on one core; the issue asks < 5 s for 10,000
    assert np.random.rand() == expected[0] and torch.equal(torch.rand(1), expected[1])
