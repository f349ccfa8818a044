"""Image metadata: super-category tags, seeded tag noise of exactly the asked share, a kNN tag vote that agrees with
scikit-learn, the filter and the hybrid ranking (and how they relate), and the measured gain and its loss to noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.neighbors import KNeighborsClassifier

from visual_search import data, evalset
from visual_search.embed import embed
from visual_search.errors import TopicsError
from visual_search.index import exact_search
from visual_search.topics import metadata as md


@pytest.fixture(scope="module")
def vectors(sample, encoder):
    return embed(encoder, sample.query_images), embed(encoder, sample.gallery_images)


# ---- tags ------------------------------------------------------------------------------------------


def test_super_category_tags_follow_the_table():
    labels = np.arange(10)
    tags = md.super_category_tags(labels)
    for s, name in enumerate(data.SUPER_CATEGORY_NAMES):
        assert set(np.flatnonzero(tags == s)) == set(data.SUPER_CATEGORIES[name])


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_noisy_tags_change_exactly_the_share_and_always_to_another_tag(rate):
    clean = md.super_category_tags(np.repeat(np.arange(10), 101))  # 1,010 tags
    noisy = md.noisy_tags(clean, rate, seed=3)
    assert noisy.dtype == np.int64 and noisy.shape == clean.shape
    assert int((noisy != clean).sum()) == round(rate * len(clean))
    assert noisy.min() >= 0 and noisy.max() < md.N_TAGS
    assert np.array_equal(noisy, md.noisy_tags(clean, rate, seed=3))
    if 0 < rate < 1:
        assert not np.array_equal(noisy, md.noisy_tags(clean, rate, seed=4))


def test_a_replaced_tag_is_uniform_over_the_other_tags():
    clean = np.zeros(20_000, dtype=np.int64)
    noisy = md.noisy_tags(clean, 1.0, seed=0)
    counts = np.bincount(noisy, minlength=md.N_TAGS)
    assert counts[0] == 0
    assert stats.chisquare(counts[1:]).pvalue > 1e-3


def test_predicted_tags_agree_with_sklearn_knn_where_the_vote_has_no_tie(sample, vectors):
    queries, gallery = vectors
    gallery_tags = md.super_category_tags(sample.gallery_labels)
    predicted = md.predict_tags(queries, gallery, gallery_tags, k=10)
    assert (predicted == md.super_category_tags(sample.query_labels)).mean() > 0.9  # measured 0.96 on the sample
    knn = KNeighborsClassifier(n_neighbors=10, metric="cosine", algorithm="brute").fit(gallery, gallery_tags)
    _, ids = exact_search(queries, gallery, 10)
    counts = np.stack([np.bincount(gallery_tags[row], minlength=md.N_TAGS) for row in ids])
    clear = (counts == counts.max(axis=1, keepdims=True)).sum(axis=1) == 1
    assert clear.mean() > 0.9
    assert np.array_equal(predicted[clear], knn.predict(queries[clear]))
    # a tie goes to the tag of the nearest of the tied voters
    tied = np.flatnonzero(~clear)
    for q in tied:
        top = np.flatnonzero(counts[q] == counts[q].max())
        assert predicted[q] == next(t for t in gallery_tags[ids[q]] if t in top)


# ---- rankings --------------------------------------------------------------------------------------


def test_visual_ranking_is_the_exact_search(vectors):
    queries, gallery = vectors
    ranked = md.rank_visual(md.visual_similarities(queries, gallery), k=50)
    _, ids = exact_search(queries, gallery, 50)
    assert (ranked == ids).mean() > 0.999  # the two products round differently: a near-tie may swap


def test_worked_example_of_filter_and_hybrid():
    sims = np.array([[0.9, 0.5, 0.45, 0.2]], np.float32)
    q, g = np.array([0]), np.array([1, 0, 0, 1])
    assert md.rank_filtered(sims, q, g, k=4).tolist() == [[1, 2, 0, 3]]
    assert md.rank_hybrid(sims, q, g, weight=0.1, k=4).tolist() == [[0, 1, 2, 3]]  # 0.9 vs 0.6, 0.55
    assert md.rank_hybrid(sims, q, g, weight=0.5, k=4).tolist() == [[1, 2, 0, 3]]  # 1.0, 0.95 beat 0.9
    np.testing.assert_allclose(md.hybrid_scores(sims, q, g, 0.5), [[0.9, 1.0, 0.95, 0.2]], rtol=1e-6)


def test_filter_is_the_hybrids_limit_and_weight_zero_is_visual(sample, vectors):
    queries, gallery = vectors
    sims = md.visual_similarities(queries, gallery)
    q_tags = md.super_category_tags(sample.query_labels)
    g_tags = md.noisy_tags(md.super_category_tags(sample.gallery_labels), 0.3, seed=0)
    filtered = md.rank_filtered(sims, q_tags, g_tags, k=len(gallery))
    assert np.array_equal(md.rank_hybrid(sims, q_tags, g_tags, weight=3.0, k=len(gallery)), filtered)
    assert np.array_equal(md.rank_hybrid(sims, q_tags, g_tags, weight=0.0, k=100), md.rank_visual(sims, k=100))
    for row, tag, sim in zip(filtered[:20], q_tags, sims):
        match = g_tags[row] == tag
        n = int(match.sum())
        assert match[:n].all() and not match[n:].any()  # every match first, then the back-fill
        assert (np.diff(sim[row[:n]]) <= 0).all() and (np.diff(sim[row[n:]]) <= 0).all()  # each part in visual order


# ---- the measurement -------------------------------------------------------------------------------


def test_tags_help_when_clean_and_the_filter_fails_first_when_noisy(encoder):
    r = md.evaluate_metadata(noise_rates=(0.0, 0.3, 0.5), n_queries=100, encoder=encoder)
    assert r["noise_rates"] == [0.0, 0.3, 0.5] and r["n_queries"] == 100 and r["n_gallery"] == 2_500
    visual_ndcg, visual_map = r["visual"]["nDCG@10"], r["visual"]["mAP@100"]
    f_ndcg, f_map = r["nDCG@10"]["filter, user tag"], r["mAP@100"]["filter, user tag"]
    h_ndcg, h_map = r["nDCG@10"]["hybrid, user tag"], r["mAP@100"]["hybrid, user tag"]
    # measured (100 queries, weight 0.1): visual 0.811 / 0.189; clean filter 0.850 / 0.249, hybrid 0.831 / 0.214;
    # at noise 0.5 the filter 0.783 / 0.147, the hybrid 0.813 / 0.193
    assert f_ndcg[0] > visual_ndcg + 0.02 and f_map[0] > visual_map + 0.03
    assert h_ndcg[0] > visual_ndcg + 0.01 and h_map[0] > visual_map + 0.015
    assert f_ndcg[2] < visual_ndcg - 0.01 and f_map[2] < visual_map - 0.02
    assert h_ndcg[2] > visual_ndcg - 0.01 and h_ndcg[2] > f_ndcg[2] + 0.015
    assert f_map[0] > f_map[1] > f_map[2]
    assert r["mAP@100"]["filter, predicted tag"][0] > visual_map + 0.02
    assert r["predicted tag accuracy"][0] > 0.9 and r["predicted tag accuracy"][2] < r["predicted tag accuracy"][0]
    assert set(r["nDCG@10"]) == set(md.METHODS) and all(len(v) == 3 for v in r["mAP@100"].values())


# ---- bad input -------------------------------------------------------------------------------------


def test_tag_functions_refuse_bad_input():
    tags = np.array([0, 1, 2, 3, 4])
    vecs = np.eye(5, dtype=np.float32)
    cases = [
        (lambda: md.super_category_tags([0, 10]), "labels"),
        (lambda: md.super_category_tags(np.array([0.0, 1.0])), "labels"),
        (lambda: md.noisy_tags(tags, -0.1), "noise_rate"),
        (lambda: md.noisy_tags(tags, 1.1), "noise_rate"),
        (lambda: md.noisy_tags(tags, float("nan")), "noise_rate"),
        (lambda: md.noisy_tags(tags, "0.1"), "noise_rate"),
        (lambda: md.noisy_tags(tags, 0.1, seed=-1), "seed"),
        (lambda: md.noisy_tags(tags, 0.1, n_tags=1), "n_tags"),
        (lambda: md.noisy_tags(np.array([0, 5]), 0.1), "tags must be tags in 0..4"),
        (lambda: md.noisy_tags(np.array([[0, 1]]), 0.1), "tags must be a non-empty integer array"),
        (lambda: md.noisy_tags(np.array([], dtype=int), 0.1), "tags"),
        (lambda: md.noisy_tags([[0, 1], [2]], 0.1), "tags must be a non-empty integer array"),
        (lambda: md.predict_tags(vecs, vecs[:, :4], tags), "gallery_vectors must have 5 columns"),
        (lambda: md.predict_tags(vecs, vecs, tags[:4]), "gallery_tags must have 5 entries"),
        (lambda: md.predict_tags(vecs, vecs, tags, k=6), "k must"),
        (lambda: md.predict_tags(vecs.astype(np.int64), vecs, tags), "query_vectors"),
        (lambda: md.predict_tags(np.full((1, 5), np.nan, np.float32), vecs, tags), "query_vectors contains NaN"),
        (lambda: md.visual_similarities(np.zeros((1, 5), np.float32), vecs), "zero vector"),
    ]
    for call, match in cases:
        with pytest.raises(TopicsError, match=match):
            call()


def test_rankings_and_measurement_refuse_bad_input(encoder):
    sims = np.random.default_rng(0).random((3, 6)).astype(np.float32)
    q, g = np.array([0, 1, 2]), np.array([0, 1, 2, 0, 1, 2])
    cases = [
        (lambda: md.rank_visual(sims.astype(np.int64)), "similarities"),
        (lambda: md.rank_visual(np.full((2, 2), np.inf, np.float32)), "similarities contains NaN"),
        (lambda: md.rank_visual(sims, k=0), "k must"),
        (lambda: md.rank_visual(sims, k=7), "k must"),
        (lambda: md.rank_filtered(sims, q[:2], g, k=3), "query_tags must have 3 entries"),
        (lambda: md.rank_filtered(sims, q, g[:5], k=3), "gallery_tags must have 6 entries"),
        (lambda: md.rank_filtered(sims, q, -g, k=3), "gallery_tags must be tags >= 0"),
        (lambda: md.rank_hybrid(sims, q, g, weight=-1.0, k=3), "weight"),
        (lambda: md.hybrid_scores(sims, q.astype(float), g), "query_tags"),
        (lambda: md.evaluate_metadata(noise_rates=(), encoder=encoder), "noise_rates"),
        (lambda: md.evaluate_metadata(noise_rates="0.1", encoder=encoder), "noise_rates"),
        (lambda: md.evaluate_metadata(noise_rates=(0.0, 2.0), encoder=encoder), "noise_rates entry"),
        (lambda: md.evaluate_metadata(weight=float("inf"), encoder=encoder), "weight"),
        (lambda: md.evaluate_metadata(n_queries=0, encoder=encoder), "n_queries"),
        (lambda: md.evaluate_metadata(graded="graded", encoder=encoder), "graded"),
        (lambda: md.evaluate_metadata(encoder="cnn", graded=evalset.load_graded_eval()), "encoder"),
    ]
    for call, match in cases:
        with pytest.raises(TopicsError, match=match):
            call()
