"""Contrastive losses and training data: hand-written losses against slow loops and torch, data points, sources of positives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visual_search import contrastive as C
from visual_search import data


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- nt_xent ---------------------------------------------------------------------------------


def _nt_xent_slow(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """For each of the 2N anchors: -log(exp(s_pos / t) / sum_{k != i} exp(s_ik / t)), averaged."""
    z = torch.cat([z1, z2]).tolist()
    n2 = len(z)

    def cos(u: list[float], v: list[float]) -> float:
        return sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))

    total = 0.0
    for i in range(n2):
        twin = (i + n2 // 2) % n2
        denominator = sum(math.exp(cos(z[i], z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(cos(z[i], z[twin]) / t) / denominator)
    return total / n2


def _nt_xent_logits(z1: torch.Tensor, z2: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each anchor's 2N-1 candidates (every other view), as logits [2N, 2N-1], and the twin's position."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = len(z)
    rows, targets = [], []
    for i in range(n2):
        others = [k for k in range(n2) if k != i]
        rows.append(torch.stack([z[i] @ z[k] for k in others]) / t)
        targets.append(others.index((i + n2 // 2) % n2))
    return torch.stack(rows), torch.tensor(targets)


@pytest.mark.parametrize("n, d, t", [(2, 3, 0.5), (3, 5, 0.1), (5, 8, 1.0), (8, 4, 2.0), (4, 16, 0.07)])
def test_nt_xent_equals_slow_double_loop(n, d, t):
    z1, z2 = _randn(n, d, seed=n), _randn(n, d, seed=100 + n)
    assert C.nt_xent(z1, z2, t).item() == pytest.approx(_nt_xent_slow(z1, z2, t), rel=1e-9)


@pytest.mark.parametrize("n, d, t", [(2, 3, 0.5), (6, 7, 0.2), (4, 16, 0.07)])
def test_nt_xent_equals_cross_entropy_on_independent_logits(n, d, t):
    z1, z2 = _randn(n, d, seed=1), _randn(n, d, seed=2)
    logits, targets = _nt_xent_logits(z1, z2, t)
    assert C.nt_xent(z1, z2, t).item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-9)


@pytest.mark.parametrize("n, t", [(3, 0.5), (5, 0.2)])
def test_nt_xent_is_softmax_cross_entropy_over_the_other_views(n, t):
    # SimCLR's data point: the query is a view, its candidates are the 2N-1 other views, the label is the twin.
    z1, z2 = _randn(n, 6, seed=3), _randn(n, 6, seed=4)
    z = torch.cat([z1, z2])
    others = torch.tensor([[k for k in range(2 * n) if k != i] for i in range(2 * n)])
    labels = torch.tensor([((i + n) % (2 * n)) - (1 if (i + n) % (2 * n) > i else 0) for i in range(2 * n)])
    loss = C.softmax_cross_entropy(z, z[others], labels, kind="cosine", temperature=t)
    assert loss.item() == pytest.approx(C.nt_xent(z1, z2, t).item(), rel=1e-9)


@pytest.mark.parametrize("n, t", [(2, 0.5), (4, 0.1), (16, 1.0)])
def test_nt_xent_identical_embeddings_is_log_2n_minus_1(n, t):
    z = torch.ones(n, 5, dtype=torch.float64)
    assert C.nt_xent(z, z.clone(), t).item() == pytest.approx(math.log(2 * n - 1), rel=1e-12)


def test_nt_xent_gradcheck():
    z1 = _randn(3, 4, seed=5).requires_grad_()
    z2 = _randn(3, 4, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: C.nt_xent(a, b, 0.5), (z1, z2))


# ---- similarities ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", C.SIMILARITY_KINDS)
def test_similarities_match_explicit_formulas(kind):
    q, c = _randn(3, 4, seed=7), _randn(3, 5, 4, seed=8)
    formula = {
        "dot": lambda u, v: float(u @ v),
        "cosine": lambda u, v: float(u @ v / (u.norm() * v.norm())),
        "euclidean": lambda u, v: -float(((u - v) ** 2).sum()),
    }[kind]
    expected = torch.tensor([[formula(q[b], c[b, j]) for j in range(5)] for b in range(3)], dtype=torch.float64)
    got = C.similarities(q, c, kind)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected)


def test_euclidean_ranks_like_cosine_on_unit_vectors():
    q, c = F.normalize(_randn(4, 8, seed=9), dim=-1), F.normalize(_randn(4, 20, 8, seed=10), dim=-1)
    cosine, euclidean = C.similarities(q, c, "cosine"), C.similarities(q, c, "euclidean")
    torch.testing.assert_close(euclidean, 2 * cosine - 2)  # -|q - c|^2 = 2 q.c - 2 for unit vectors
    assert torch.equal(torch.argsort(cosine, dim=1, descending=True), torch.argsort(euclidean, dim=1, descending=True))


def test_dot_differs_from_cosine_when_lengths_differ():
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[[1.0, 0.0], [10.0, 5.0]]])  # the second is less aligned but much longer
    assert C.similarities(q, c, "cosine").argmax().item() == 0
    assert C.similarities(q, c, "dot").argmax().item() == 1


# ---- softmax cross-entropy and triplet -------------------------------------------------------


@pytest.mark.parametrize("kind", C.SIMILARITY_KINDS)
@pytest.mark.parametrize("t", [0.05, 0.5, 1.0, 3.0])
def test_softmax_cross_entropy_equals_torch_cross_entropy(kind, t):
    q, c = _randn(5, 6, seed=11), _randn(5, 7, 6, seed=12)
    labels = torch.tensor([0, 6, 3, 3, 1])
    expected = F.cross_entropy(C.similarities(q, c, kind) / t, labels)
    assert C.softmax_cross_entropy(q, c, labels, kind=kind, temperature=t).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("kind", C.SIMILARITY_KINDS)
def test_softmax_cross_entropy_gradcheck(kind):
    q = _randn(2, 3, seed=13).requires_grad_()
    c = _randn(2, 4, 3, seed=14).requires_grad_()
    labels = torch.tensor([1, 3])
    assert torch.autograd.gradcheck(lambda a, b: C.softmax_cross_entropy(a, b, labels, kind=kind, temperature=0.7), (q, c))


def test_softmax_cross_entropy_near_zero_for_a_separated_positive_and_tiny_temperature():
    q = F.normalize(_randn(4, 8, seed=15), dim=1)
    c = -q[:, None, :].repeat(1, 6, 1)  # negatives point the opposite way
    labels = torch.tensor([0, 5, 2, 3])
    c[torch.arange(4), labels] = q  # the positive is the query's direction
    assert C.softmax_cross_entropy(q, c, labels, temperature=0.01).item() < 1e-12
    assert C.softmax_cross_entropy(q, c, labels, temperature=1.0).item() > 0.01  # a mild temperature cannot get there


@pytest.mark.parametrize("kind", C.SIMILARITY_KINDS)
@pytest.mark.parametrize("n", [2, 5, 64])
def test_softmax_cross_entropy_uniform_similarities_is_log_n(kind, n):
    q = _randn(3, 4, seed=16)
    c = _randn(3, 1, 4, seed=17).repeat(1, n, 1)  # all candidates identical
    labels = torch.tensor([0, n - 1, n // 2])
    assert C.softmax_cross_entropy(q, c, labels, kind=kind, temperature=0.3).item() == pytest.approx(math.log(n), rel=1e-9)


@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_triplet_loss_equals_torch(margin, seed):
    a, p, n = (F.normalize(_randn(16, 5, seed=seed * 3 + i), dim=1) for i in range(3))
    expected = torch.nn.TripletMarginLoss(margin=margin, p=2)(a, p, n)
    assert C.triplet_loss(a, p, n, margin=margin).item() == pytest.approx(expected.item(), abs=1e-5)


def test_triplet_loss_normalises_and_hinges():
    a = torch.tensor([[1.0, 0.0]])
    assert C.triplet_loss(a, 7 * a, -3 * a, margin=0.5).item() == 0.0  # d(a,p)=0, d(a,n)=2: satisfied, no loss
    assert C.triplet_loss(a, -a, a, margin=0.5).item() == pytest.approx(2.5)  # d(a,p)=2, d(a,n)=0


# ---- data points -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 20])
def test_make_datapoints_labels_point_at_positives_and_negatives_are_clean(n):
    rng = np.random.default_rng(0)
    query_ids = rng.integers(0, 50, size=40)
    positive_ids = rng.integers(0, 50, size=40)
    pool = np.arange(50)
    candidates, labels = C.make_datapoints(query_ids, positive_ids, pool, n, seed=3)
    assert candidates.shape == (40, n) and labels.shape == (40,)
    assert candidates.dtype == np.int64 and labels.dtype == np.int64
    assert ((0 <= labels) & (labels < n)).all()
    np.testing.assert_array_equal(candidates[np.arange(40), labels], positive_ids)
    for b in range(40):
        negatives = np.delete(candidates[b], labels[b])
        assert query_ids[b] not in negatives and positive_ids[b] not in negatives
        assert len(set(negatives.tolist())) == n - 1  # distinct
        assert np.isin(negatives, pool).all()


def test_make_datapoints_deterministic_per_seed_and_positions_vary():
    ids = np.arange(200)
    first = C.make_datapoints(ids, ids, ids, 8, seed=1)
    again = C.make_datapoints(ids, ids, ids, 8, seed=1)
    other = C.make_datapoints(ids, ids, ids, 8, seed=2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert set(first[1].tolist()) == set(range(8))  # the positive is not always in the same slot


def test_make_datapoints_uses_the_whole_pool_when_it_is_just_big_enough():
    # pool {0..5}; query 0 and positive 1 leave exactly 4 negatives for n = 5
    candidates, labels = C.make_datapoints([0], [1], np.arange(6), 5, seed=0)
    assert sorted(np.delete(candidates[0], labels[0]).tolist()) == [2, 3, 4, 5]
    with pytest.raises(C.ContrastiveError, match="n=6 needs n-1=5 negatives but pool_ids has only 4"):
        C.make_datapoints([0], [1], np.arange(6), 6, seed=0)


# ---- sources of positives --------------------------------------------------------------------


def test_positives_from_augmentation():
    q, p = C.positives_from_augmentation(5)
    np.testing.assert_array_equal(q, np.arange(5))
    np.testing.assert_array_equal(p, np.arange(5))
    assert q.dtype == p.dtype == np.int64


@pytest.fixture(scope="module")
def gallery_labels() -> np.ndarray:
    return data.load_sample().gallery_labels  # 2,000 images, 200 per class


@pytest.fixture(scope="module")
def click_log(gallery_labels) -> C.ClickLog:
    return C.simulate_click_log(gallery_labels, n_sessions=4000, n_shown=10, seed=0)


def test_click_log_shapes_and_clicks_only_on_shown_items(click_log, gallery_labels):
    s = 4000
    assert len(click_log) == s
    assert click_log.query_ids.shape == (s,) and click_log.shown_ids.shape == (s, 10)
    assert click_log.clicked_ids.shape == (s,) and click_log.positions.shape == (s,)
    assert all(x.dtype == np.int64 for x in (click_log.query_ids, click_log.shown_ids, click_log.clicked_ids, click_log.positions))
    clicked = click_log.positions >= 0
    np.testing.assert_array_equal(clicked, click_log.clicked_ids >= 0)
    np.testing.assert_array_equal(click_log.shown_ids[clicked, click_log.positions[clicked]], click_log.clicked_ids[clicked])
    assert 0.2 < clicked.mean() < 0.95  # clicks are sparse: many sessions have none
    assert not (click_log.shown_ids == click_log.query_ids[:, None]).any()  # the query is not shown to itself
    assert all(len(set(row)) == 10 for row in click_log.shown_ids.tolist())


def test_click_log_position_bias_is_visible(click_log, gallery_labels):
    per_position = np.bincount(click_log.positions[click_log.positions >= 0], minlength=10)
    assert per_position[0] > 3 * per_position[5]
    flat = C.simulate_click_log(gallery_labels, n_sessions=4000, position_bias=0.0, seed=0)
    steep = C.simulate_click_log(gallery_labels, n_sessions=4000, position_bias=2.0, seed=0)

    def top_share(log: C.ClickLog) -> float:
        return float(np.mean(log.positions[log.positions >= 0] == 0))

    assert top_share(flat) < top_share(click_log) < top_share(steep)
    assert np.mean(flat.positions[flat.positions >= 0]) > np.mean(click_log.positions[click_log.positions >= 0])


def test_clicks_are_mostly_but_not_always_same_class(click_log, gallery_labels):
    q, p = C.positives_from_clicks(click_log)
    assert len(q) == int((click_log.clicked_ids >= 0).sum())
    chance = float(np.sum(np.bincount(gallery_labels) ** 2) / len(gallery_labels) ** 2)  # 0.1 on the balanced sample
    precision = C.positive_precision(q, p, gallery_labels)
    assert chance + 0.5 < precision < 0.99  # far above chance, yet noisy
    wrong = gallery_labels[p] != gallery_labels[q]
    same_super = data.SUPER_CATEGORY_OF_LABEL[gallery_labels[p]] == data.SUPER_CATEGORY_OF_LABEL[gallery_labels[q]]
    assert same_super[wrong].mean() > 0.5  # most wrong clicks are near misses (a shirt for a pullover)


def test_click_log_deterministic_per_seed(gallery_labels):
    a = C.simulate_click_log(gallery_labels, n_sessions=300, seed=5)
    b = C.simulate_click_log(gallery_labels, n_sessions=300, seed=5)
    c = C.simulate_click_log(gallery_labels, n_sessions=300, seed=6)
    for field in ("query_ids", "shown_ids", "clicked_ids", "positions"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.shown_ids, c.shown_ids)


def test_click_log_shows_the_given_ranking(gallery_labels):
    n_images = len(gallery_labels)
    ranking = (np.arange(n_images)[:, None] + np.arange(1, 13)[None, :]) % n_images  # the next 12 ids
    log = C.simulate_click_log(gallery_labels, n_sessions=50, n_shown=10, seed=0, ranking=ranking)
    np.testing.assert_array_equal(log.shown_ids, ranking[log.query_ids, :10])


def test_positives_from_labels_same_class_never_self(gallery_labels):
    q, p = C.positives_from_labels(gallery_labels, seed=0)
    np.testing.assert_array_equal(q, np.arange(len(gallery_labels)))
    assert (gallery_labels[p] == gallery_labels[q]).all()
    assert (p != q).all()
    assert C.positive_precision(q, p, gallery_labels) == 1.0
    assert len(np.unique(p)) > len(p) // 2  # a random partner, not always the same one
    np.testing.assert_array_equal(p, C.positives_from_labels(gallery_labels, seed=0)[1])
    # two images per class: each one's partner is the other
    np.testing.assert_array_equal(C.positives_from_labels(np.array([3, 1, 3, 1]))[1], [2, 3, 0, 1])


def test_combine_positives_and_precision_by_source(gallery_labels):
    aug = C.positives_from_augmentation(len(gallery_labels))
    human = C.positives_from_labels(gallery_labels, seed=1)
    clicks = C.positives_from_clicks(C.simulate_click_log(gallery_labels, n_sessions=500, seed=1))
    q, p = C.combine_positives(aug, clicks, human)
    assert len(q) == len(p) == len(aug[0]) + len(clicks[0]) + len(human[0])
    np.testing.assert_array_equal(q[len(aug[0]) : len(aug[0]) + len(clicks[0])], clicks[0])
    np.testing.assert_array_equal(p[-len(human[1]) :], human[1])
    assert C.positive_precision(*aug, gallery_labels) == 1.0
    assert C.positive_precision(*clicks, gallery_labels) < 1.0


# ---- augment_batch ---------------------------------------------------------------------------


def test_augment_batch_preserves_shape_and_range():
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = C.augment_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_augment_batch_gives_each_image_its_own_parameters():
    one = torch.zeros(1, 1, 28, 28)
    one[..., 6:22, 10:18] = 1.0
    out = C.augment_batch(one.repeat(8, 1, 1, 1), torch.Generator().manual_seed(0))
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat)
    assert (distances[~torch.eye(8, dtype=torch.bool)] > 1e-3).all()  # no two copies got the same view


def test_augment_batch_is_deterministic_with_a_seeded_generator():
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a = C.augment_batch(x, torch.Generator().manual_seed(7))
    b = C.augment_batch(x, torch.Generator().manual_seed(7))
    c = C.augment_batch(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---- bad input -------------------------------------------------------------------------------

_Q, _CAND, _LAB = torch.zeros(2, 3), torch.zeros(2, 4, 3), torch.tensor([0, 1])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: C.nt_xent(torch.zeros(3, 4), torch.zeros(2, 4)), "z1 and z2 must both be"),
        (lambda: C.nt_xent(torch.zeros(3, 4), torch.zeros(3, 4), 0.0), "temperature must be finite and positive"),
        (lambda: C.nt_xent(torch.zeros(3, 4), torch.zeros(3, 4), float("inf")), "temperature must be finite and positive"),
        (lambda: C.similarities(_Q, torch.zeros(2, 4, 5)), r"query \[2, 3\] and candidates \[2, 4, 5\]"),
        (lambda: C.similarities(torch.zeros(3, 3), _CAND), r"query \[3, 3\] and candidates"),
        (lambda: C.similarities(_Q, torch.zeros(2, 3)), "candidates: expected a float tensor"),
        (lambda: C.similarities(_Q, _CAND, "manhattan"), "kind must be one of"),
        (lambda: C.similarities(torch.zeros(2, 3, dtype=torch.int64), _CAND), "query: expected a float tensor"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, _LAB, temperature=0), "temperature must be a positive"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, _LAB, temperature=-1.0), "temperature must be a positive"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, torch.tensor([0, 4])), r"labels: every positive index must be in 0\.\.3"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, torch.tensor([0])), "labels: expected an int64 tensor"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, torch.tensor([0.0, 1.0])), "labels: expected an int64 tensor"),
        (lambda: C.triplet_loss(_Q, _Q, torch.zeros(3, 3)), "must share one non-empty shape"),
        (lambda: C.triplet_loss(_Q, _Q, _Q, margin=-0.1), "margin must be a positive"),
        (lambda: C.triplet_loss(_Q, _Q, _Q, margin=0), "margin must be a positive"),
        (lambda: C.make_datapoints([0, 1], [1], np.arange(10), 3), "query_ids .* and positive_ids .* same length"),
        (lambda: C.make_datapoints([0], [1], np.arange(10), 1), "n must be an integer >= 2"),
        (lambda: C.make_datapoints([0], [1], np.arange(10), 20), "n=20 needs n-1=19 negatives"),
        (lambda: C.make_datapoints([0], [1], np.array([0.5, 1.5]), 2), "pool_ids: expected a 1-D array of integer ids"),
        (lambda: C.positives_from_augmentation(0), "n_images must be an integer >= 1"),
        (lambda: C.simulate_click_log(np.array([0, 1, 12]), 5), r"labels: expected at least 2 class labels in 0\.\.9"),
        (lambda: C.simulate_click_log(np.array([0, 1, 2]), 5, n_shown=3), "n_shown=3 is more than the 2 images"),
        (lambda: C.simulate_click_log(np.array([0, 1, 2]), 0), "n_sessions must be an integer >= 1"),
        (lambda: C.simulate_click_log(np.array([0, 1, 2]), 5, n_shown=1, position_bias=-1.0), "position_bias must be"),
        (lambda: C.simulate_click_log(np.array([0, 1, 2]), 5, n_shown=2, ranking=np.zeros((3, 1), np.int64)), r"ranking: expected \[N=3, >= n_shown=2\]"),
        (lambda: C.simulate_click_log(np.array([0, 1, 2]), 5, n_shown=1, ranking=np.full((3, 1), 3)), r"ranking: ids must be in 0\.\.2"),
        (lambda: C.positives_from_clicks((np.zeros(2), np.zeros(2))), "log: expected a ClickLog"),
        (lambda: C.positives_from_labels(np.array([0, 0, 1])), "class 1 has a single image"),
        (lambda: C.combine_positives(), "give at least one"),
        (lambda: C.combine_positives((np.arange(3), np.arange(2))), r"pairs\[0\]: query_ids \[3\] and positive_ids \[2\]"),
        (lambda: C.positive_precision(np.array([0]), np.array([5]), np.array([0, 1])), r"positive_ids: ids must be in 0\.\.1"),
        (lambda: C.augment_batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)), "x: expected float images"),
        (lambda: C.augment_batch(torch.zeros(1, 8, 8)), "x: expected float images"),
    ],
)
def test_bad_input_raises(call, message):
    with pytest.raises(C.ContrastiveError, match=message):
        call()


def test_contrastive_error_is_a_value_error():
    assert issubclass(C.ContrastiveError, ValueError)


def test_augment_batch_keeps_float64():
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    out = C.augment_batch(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64 and out.shape == x.shape
