"""Contrastive losses and training data: hand-written losses against slow loops and torch, data points, sources of positives.

Also: ``visual_search.contrastive`` still offers every name the single module had (the
notebooks and the benchmark use ``contrastive.<name>``), and the modules of the split
import only modules to their left. The click log and the augmentations have their own
tests (test_clicks.py, test_augment.py).
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import visual_search
from visual_search import augment, clicks, data, errors
from visual_search import contrastive as C
from visual_search.contrastive import datapoints, losses


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- moco_infonce ----------------------------------------------------------------------------


def _moco_slow(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> float:
    """For each query: -log(exp(cos(q, k) / t) / (exp(cos(q, k) / t) + sum_j exp(cos(q, queue_j) / t))), averaged."""

    def cos(u: list[float], v: list[float]) -> float:
        return sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))

    total = 0.0
    for qi, ki in zip(q.tolist(), k.tolist()):
        positive = math.exp(cos(qi, ki) / t)
        total += -math.log(positive / (positive + sum(math.exp(cos(qi, nj) / t) for nj in queue.tolist())))
    return total / len(q)


@pytest.mark.parametrize("b, n_queue, d, t", [(1, 1, 3, 0.5), (3, 7, 5, 0.2), (8, 16, 4, 0.07), (4, 3, 8, 1.0)])
def test_moco_infonce_equals_slow_loop(b, n_queue, d, t):
    q, k, queue = _randn(b, d, seed=1), _randn(b, d, seed=2), _randn(n_queue, d, seed=3)
    assert C.moco_infonce(q, k, queue, t).item() == pytest.approx(_moco_slow(q, k, queue, t), rel=1e-9)


@pytest.mark.parametrize("b, t", [(2, 0.5), (5, 0.2)])
def test_moco_infonce_is_softmax_cross_entropy_with_the_key_first(b, t):
    # The design notes' data point: the query, then K + 1 candidates (its key first, then the queue), label 0.
    q, k, queue = _randn(b, 6, seed=4), _randn(b, 6, seed=5), _randn(9, 6, seed=6)
    candidates = torch.cat([k[:, None], queue.expand(b, -1, -1)], dim=1)
    expected = C.softmax_cross_entropy(q, candidates, torch.zeros(b, dtype=torch.long), kind="cosine", temperature=t)
    assert C.moco_infonce(q, k, queue, t).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("n_queue, t", [(1, 0.5), (15, 0.2), (4096, 1.0)])
def test_moco_infonce_identical_embeddings_is_log_k_plus_1(n_queue, t):
    z = torch.ones(3, 4, dtype=torch.float64)
    assert C.moco_infonce(z, z.clone(), torch.ones(n_queue, 4, dtype=torch.float64), t).item() == pytest.approx(math.log(n_queue + 1), rel=1e-12)


def test_moco_infonce_gradcheck():
    q, k, queue = (_randn(*shape, seed=s).requires_grad_() for s, shape in ((7, (3, 4)), (8, (3, 4)), (9, (5, 4))))
    assert torch.autograd.gradcheck(lambda a, b, c: C.moco_infonce(a, b, c, 0.5), (q, k, queue))


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.ones((2, 3)), _randn(2, 3), _randn(4, 3)), r"^q: expected a float tensor"),
        ((_randn(2, 3), _randn(2, 3).long(), _randn(4, 3)), r"^k: expected a float tensor"),
        ((_randn(2, 3), _randn(2, 3), _randn(0, 3)), r"^queue: expected a float tensor"),
        ((_randn(2, 3), _randn(3, 3), _randn(4, 3)), "must be one"),
        ((_randn(2, 3), _randn(2, 3), _randn(4, 2)), "must be one"),
        ((_randn(2, 3), _randn(2, 3), _randn(4, 3, dtype=torch.float32)), "share dtype"),
        ((torch.full((2, 3), float("nan"), dtype=torch.float64), _randn(2, 3), _randn(4, 3)), r"^q: the embeddings contain NaN"),
    ],
)
def test_moco_infonce_refuses_bad_input_by_name(args, message):
    with pytest.raises(errors.ContrastiveError, match=message):
        C.moco_infonce(*args)


@pytest.mark.parametrize("t", [0, -1.0, float("nan"), "0.2"])
def test_moco_infonce_refuses_a_bad_temperature(t):
    with pytest.raises(errors.ContrastiveError, match="temperature"):
        C.moco_infonce(_randn(2, 3), _randn(2, 3), _randn(4, 3), t)


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


@pytest.mark.parametrize("n, d, t", [(2, 3, 0.5), (5, 8, 0.1), (16, 4, 2.0)])
def test_nt_xent_is_symmetric(n, d, t):
    # swapping the two views only reorders the 2N anchors, whose losses are averaged
    z1, z2 = _randn(n, d, seed=20 + n), _randn(n, d, seed=40 + n)
    torch.testing.assert_close(C.nt_xent(z1, z2, t), C.nt_xent(z2, z1, t))
    f1, f2 = z1.float(), (3 * z2).float()
    torch.testing.assert_close(C.nt_xent(f1, f2, t), C.nt_xent(f2, f1, t))


def test_nt_xent_accepts_numpy_and_integral_temperatures():
    z1, z2 = _randn(3, 4, seed=1), _randn(3, 4, seed=2)
    expected = C.nt_xent(z1, z2, 1.0)
    torch.testing.assert_close(C.nt_xent(z1, z2, 1), expected)
    torch.testing.assert_close(C.nt_xent(z1, z2, np.float32(1.0)), expected)


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


def test_clicks_are_mostly_but_not_always_same_class(click_log, gallery_labels):
    q, p = C.positives_from_clicks(click_log)
    assert len(q) == int((click_log.clicked_ids >= 0).sum())
    chance = float(np.sum(np.bincount(gallery_labels) ** 2) / len(gallery_labels) ** 2)  # 0.1 on the balanced sample
    precision = C.positive_precision(q, p, gallery_labels)
    assert chance + 0.5 < precision < 0.99  # far above chance, yet noisy
    wrong = gallery_labels[p] != gallery_labels[q]
    same_super = data.SUPER_CATEGORY_OF_LABEL[gallery_labels[p]] == data.SUPER_CATEGORY_OF_LABEL[gallery_labels[q]]
    assert same_super[wrong].mean() > 0.5  # most wrong clicks are near misses (a shirt for a pullover)


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
    clicked = C.positives_from_clicks(C.simulate_click_log(gallery_labels, n_sessions=500, seed=1))
    q, p = C.combine_positives(aug, clicked, human)
    assert len(q) == len(p) == len(aug[0]) + len(clicked[0]) + len(human[0])
    np.testing.assert_array_equal(q[len(aug[0]) : len(aug[0]) + len(clicked[0])], clicked[0])
    np.testing.assert_array_equal(p[-len(human[1]) :], human[1])
    assert C.positive_precision(*aug, gallery_labels) == 1.0
    assert C.positive_precision(*clicked, gallery_labels) < 1.0


# ---- bad input -------------------------------------------------------------------------------

_Q, _CAND, _LAB = torch.zeros(2, 3), torch.zeros(2, 4, 3), torch.tensor([0, 1])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: C.nt_xent(torch.zeros(3, 4), torch.zeros(2, 4)), "z1 and z2 must both be"),
        (lambda: C.nt_xent(torch.zeros(3, 4), torch.zeros(3, 4), 0.0), "temperature must be a finite number > 0"),
        (lambda: C.nt_xent(torch.zeros(3, 4), torch.zeros(3, 4), float("inf")), "temperature must be a finite number > 0"),
        (lambda: C.nt_xent(torch.zeros(3, 4), torch.zeros(3, 4), -0.5), "temperature must be a finite number > 0, got -0.5"),
        (lambda: C.nt_xent(torch.zeros(3, 4), torch.zeros(3, 4), float("nan")), "temperature must be a finite number > 0, got nan"),
        (lambda: C.nt_xent(torch.zeros(1, 4), torch.zeros(1, 4)), r"z1 and z2 must both be \[N >= 2, D >= 1\]"),
        (lambda: C.nt_xent(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)), r"z1 and z2 must both be \[N >= 2, D >= 1\]"),
        (lambda: C.similarities(_Q, torch.zeros(2, 4, 5)), r"query \[2, 3\] and candidates \[2, 4, 5\]"),
        (lambda: C.similarities(torch.zeros(3, 3), _CAND), r"query \[3, 3\] and candidates"),
        (lambda: C.similarities(_Q, torch.zeros(2, 3)), "candidates: expected a float tensor"),
        (lambda: C.similarities(_Q, _CAND, "manhattan"), "kind must be one of"),
        (lambda: C.similarities(torch.zeros(2, 3, dtype=torch.int64), _CAND), "query: expected a float tensor"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, _LAB, temperature=0), "temperature must be a finite number > 0"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, _LAB, temperature=-1.0), "temperature must be a finite number > 0"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, torch.tensor([0, 4])), r"labels: every positive index must be in 0\.\.3"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, torch.tensor([0])), "labels: expected an int64 tensor"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, torch.tensor([0.0, 1.0])), "labels: expected an int64 tensor"),
        (lambda: C.triplet_loss(_Q, _Q, torch.zeros(3, 3)), "must share one non-empty shape"),
        (lambda: C.triplet_loss(_Q, _Q, _Q, margin=-0.1), "margin must be a finite number > 0"),
        (lambda: C.triplet_loss(_Q, _Q, _Q, margin=0), "margin must be a finite number > 0"),
        (lambda: C.make_datapoints([0, 1], [1], np.arange(10), 3), "query_ids .* and positive_ids .* same length"),
        (lambda: C.make_datapoints([0], [1], np.arange(10), 1), "n must be an integer >= 2"),
        (lambda: C.make_datapoints([0], [1], np.arange(10), 20), "n=20 needs n-1=19 negatives"),
        (lambda: C.make_datapoints([0], [1], np.array([0.5, 1.5]), 2), "pool_ids: expected a 1-D array of integer ids"),
        (lambda: C.positives_from_augmentation(0), "n_images must be an integer >= 1"),
        (lambda: C.positives_from_augmentation(3.0), "n_images must be an integer >= 1, got 3.0"),
        (lambda: C.make_datapoints([0], [1], np.arange(10), 2, seed=-1), r"seed must be an integer in \[0, 4294967295\]"),
        (lambda: C.positives_from_labels(np.array([0, 0]), seed=2**32), r"seed must be an integer in \[0, 4294967295\]"),
        (lambda: C.triplet_loss(_Q, _Q, _Q, margin=True), "margin must be a finite number > 0, got True"),
        (lambda: C.softmax_cross_entropy(_Q, _CAND, _LAB, temperature=float("nan")), "temperature must be a finite number > 0"),
        (lambda: C.positives_from_clicks((np.zeros(2), np.zeros(2))), "log: expected a ClickLog"),
        (lambda: C.positives_from_labels(np.array([0, 0, 1])), "class 1 has a single image"),
        (lambda: C.combine_positives(), "give at least one"),
        (lambda: C.combine_positives((np.arange(3), np.arange(2))), r"pairs\[0\]: query_ids \[3\] and positive_ids \[2\]"),
        (lambda: C.positive_precision(np.array([0]), np.array([5]), np.array([0, 1])), r"positive_ids: ids must be in 0\.\.1"),
    ],
)
def test_bad_input_raises(call, message):
    with pytest.raises(C.ContrastiveError, match=message):
        call()


def test_contrastive_error_is_a_value_error():
    assert issubclass(C.ContrastiveError, ValueError)


# ---- nt_xent refuses what it used to compute on, or crash on with a torch error ---------------
#
# Each case below got something wrong before nt_xent checked its inputs (the shapes and
# temperatures it already refused are in the table above): integer embeddings, numpy
# arrays, lists and views on two devices crashed inside torch (RuntimeError, TypeError,
# AttributeError); a bool z2, mixed float dtypes, NaN or infinite values, D = 0 and a
# bool temperature were silently accepted (giving NaN, log(2N-1), or temperature 1);
# a str or None temperature raised TypeError.

_Z = _randn(3, 4, seed=30)
_Z_NAN = _Z.clone()
_Z_NAN[1, 2] = float("nan")
_Z_INF = _Z.clone()
_Z_INF[0, 0] = -float("inf")


@pytest.mark.parametrize(
    "z1, z2, temperature, message",
    [
        (torch.ones(3, 4, dtype=torch.int64), torch.ones(3, 4, dtype=torch.int64), 0.5, r"z1: expected a float tensor \[N, D\], got torch.int64 \[3, 4\]"),
        (_Z, torch.ones(3, 4, dtype=torch.bool), 0.5, r"z2: expected a float tensor \[N, D\], got torch.bool"),
        (_Z, _Z.numpy(), 0.5, r"z2: expected a float tensor \[N, D\], got ndarray"),
        (_Z.tolist(), _Z, 0.5, r"z1: expected a float tensor \[N, D\], got list"),
        (_Z, _Z.float(), 0.5, r"z1 \(torch.float64, cpu\) and z2 \(torch.float32, cpu\) must share dtype and device"),
        (_Z, torch.zeros(3, 4, dtype=torch.float64, device="meta"), 0.5, r"z1 \(torch.float64, cpu\) and z2 \(torch.float64, meta\) must share dtype and device"),
        (_Z_NAN, _Z, 0.5, "z1: the embeddings contain NaN or infinite values"),
        (_Z, _Z_INF, 0.5, "z2: the embeddings contain NaN or infinite values"),
        (torch.zeros(3, 0), torch.zeros(3, 0), 0.5, r"z1 and z2 must both be \[N >= 2, D >= 1\] of one shape, got \[3, 0\] and \[3, 0\]"),
        (_Z, _Z, True, "temperature must be a finite number > 0, got True"),
        (_Z, _Z, "0.5", "temperature must be a finite number > 0, got '0.5'"),
        (_Z, _Z, None, "temperature must be a finite number > 0, got None"),
    ],
)
def test_nt_xent_bad_input_raises(z1, z2, temperature, message):
    with pytest.raises(C.ContrastiveError, match=message):
        C.nt_xent(z1, z2, temperature)


# ---- the package: every old name, and the layering -------------------------------------------

#: Every public name the single ``contrastive`` module had, and the module that now holds it.
OLD_PUBLIC_NAMES = {
    "augment_batch": augment,
    "nt_xent": losses,
    "SIMILARITY_KINDS": losses,
    "similarities": losses,
    "softmax_cross_entropy": losses,
    "triplet_loss": losses,
    "make_datapoints": datapoints,
    "positives_from_augmentation": datapoints,
    "positives_from_clicks": datapoints,
    "positives_from_labels": datapoints,
    "combine_positives": datapoints,
    "positive_precision": datapoints,
    "CLICK_PROBABILITY": clicks,
    "RANDOM_SHOWN_SAME_CLASS": clicks,
    "ClickLog": clicks,
    "simulate_click_log": clicks,
    "ContrastiveError": errors,
}


@pytest.mark.parametrize("name", sorted(OLD_PUBLIC_NAMES))
def test_the_package_still_offers_every_old_name(name):
    assert name in C.__all__
    assert getattr(C, name) is getattr(OLD_PUBLIC_NAMES[name], name)


def test_train_can_still_import_from_the_package():
    from visual_search.contrastive import augment_batch, nt_xent  # what train.py does

    assert augment_batch is augment.augment_batch and nt_xent is losses.nt_xent


_LIB = Path(visual_search.__file__).parent
#: The one-way data flow: a module may import only modules to its left, and these shared ones.
_FLOW = ["data", "preprocess", "models", "embed", "augment", "clicks", "contrastive", "train"]
_SHARED = {"errors", "_checks", "config", "metrics"}


def _library_imports(path: Path) -> set[str]:
    """The top-level ``visual_search`` modules that a source file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "visual_search" else [f"visual_search.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("visual_search.")}
    return found


@pytest.mark.parametrize(
    "path, module",
    [("augment.py", "augment"), ("clicks.py", "clicks"), *((f"contrastive/{p.name}", "contrastive") for p in sorted((_LIB / "contrastive").glob("*.py")))],
)
def test_modules_import_only_modules_to_their_left(path, module):
    left = set(_FLOW[: _FLOW.index(module)])
    imported = _library_imports(_LIB / path) - {module}
    assert imported <= left | _SHARED, f"{path} imports {sorted(imported - left - _SHARED)}"


def test_clicks_imports_only_data_errors_and_checks():
    assert _library_imports(_LIB / "clicks.py") <= {"data", "errors", "_checks"}
