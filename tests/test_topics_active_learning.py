"""Active learning: the simulated annotator's error rate, the candidate pool, the pairwise head (its logits against
scikit-learn's cosine, training that fits the answers and ranks unseen pairs better by scikit-learn's AUC), uncertainty sampling, the interpolated labels-to-target, and
the measured win of uncertainty over random sampling on the sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import cosine_similarity

from visual_search.embed import embed
from visual_search.errors import TopicsError
from visual_search.topics import active_learning as al


@pytest.fixture(scope="module")
def vectors(sample, encoder):
    return embed(encoder, sample.gallery_images), embed(encoder, sample.query_images)


# ---- the annotator and the pool ------------------------------------------------------------------


def test_a_perfect_annotator_answers_the_truth_and_counts_its_answers():
    labels = np.repeat(np.arange(10), 20)
    pairs = al.candidate_pairs(len(labels), 500, seed=1)
    annotator = al.SimulatedAnnotator(labels)
    answers = annotator.label(pairs)
    assert answers.dtype == np.int64 and set(np.unique(answers)) <= {0, 1}
    assert np.array_equal(answers, (labels[pairs[:, 0]] == labels[pairs[:, 1]]).astype(np.int64))
    annotator.label(pairs[:7])
    assert annotator.n_answers == 507


def test_a_noisy_annotator_is_wrong_at_its_rate_and_reproducibly():
    labels = np.repeat(np.arange(10), 100)
    pairs = al.candidate_pairs(len(labels), 20_000, seed=0)
    truth = (labels[pairs[:, 0]] == labels[pairs[:, 1]]).astype(np.int64)
    answers = al.SimulatedAnnotator(labels, error_rate=0.2, seed=5).label(pairs)
    wrong = float((answers != truth).mean())
    assert abs(wrong - 0.2) < 4 * math.sqrt(0.2 * 0.8 / len(pairs))  # a binomial share, four standard errors
    assert np.array_equal(answers, al.SimulatedAnnotator(labels, error_rate=0.2, seed=5).label(pairs))
    assert not np.array_equal(answers, al.SimulatedAnnotator(labels, error_rate=0.2, seed=6).label(pairs))


def test_candidate_pairs_are_distinct_ordered_and_can_be_all_pairs():
    pairs = al.candidate_pairs(2_000, 5_000, seed=3)
    assert pairs.shape == (5_000, 2) and pairs.dtype == np.int64
    assert (pairs[:, 0] < pairs[:, 1]).all() and pairs.min() >= 0 and pairs.max() < 2_000
    assert len(np.unique(pairs, axis=0)) == len(pairs)
    assert np.array_equal(pairs, al.candidate_pairs(2_000, 5_000, seed=3))
    every = al.candidate_pairs(6, 15, seed=0)  # all 6 * 5 / 2 pairs
    assert {tuple(p) for p in every.tolist()} == {(i, j) for i in range(6) for j in range(i + 1, 6)}


# ---- the model -----------------------------------------------------------------------------------


def test_logits_are_scale_times_cosine_plus_bias_as_scikit_learn_computes_the_cosine(vectors):
    gallery, _ = vectors
    rng = np.random.default_rng(0)
    model = al.PairModel(rng.normal(size=(64, 64)).astype(np.float32), scale=3.0, bias=-1.0)
    pairs = al.candidate_pairs(len(gallery), 200, seed=0)
    projected = gallery @ model.weight
    expected = 3.0 * cosine_similarity(projected)[pairs[:, 0], pairs[:, 1]] - 1.0
    np.testing.assert_allclose(model.logits(gallery, pairs), expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(model.project(gallery), axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(al.PairModel.identity(64).project(gallery), gallery, atol=1e-5)  # the frozen embedding


def test_training_fits_the_answers_and_the_anchor_holds_the_frozen_embedding(sample, vectors):
    gallery, _ = vectors
    pairs = al.candidate_pairs(len(gallery), 600, seed=2)
    answers = al.SimulatedAnnotator(sample.gallery_labels).label(pairs)

    def balanced_accuracy(model: al.PairModel) -> float:
        said_yes = model.logits(gallery, pairs) > 0
        return float(np.mean([said_yes[answers == 1].mean(), (~said_yes[answers == 0]).mean()]))

    frozen = al.PairModel.identity(64)
    model = al.train_pair_model(gallery, pairs, answers, steps=200)
    assert balanced_accuracy(frozen) < 0.6 and balanced_accuracy(model) > 0.95  # the answers it saw: measured 0.52 -> 1.00
    fresh = al.candidate_pairs(len(gallery), 20_000, seed=9)  # pairs it never saw (almost all)
    truth = al.SimulatedAnnotator(sample.gallery_labels).label(fresh)
    auc = [roc_auc_score(truth, m.logits(gallery, fresh)) for m in (frozen, model)]
    assert auc[1] > auc[0] + 0.08  # measured 0.665 -> 0.810
    assert np.array_equal(model.weight, al.train_pair_model(gallery, pairs, answers, steps=200).weight)  # deterministic
    held = al.train_pair_model(gallery, pairs, answers, steps=200, anchor=1e6)
    assert np.abs(held.weight - np.eye(64)).max() < 0.05 < np.abs(model.weight - np.eye(64)).max()


def test_uncertainty_sampling_picks_the_smallest_margins(vectors):
    gallery, _ = vectors
    pairs = al.candidate_pairs(len(gallery), 3_000, seed=4)
    model = al.PairModel.identity(64)
    pick = al.select_uncertain(model, gallery, pairs, 100)
    margin = np.abs(model.logits(gallery, pairs))
    assert len(set(pick.tolist())) == 100
    assert margin[pick].max() <= np.delete(margin, pick).min()
    assert np.all(np.diff(margin[pick]) >= 0)  # most uncertain first


def test_labels_to_reach_interpolates_as_numpy_does():
    labels, curve = [0, 100, 200, 300], [0.70, 0.74, 0.80, 0.79]
    for target in (0.70, 0.72, 0.74, 0.77, 0.80):
        assert al.labels_to_reach(labels, curve, target) == pytest.approx(np.interp(target, curve[:3], labels[:3]))
    assert math.isnan(al.labels_to_reach(labels, curve, 0.81))
    assert al.labels_to_reach(labels, [0.7, 0.9, 0.6, 0.95], 0.8) == pytest.approx(50.0)  # the first crossing


# ---- the loop and the measurement ----------------------------------------------------------------


def test_a_campaign_starts_at_the_frozen_embedding_and_noisy_random_labels_hurt(sample, vectors):
    gallery, queries = vectors
    pool = al.candidate_pairs(len(gallery), 5_000, seed=0)
    args = (gallery, sample.gallery_labels, queries, sample.query_labels, pool)
    frozen = al.class_precision_at_k(queries, sample.query_labels, gallery, sample.gallery_labels)
    run = al.run_active_learning("random", *args, rounds=8, round_size=100, error_rate=0.2)
    assert run["labels"] == list(range(0, 900, 100)) and len(run["P@10"]) == 9
    assert run["P@10"][0] == frozen
    # symmetric noise on a pool that is 90% "no" makes about half the "yes" answers wrong: measured 0.782 -> 0.724
    assert run["P@10"][-1] < frozen - 0.02
    assert 0.05 < run["positive share"] < 0.15


def test_uncertainty_sampling_beats_random_sampling_on_the_sample(encoder):
    result = al.evaluate_active_learning(encoder=encoder)  # fast mode: 8 rounds of 100, one campaign
    random, uncertain = result["P@10 random"], result["P@10 uncertainty"]
    assert result["labels"] == list(range(0, 900, 100))
    assert random[0] == uncertain[0] == result["P@10 frozen"]
    # measured on seeds 0, 1, 2: uncertainty 0.816, 0.809, 0.816; random 0.789, 0.789, 0.797; frozen 0.782
    assert uncertain[-1] > random[-1] + 0.01
    assert uncertain[-1] > result["P@10 frozen"] + 0.015
    assert result["labels saved"] > 200  # measured 644 of 800
    assert result["labels to target random"] == 800
    assert result["labels to target uncertainty"] + result["labels saved"] == pytest.approx(800)
    assert result["positive share uncertainty"] > 2 * result["positive share random"]  # measured 0.52 and 0.10


def test_bad_input_is_refused_with_its_name(sample, vectors):
    gallery, queries = vectors
    labels = sample.gallery_labels
    pairs = al.candidate_pairs(len(gallery), 300, seed=0)
    answers = al.SimulatedAnnotator(labels).label(pairs)
    model = al.PairModel.identity(64)
    run_args = (gallery, labels, queries, sample.query_labels, pairs)
    cases = [
        (lambda: al.SimulatedAnnotator(labels, error_rate=0.6), "error_rate"),
        (lambda: al.SimulatedAnnotator(labels, seed=-1), "seed"),
        (lambda: al.SimulatedAnnotator(labels.astype(float)), "labels must be a non-empty integer array"),
        (lambda: al.SimulatedAnnotator([[0, 1], [2]]), "labels must be a non-empty integer array"),
        (lambda: al.SimulatedAnnotator(-labels), "labels must be class labels >= 0"),
        (lambda: al.SimulatedAnnotator(labels).label(np.array([[0, 0]])), "pairs: row 0 pairs image 0 with itself"),
        (lambda: al.SimulatedAnnotator(labels).label(np.array([[0, 2000]])), "pairs must hold image ids in 0..1999"),
        (lambda: al.SimulatedAnnotator(labels).label(np.array([0, 1])), "pairs must be a non-empty integer array"),
        (lambda: al.candidate_pairs(1, 1), "n_images"),
        (lambda: al.candidate_pairs(4, 7), "n_pairs"),
        (lambda: al.candidate_pairs(4, 2, seed=2**32), "seed"),
        (lambda: al.PairModel.identity(0), "dim"),
        (lambda: model.project(gallery[:, :8]), "vectors must have 64 columns"),
        (lambda: model.project(np.zeros((2, 64), np.float32)), "zero vector"),
        (lambda: model.project(np.full((2, 64), np.nan, np.float32)), "vectors contains NaN"),
        (lambda: al.train_pair_model(gallery, pairs, answers[:-1]), "answers must be 300 values of 0 or 1"),
        (lambda: al.train_pair_model(gallery, pairs, answers * 2), "answers must be 300 values of 0 or 1"),
        (lambda: al.train_pair_model(gallery, pairs, answers, steps=0), "steps"),
        (lambda: al.train_pair_model(gallery, pairs, answers, lr=0.0), "lr"),
        (lambda: al.train_pair_model(gallery, pairs, answers, anchor=-1.0), "anchor"),
        (lambda: al.train_pair_model(gallery.astype(np.int64), pairs, answers), "vectors must be a non-empty float array"),
        (lambda: al.select_uncertain("model", gallery, pairs, 3), "model must be a PairModel"),
        (lambda: al.select_uncertain(model, gallery, pairs, 301), "n must"),
        (lambda: al.labels_to_reach([0, 100], [0.5], 0.5), "labels and curve"),
        (lambda: al.labels_to_reach([100, 0], [0.5, 0.6], 0.5), "labels must be increasing"),
        (lambda: al.labels_to_reach([0, 100], [0.5, 0.6], float("nan")), "target"),
        (lambda: al.class_precision_at_k(queries, sample.query_labels[:3], gallery, labels), "query_labels must have 500 entries"),
        (lambda: al.class_precision_at_k(queries, sample.query_labels, gallery, labels, k=0), "k must"),
        (lambda: al.run_active_learning("greedy", *run_args), "strategy must be one of random, uncertainty"),
        (lambda: al.run_active_learning("random", *run_args, rounds=4, round_size=100), "rounds"),
        (lambda: al.run_active_learning("random", *run_args, round_size=0), "round_size"),
        (lambda: al.run_active_learning("random", gallery, labels, queries[:, :8], sample.query_labels, pairs), "query_vectors must have 64 columns"),
        (lambda: al.evaluate_active_learning(rounds=0, encoder="cnn"), "rounds"),
        (lambda: al.evaluate_active_learning(pool_size=10, encoder="cnn"), "pool_size"),
        (lambda: al.evaluate_active_learning(repeats=0, encoder="cnn"), "repeats"),
        (lambda: al.evaluate_active_learning(error_rate=0.9, encoder="cnn"), "error_rate"),
        (lambda: al.evaluate_active_learning(k=0, encoder="cnn"), "k must"),
        (lambda: al.evaluate_active_learning(seed=2**32 - 1, repeats=2, encoder="cnn"), "seed \\+ repeats"),
        (lambda: al.evaluate_active_learning(sample="sample"), "sample must be"),
        (lambda: al.evaluate_active_learning(encoder="cnn"), "encoder must be"),
    ]
    for call, match in cases:
        with pytest.raises(TopicsError, match=match):
            call()
