"""The study's building blocks: heterogeneous users, click pairs, click fine-tuning's checks, offline scores.

Tolerances: a Beta(0.5, 1.5) propensity has standard deviation 0.25, so the mean of
4,000 users has a standard error of 0.004; it is checked within 0.02 (5 SE). Offline
scores are deterministic and compared to the reference pipeline within 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.data import load_sample
from visual_search.embed import embed, raw_pixel_embeddings
from visual_search.errors import ModelError, OnlineError
from visual_search.evalset import evaluate_rankings, load_graded_eval, rank_raw_pixels
from visual_search.models import load_pretrained, raw_pixel_encoder
from visual_search.online import study
from visual_search.online.position_bias import ips_weights
from visual_search.online.study import ClickPairs, StudyData, click_pairs, finetune_on_clicks, ips, offline_scores, order_agreement
from visual_search.online.users import ATTRACTIVENESS, PositionBasedModel, SimulationSummary, UserPopulation
from visual_search.service.core import Gallery

USERS = [f"user-{i}" for i in range(4000)]


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def evalset():
    return load_graded_eval()


@pytest.fixture(scope="module")
def tiny_data(sample, evalset):
    """A 60-image gallery (ids are positions) and 20 query images: enough for pair ids, no training needed."""
    gallery = Gallery(sample.gallery_images[:60], sample.gallery_labels[:60], [f"train:{i}" for i in sample.gallery_index[:60]], name="tiny")
    return StudyData(gallery, sample.query_images[:20], sample.query_labels[:20], evalset.subset(10, n_gallery=50))


# ---------------------------------------------------------------------- UserPopulation
def test_a_user_is_the_same_user_every_time():
    pop = UserPopulation(seed=3)
    for user in ("ann", "bob", "user-17"):
        assert pop(user) == pop(user) == UserPopulation(seed=3)(user)
        assert isinstance(pop(user), PositionBasedModel)
        assert pop.propensity(user) == pop.propensity(user)
    assert pop.propensity("ann") != pop.propensity("bob")
    assert pop("ann").attractiveness != pop("bob").attractiveness
    assert len({pop.propensity(u) for u in USERS[:200]}) == 200  # every user their own propensity
    assert UserPopulation(seed=4).propensity("ann") != pop.propensity("ann")  # the seed makes another population


@pytest.mark.parametrize("a, b", [(0.5, 1.5), (2.0, 2.0), (1.0, 9.0)])
def test_mean_propensity_is_the_beta_mean(a, b):
    pop = UserPopulation(propensity_a=a, propensity_b=b)
    c = np.array([pop.propensity(u) for u in USERS])
    assert pop.mean_propensity == pytest.approx(a / (a + b))
    assert c.mean() == pytest.approx(a / (a + b), abs=0.02)
    assert ((c >= 0) & (c <= 1)).all()


def test_the_population_average_attractiveness_matches_the_base_table():
    """attractiveness = min(1, c / mean(c) * base): uncapped grades average to base; the capped top grade falls below it."""
    pop = UserPopulation()
    table = np.array([pop(u).attractiveness for u in USERS[:2000]])
    assert table.shape == (2000, 6) and (table <= 1).all() and (table >= 0).all()
    np.testing.assert_allclose(table.mean(axis=0)[:3], np.asarray(ATTRACTIVENESS)[:3], rtol=0.08)
    assert table.mean(axis=0)[5] < ATTRACTIVENESS[5] and table.max() == 1.0
    c = pop.propensity(USERS[0])
    np.testing.assert_allclose(pop(USERS[0]).attractiveness, np.minimum(1, c / pop.mean_propensity * np.asarray(ATTRACTIVENESS)))


@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0, 2.0])
def test_every_user_shares_the_examination_curve(eta):
    pop = UserPopulation(eta=eta)
    truth = 1 / np.arange(1, 11) ** eta
    np.testing.assert_allclose(pop.examination_curve(10), truth)
    for user in ("ann", "bob"):
        np.testing.assert_allclose(pop(user).examination_curve(10), truth)


@pytest.mark.parametrize("kwargs, match", [
    (dict(eta=-1), "eta"),
    (dict(eta=float("nan")), "eta"),
    (dict(propensity_a=0), "propensity_a"),
    (dict(propensity_b=-1.0), "propensity_b"),
    (dict(propensity_a="x"), "propensity_a"),
    (dict(base=(0.1, 0.2)), "attractiveness"),
    (dict(base=(0, 0, 0, 0, 0, 1.5)), "attractiveness"),
    (dict(seed=-1), "seed"),
])
def test_bad_populations_are_refused(kwargs, match):
    with pytest.raises(OnlineError, match=match):
        UserPopulation(**kwargs)


def test_a_user_id_must_be_a_string():
    with pytest.raises(OnlineError, match="user"):
        UserPopulation().propensity(17)
    with pytest.raises(OnlineError, match="user"):
        UserPopulation()(None)


# --------------------------------------------------------------------- order agreement
def test_order_agreement():
    same = order_agreement([0.1, 0.5, 0.3, 0.9], [1.0, 2.0, 1.5, 4.0])
    assert same["kendall_tau"] == pytest.approx(1.0) and same["same_order"] is True
    reverse = order_agreement([0.1, 0.5, 0.3, 0.9], [4.0, 2.0, 3.0, 1.0])
    assert reverse["kendall_tau"] == pytest.approx(-1.0) and reverse["same_order"] is False
    swapped = order_agreement([1, 2, 3, 4], [1, 2, 4, 3])
    assert swapped["kendall_tau"] == pytest.approx(4 / 6) and swapped["same_order"] is False
    assert 0 <= swapped["p_value"] <= 1


@pytest.mark.parametrize("offline, online", [([1, 2, 3], [1, 2]), ([1], [1]), ([[1, 2]], [[1, 2]]), ([], [])])
def test_order_agreement_refuses_mismatched_scores(offline, online):
    with pytest.raises(OnlineError, match="offline, online"):
        order_agreement(offline, online)


# ------------------------------------------------------------------------ click pairs
def summary_of(*impressions) -> SimulationSummary:
    return SimulationSummary(users=len(impressions), queries=len(impressions), impressions=[
        {"query_id": f"q{i}", "user": f"u{i}", "query_index": q, "shown": shown, "grades": [0] * len(shown), "clicked_ranks": ranks}
        for i, (q, shown, ranks) in enumerate(impressions)])


def test_click_pairs_are_every_click_of_the_simulation():
    pairs = click_pairs(summary_of((3, [10, 11, 12], [2, 3]), (5, [7, 8], []), (9, [40, 41, 42, 43], [1])))
    assert pairs.query.tolist() == [3, 3, 9]
    assert pairs.clicked.tolist() == [11, 12, 40]
    assert pairs.rank.tolist() == [2, 3, 1]
    assert all(x.dtype == np.int64 for x in (pairs.query, pairs.clicked, pairs.rank))


def test_click_pairs_need_a_click():
    with pytest.raises(OnlineError, match="no clicks"):
        click_pairs(summary_of((3, [10, 11], []), (4, [], [])))
    with pytest.raises(OnlineError, match="no clicks"):
        click_pairs(SimulationSummary())


def test_ips_weights_of_pairs():
    pairs = ClickPairs(np.array([0, 1, 2]), np.array([5, 6, 7]), np.array([1, 2, 3]))
    theta = np.array([1.0, 0.5, 0.05])
    np.testing.assert_allclose(ips(pairs, theta), [1.0, 2.0, 10.0])  # 1 / 0.05 = 20, clipped at 10
    np.testing.assert_allclose(ips(pairs, theta, max_weight=np.inf), ips_weights(pairs.rank, theta, max_weight=np.inf))


# ------------------------------------------------------------------ click fine-tuning
@pytest.fixture
def pairs():
    return ClickPairs(np.arange(8) % 20, np.arange(8) * 3, np.arange(8) % 3 + 1)


@pytest.fixture
def recorded(monkeypatch):
    """Replace the trainer: record what it was given, return the encoder untouched."""
    calls = []

    def fake(encoder, images, query_ids, positive_ids, **kwargs):
        calls.append((encoder, images, np.asarray(query_ids), np.asarray(positive_ids), kwargs))
        return encoder

    monkeypatch.setattr(study, "finetune_on_pairs", fake)
    return calls


@pytest.mark.parametrize("weights", [
    np.ones(7), np.ones(9), np.ones((8, 1)), np.ones((2, 4)), -np.ones(8), np.r_[np.ones(7), -0.1], np.r_[np.ones(7), np.nan],
    np.r_[np.ones(7), np.inf], np.zeros(8),
])
def test_bad_weights_are_refused_before_training(tiny_data, pairs, recorded, weights):
    with pytest.raises(OnlineError, match="weights") as err:
        finetune_on_clicks(raw_pixel_encoder(), tiny_data, pairs, weights, epochs=1, batch_size=4, progress=False)
    assert recorded == []  # nothing trained
    assert "8" in str(err.value)  # names the count it expected


@pytest.mark.parametrize("weights", [["a"] * 8, [object()] * 8])
def test_non_numeric_weights_are_refused_with_an_online_error(tiny_data, pairs, recorded, weights):
    with pytest.raises(OnlineError, match="weights"):
        finetune_on_clicks(raw_pixel_encoder(), tiny_data, pairs, weights, epochs=1, batch_size=4, progress=False)
    assert recorded == []


def test_finetune_on_clicks_passes_the_pairs_to_the_trainer(tiny_data, pairs, recorded):
    base = load_pretrained()
    out = finetune_on_clicks(base, tiny_data, pairs, None, epochs=1, batch_size=4, seed=2, progress=False)
    (encoder, images, query_ids, positive_ids, kwargs) = recorded[0]
    assert out is encoder and encoder is not base  # a copy is trained, never the caller's encoder
    n_gallery = len(tiny_data.gallery.images)
    assert len(images) == n_gallery + len(tiny_data.query_images)
    np.testing.assert_array_equal(images[:n_gallery], tiny_data.gallery.images)
    np.testing.assert_array_equal(images[n_gallery:], tiny_data.query_images)
    assert query_ids.tolist() == (pairs.query + n_gallery).tolist() and positive_ids.tolist() == pairs.clicked.tolist()
    assert kwargs == {"epochs": 1, "batch_size": 4, "seed": 2, "progress": False}

    only_first = np.r_[1.0, np.zeros(7)]  # all the weight on pair 0: every resampled pair is pair 0
    finetune_on_clicks(base, tiny_data, pairs, only_first, epochs=1, batch_size=4, progress=False)
    _, _, query_ids, positive_ids, _ = recorded[1]
    assert query_ids.tolist() == [pairs.query[0] + n_gallery] * 8 and positive_ids.tolist() == [pairs.clicked[0]] * 8
    weighted = np.arange(1.0, 9.0)
    finetune_on_clicks(base, tiny_data, pairs, weighted, epochs=1, batch_size=4, seed=5, progress=False)
    finetune_on_clicks(base, tiny_data, pairs, weighted, epochs=1, batch_size=4, seed=5, progress=False)
    assert len(recorded[2][2]) == 8 and recorded[2][2].tolist() == recorded[3][2].tolist()  # seeded resampling, same size


# ------------------------------------------------------------------- offline scores
def test_raw_pixel_encoder_is_raw_pixel_embeddings(sample):
    x = sample.query_images[:64]
    got = embed(raw_pixel_encoder(), x, progress=False)
    want = raw_pixel_embeddings(x)
    assert got.shape == want.shape == (64, 784)
    assert np.max(np.abs(got - want)) < 1e-6
    assert raw_pixel_encoder().version == raw_pixel_encoder().version
    assert raw_pixel_encoder().version != load_pretrained().version


@pytest.mark.parametrize("kwargs", [dict(image_size=0), dict(in_channels=0), dict(image_size="28")])
def test_raw_pixel_encoder_refuses_bad_sizes(kwargs):
    with pytest.raises(ModelError, match=next(iter(kwargs))):
        raw_pixel_encoder(**kwargs)


def test_offline_scores_of_raw_pixels_match_the_reference_ranking(evalset):
    subset = evalset.subset(50, n_gallery=300)
    got = offline_scores(raw_pixel_encoder(), subset)
    want = evaluate_rankings(rank_raw_pixels(subset), subset)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert 0 < got["nDCG@10"] <= 1


def test_ips_clips_an_estimate_that_left_zero_to_one():
    pairs = ClickPairs(np.array([0, 0, 0]), np.array([1, 2, 3]), np.array([1, 2, 3]))
    np.testing.assert_allclose(ips(pairs, [1.0, 0.0, 1.3]), [1.0, 10.0, 1.0])  # no clicks at rank 2; noise above 1 at rank 3


def test_mean_diff_test_is_welch():
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.normal(0.10, 0.05, 300), rng.normal(0.11, 0.07, 200)
    summary = lambda x: {"mean": x.mean(), "var": x.var(ddof=1), "n": len(x)}  # noqa: E731
    got = study.mean_diff_test(summary(a), summary(b))
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert got.p_value == pytest.approx(ref.pvalue) and got.diff == pytest.approx(b.mean() - a.mean())
    ci = ref.confidence_interval(0.95)
    assert got.ci == pytest.approx((ci.low, ci.high))
    with pytest.raises(OnlineError, match="at least 2 queries"):
        study.mean_diff_test({"mean": 0.1, "var": 0.0, "n": 1}, summary(b))


# ---------------------------------------------------------------------- run_ab per user, power_comparison
def test_run_ab_summarises_per_user_when_users_search_repeatedly(tiny_data, tmp_path):
    """With 3 searches per user the A/B unit is the user: per-user means over their own searches, from the log."""
    from visual_search.online.logs import read_impressions
    from visual_search.service.core import VisualSearchService

    service = VisualSearchService(tmp_path / "d", load_pretrained(), gallery=tiny_data.gallery, progress=False)
    try:
        service.add_variant("pixels", raw_pixel_encoder())
        out = study.run_ab(service, tiny_data, UserPopulation(), {"simclr": None, "pixels": "pixels"}, 10, control="simclr",
                           name="rep", searches_per_user=3)
        imps = [i for i in read_impressions(service.catalog) if i.experiment and i.experiment.get("experiment") == "rep"]
    finally:
        service.close()
    assert out["searches_per_user"] == 3 and len(imps) == 60
    for arm in ("simclr", "pixels"):
        mine = [i for i in imps if i.experiment["variant"] == arm]
        users = sorted({i.user for i in mine})
        per_user = [np.mean([len(set(i.clicked_ranks)) / len(i.shown) for i in mine if i.user == u]) for u in users]
        assert out["per_user"][arm]["ctr"]["n"] == len(users) and out["per_query_ctr"][arm]["n"] == 3 * len(users)
        assert out["per_user"][arm]["ctr"]["mean"] == pytest.approx(np.mean(per_user))
        assert out["per_user"][arm]["ctr"]["var"] == pytest.approx(np.var(per_user, ddof=1))
    assert set(out["ctr_tests"]) == {"pixels"}


def _unit(mean, var, n=500):
    return {"mean": mean, "var": var, "n": n, "ci95": (mean - 0.01, mean + 0.01)}


def test_power_comparison_counts_queries_for_both_designs():
    from visual_search.online.power import ab_mean_queries_for_power, interleaving_queries_for_power

    ab = {"searches_per_user": 4, "per_user": {"a": {"ctr": _unit(0.10, 0.004), "click_rate": _unit(0.5, 0.05)},
                                               "b": {"ctr": _unit(0.11, 0.004), "click_rate": _unit(0.5, 0.05)}}}
    wins = {"a": 300, "b": 360, "tie": 340}
    row, curves = study.power_comparison(ab, wins, "a", "b", n_sims=200)
    n = row["queries_analytic"]
    assert n["ab_per_user_ctr"] == 2 * 4 * ab_mean_queries_for_power(0.10, 0.004, 0.11, 0.004)
    assert n["ab_per_user_click_rate"] is None and "no difference" in row["notes"]["ab_per_user_click_rate"]  # equal means
    assert n["interleaving"] == interleaving_queries_for_power(300, 360, 340)
    assert row["ratio_ab_to_interleaving"] == pytest.approx(n["ab_per_user_ctr"] / n["interleaving"])
    assert set(curves) == {"A/B per-user ctr", "interleaving"}
    ab_curve = curves["A/B per-user ctr"]
    reached = ab_curve.ns[np.flatnonzero(ab_curve.power >= 0.8)[0]]
    assert n["ab_per_user_ctr"] <= reached <= 1.2 * n["ab_per_user_ctr"]  # the curve counts queries, 4 per user
