"""Active learning, human in the loop: ask an annotator about the pairs the model is least sure of, not random ones.

Labels cost money: an annotator answering "are these two images the same kind of thing?"
is paid per answer. Active learning spends a fixed budget of answers where they teach the
model most. The loop, in rounds of ``round_size`` answers:

1. **Model.** The frozen 64-d embeddings stay as they are (re-embedding a catalogue is the
   expensive part); what is fine-tuned is a cheap head on top, a linear projection ``W``
   (``PairModel``), started at the identity so that with no labels it *is* the frozen
   embedding. Two images match with probability ``sigmoid(scale * cos(xW, yW) + bias)``.
2. **Loss.** The answers are per pair, yes or no, so the loss is pairwise: binary
   cross-entropy on that probability (SigLIP's sigmoid loss, the pairwise sibling of the
   course's softmax loss, which needs one positive among n candidates and so cannot use a
   "no"). The cosine is ``contrastive.similarities``. Positives are weighted up to balance
   the "no"s, and ``W`` is pulled towards the identity (``anchor``), so a few labels
   nudge the embedding instead of overwriting it.
3. **Query strategy.** From a pool of candidate pairs (``candidate_pairs``), pick the next
   ones to label: **random** (the baseline), or **uncertainty sampling**
   (``select_uncertain``): the pairs whose probability is nearest 0.5, i.e. nearest the
   decision boundary, where an answer is most likely to move it.
4. **Annotator.** ``SimulatedAnnotator`` answers from the class labels, wrong with
   probability ``error_rate`` (people are tired, and "shirt or T-shirt?" is hard).
5. Retrain on every answer so far, measure retrieval, repeat.

Why uncertainty wins here: with 10 classes, nine random pairs in ten are an easy "no"
(a boot and a bag) that the frozen embedding already gets right, so random labels teach
almost nothing; the pairs near the boundary are the confusable ones (shirt and pullover),
and about half of them are "yes". The quality is retrieval, measured the way the course
does: P@k by class of the sample's held-out queries (never labelled) against the gallery
(whose pairs are labelled), ``evaluate_active_learning`` returns both curves against the
number of labels and the labels uncertainty sampling saves to reach random sampling's
final quality (``labels_to_reach``).

A noisy annotator shows a second reason to choose pairs: flipping 10% of the answers on a
random pool that is 90% "no" turns about as many "no"s into false "yes"es as there are true
ones, so random labels *hurt* (P@10 falls below the frozen embedding's); the balanced pairs
uncertainty sampling asks about lose far fewer of their "yes"es to noise. (When random's
final quality is at or below the frozen embedding's, uncertainty sampling reaches it with
0 labels, and the whole budget counts as saved.)

What this leaves out, and a real system adds: a batch of the most uncertain pairs is often
redundant (near-duplicates of one confusion), so real selectors mix in diversity (core-sets,
clustering the candidates); the model's own confidence is over-confident, so committees or
MC-dropout estimate uncertainty better; and human answers are checked (gold questions,
several annotators per pair, agreement rates) before they are trusted.

Every bad input raises ``TopicsError`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from visual_search import config, data
from visual_search._checks import check_int, check_real, check_seed
from visual_search.contrastive import similarities
from visual_search.embed import embed
from visual_search.errors import TopicsError
from visual_search.models import Encoder
from visual_search.topics._validate import as_array, class_precision_at_k, encoder_or_default, sample_or_default
from visual_search.topics._validate import labels as check_labels
from visual_search.topics._validate import vectors as check_vectors

#: The query strategies ``run_active_learning`` knows.
STRATEGIES = ("random", "uncertainty")
#: Where a new head starts: ``scale * cos + bias`` puts the boundary at cosine 0.5.
INITIAL_SCALE, INITIAL_BIAS = 10.0, -5.0


# ---- checks --------------------------------------------------------------------------------------


def _pairs(pairs: object, n_images: int, name: str = "pairs") -> np.ndarray:
    """An integer ``[P >= 1, 2]`` array of image ids in 0..n_images-1, no image paired with itself, as int64."""
    array = as_array(pairs)
    if array is None or array.ndim != 2 or array.shape[1] != 2 or array.dtype.kind not in "iu" or len(array) == 0:
        got = f"{array.dtype} {list(array.shape)}" if array is not None else type(pairs).__name__
        raise TopicsError(f"{name} must be a non-empty integer array [P, 2] of image ids, got {got}")
    if array.min() < 0 or array.max() >= n_images:
        raise TopicsError(f"{name} must hold image ids in 0..{n_images - 1}, got {int(array.min())}..{int(array.max())}")
    same = array[:, 0] == array[:, 1]
    if same.any():
        p = int(np.argmax(same))
        raise TopicsError(f"{name}: row {p} pairs image {int(array[p, 0])} with itself")
    return array.astype(np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise TopicsError("vectors: a zero vector has no direction, so no cosine similarity")
    return (x / norms).astype(np.float32)


# ---- the annotator and the pool ------------------------------------------------------------------


class SimulatedAnnotator:
    """A person who answers "same class?" for pairs of images, from the true labels, sometimes wrongly.

    Each answer is flipped independently with probability ``error_rate``, drawn from the
    annotator's own seeded generator, so a run is reproducible; ``n_answers`` counts what
    has been paid for.

    Args:
        labels: integer class labels ``[N]`` of the images the pairs refer to.
        error_rate: the chance that an answer is wrong, 0..0.5 (at 0.5 answers are coin flips).
        seed: seeds the mistakes.
    """

    def __init__(self, labels: np.ndarray, error_rate: float = 0.0, seed: int = 0) -> None:
        self.labels = check_labels(labels, "labels")
        self.error_rate = check_real(error_rate, "error_rate", low=0.0, high=0.5, error=TopicsError)
        self._rng = np.random.default_rng(check_seed(seed, "seed", error=TopicsError))
        self.n_answers = 0

    def label(self, pairs: np.ndarray) -> np.ndarray:
        """Answer for each pair: int64 ``[P]``, 1 for "same class", 0 for "different" (after mistakes).

        Raises:
            TopicsError: for pairs that are not ``[P, 2]`` ids of this annotator's images.
        """
        pairs = _pairs(pairs, len(self.labels))
        truth = self.labels[pairs[:, 0]] == self.labels[pairs[:, 1]]
        wrong = self._rng.random(len(pairs)) < self.error_rate
        self.n_answers += len(pairs)
        return (truth ^ wrong).astype(np.int64)


def candidate_pairs(n_images: int, n_pairs: int, seed: int = 0) -> np.ndarray:
    """A pool of distinct random pairs of images to choose from: int64 ``[n_pairs, 2]``, each row ``i < j``.

    Pairs are drawn uniformly from all ``N (N - 1) / 2`` unordered pairs without replacement
    (duplicates are redrawn), in random order.

    Args:
        n_images: images to pair, >= 2.
        n_pairs: pairs to draw, 1..N (N - 1) / 2.
        seed: seeds the draw.

    Raises:
        TopicsError: for a bad count or seed.
    """
    n_images = check_int(n_images, "n_images", low=2, error=TopicsError)
    n_pairs = check_int(n_pairs, "n_pairs", low=1, high=n_images * (n_images - 1) // 2, error=TopicsError)
    rng = np.random.default_rng(check_seed(seed, "seed", error=TopicsError))
    found = np.empty((0, 2), dtype=np.int64)
    while len(found) < n_pairs:
        draw = rng.integers(0, n_images, size=(2 * (n_pairs - len(found)) + 16, 2))
        draw = np.sort(draw[draw[:, 0] != draw[:, 1]], axis=1)
        both = np.concatenate([found, draw])
        _, first = np.unique(both, axis=0, return_index=True)
        found = both[np.sort(first)]  # keep the first copy of each pair, in the order drawn
    return found[:n_pairs]


# ---- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairModel:
    """A linear head on the frozen embeddings and its match probability ``sigmoid(scale * cos(xW, yW) + bias)``.

    Attributes:
        weight: float32 ``[D, D]``, the projection (the identity: the frozen embedding).
        scale, bias: the logit's slope and offset; the decision boundary is ``cos = -bias / scale``.
    """

    weight: np.ndarray
    scale: float = INITIAL_SCALE
    bias: float = INITIAL_BIAS

    @classmethod
    def identity(cls, dim: int) -> PairModel:
        """The untrained head: the frozen embedding, boundary at cosine 0.5."""
        dim = check_int(dim, "dim", low=1, high=65_536, error=TopicsError)
        return cls(np.eye(dim, dtype=np.float32))

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """The fine-tuned embedding: unit rows of ``vectors @ weight``, float32 ``[N, D]`` (what search uses)."""
        vectors = check_vectors(vectors, "vectors", self.weight.shape[0])
        return _unit(vectors @ self.weight)

    def logits(self, vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """``scale * cos + bias`` for each pair of rows of ``vectors``: float32 ``[P]`` (> 0: "same class")."""
        projected = self.project(vectors)
        pairs = _pairs(pairs, len(projected))
        cosine = (projected[pairs[:, 0]] * projected[pairs[:, 1]]).sum(axis=1)
        return (self.scale * cosine + self.bias).astype(np.float32)


def train_pair_model(
    vectors: np.ndarray, pairs: np.ndarray, answers: np.ndarray, steps: int = 200, lr: float = 0.01, anchor: float = 10.0
) -> PairModel:
    """Fit a ``PairModel`` from the identity to labelled pairs with the pairwise sigmoid loss.

    The loss is ``BCE(sigmoid(scale * cos + bias), answer)`` with positives weighted by
    ``#no / #yes`` (so the rare "yes" counts as much as all the "no"s), plus
    ``anchor * |W - I|^2 / #labels``, a pull towards the frozen embedding that fades as
    labels accumulate. Full-batch Adam from a fixed start: the same labels give the same
    model, so no seed is needed.

    Args:
        vectors: float ``[N, D]`` frozen embeddings.
        pairs: int ``[P, 2]`` ids into ``vectors``, the labelled pairs.
        answers: int ``[P]``, 1 for "same class", 0 for "different" (the annotator's).
        steps: optimiser steps, 1..100,000.
        lr: Adam's learning rate, in (0, 10].
        anchor: the pull towards the identity, >= 0 (0: none).

    Returns:
        The trained ``PairModel``.

    Raises:
        TopicsError: for bad vectors, pairs, answers or settings.
    """
    vectors = check_vectors(vectors, "vectors")
    pairs = _pairs(pairs, len(vectors))
    answers = as_array(answers)
    if answers is None or answers.shape != (len(pairs),) or answers.dtype.kind not in "iub" or not np.isin(answers, (0, 1)).all():
        got = f"{answers.dtype} {list(answers.shape)}" if answers is not None else "not an array"
        raise TopicsError(f"answers must be {len(pairs)} values of 0 or 1 (one per pair), got {got}")
    steps = check_int(steps, "steps", low=1, high=100_000, error=TopicsError)
    lr = check_real(lr, "lr", low=0.0, high=10.0, low_open=True, error=TopicsError)
    anchor = check_real(anchor, "anchor", low=0.0, error=TopicsError)

    x = torch.from_numpy(vectors)
    eye = torch.eye(x.shape[1])
    weight = eye.clone().requires_grad_(True)
    scale = torch.tensor(INITIAL_SCALE, requires_grad=True)
    bias = torch.tensor(INITIAL_BIAS, requires_grad=True)
    optimiser = torch.optim.Adam([weight, scale, bias], lr=lr)
    left, right = torch.from_numpy(pairs[:, 0]), torch.from_numpy(pairs[:, 1])
    target = torch.from_numpy(answers.astype(np.float32))
    n_yes = float(target.sum())
    pos_weight = torch.tensor((len(target) - n_yes) / n_yes if n_yes > 0 else 1.0)
    for _ in range(steps):
        cosine = similarities(x[left] @ weight, (x[right] @ weight)[:, None, :], "cosine")[:, 0]
        loss = F.binary_cross_entropy_with_logits(scale * cosine + bias, target, pos_weight=pos_weight)
        loss = loss + anchor * ((weight - eye) ** 2).sum() / len(target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return PairModel(weight.detach().numpy().astype(np.float32), float(scale.detach()), float(bias.detach()))


def select_uncertain(model: PairModel, vectors: np.ndarray, pairs: np.ndarray, n: int) -> np.ndarray:
    """Uncertainty sampling: the ``n`` pairs whose match probability is nearest 0.5 (smallest ``|logit|``).

    Args:
        model: the current ``PairModel``.
        vectors: float ``[N, D]`` frozen embeddings.
        pairs: int ``[P, 2]``, the unlabelled candidates.
        n: how many to pick, 1..P.

    Returns:
        int64 ``[n]`` row indices into ``pairs``, most uncertain first (ties: lower index).
    """
    if not isinstance(model, PairModel):
        raise TopicsError(f"model must be a PairModel, got {type(model).__name__}")
    margin = np.abs(model.logits(vectors, pairs))
    n = check_int(n, "n", low=1, high=len(margin), error=TopicsError)
    return np.argsort(margin, kind="stable")[:n].astype(np.int64)


# ---- the loop and the measurement ----------------------------------------------------------------


def run_active_learning(
    strategy: str,
    gallery_vectors: np.ndarray,
    gallery_labels: np.ndarray,
    query_vectors: np.ndarray,
    query_labels: np.ndarray,
    pool: np.ndarray,
    rounds: int = 8,
    round_size: int = 100,
    error_rate: float = 0.0,
    steps: int = 200,
    k: int = 10,
    seed: int = 0,
) -> dict[str, object]:
    """One labelling campaign: rounds of ``round_size`` answers chosen by ``strategy``, retraining after each.

    The first round is random for every strategy (there is no model to be uncertain yet
    beyond the frozen one, and the same seed gives both strategies the same start); from
    then on ``"uncertainty"`` asks about the pairs the current model is least sure of and
    ``"random"`` about random unlabelled ones. After each round a head is trained from the
    identity on every answer so far (``train_pair_model``) and scored by P@k of the
    held-out queries against the gallery.

    Args:
        strategy: one of ``STRATEGIES``.
        gallery_vectors: float ``[G, D]`` frozen embeddings of the images the pairs refer to.
        gallery_labels: int ``[G]``, their classes (the annotator's truth and the P@k relevance).
        query_vectors, query_labels: the held-out queries, ``[Q, D]`` and ``[Q]``.
        pool: int ``[P, 2]`` candidate pairs of gallery ids (``candidate_pairs``).
        rounds: labelling rounds, >= 1, with ``rounds * round_size <= P``.
        round_size: answers bought per round, >= 1.
        error_rate: the annotator's error rate, 0..0.5.
        steps: training steps per round.
        k: the P@k cut-off, 1..G.
        seed: seeds the first round, the random picks and the annotator's mistakes.

    Returns:
        ``{"labels": [0, round_size, ...], "P@k": [...] (same length), "positive share": the
        share of the bought answers that are "same class"}``; entry 0 is the frozen embedding.
    """
    if strategy not in STRATEGIES:
        raise TopicsError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    gallery_vectors = check_vectors(gallery_vectors, "gallery_vectors")
    gallery_labels = check_labels(gallery_labels, "gallery_labels", len(gallery_vectors))
    query_vectors = check_vectors(query_vectors, "query_vectors", gallery_vectors.shape[1])
    query_labels = check_labels(query_labels, "query_labels", len(query_vectors))
    pool = _pairs(pool, len(gallery_vectors), "pool")
    round_size = check_int(round_size, "round_size", low=1, high=len(pool), error=TopicsError)
    rounds = check_int(rounds, "rounds", low=1, high=len(pool) // round_size, error=TopicsError)
    k = check_int(k, "k", low=1, high=len(gallery_vectors), error=TopicsError)
    seed = check_seed(seed, "seed", error=TopicsError)
    annotator = SimulatedAnnotator(gallery_labels, error_rate, seed=seed)
    rng = np.random.default_rng(seed)

    def quality(model: PairModel) -> float:
        return class_precision_at_k(model.project(query_vectors), query_labels, model.project(gallery_vectors), gallery_labels, k)

    model = PairModel.identity(gallery_vectors.shape[1])
    curve = [quality(model)]
    asked = np.zeros(len(pool), dtype=bool)
    answers = np.zeros(len(pool), dtype=np.int64)
    for r in range(rounds):
        open_ids = np.flatnonzero(~asked)
        if strategy == "random" or r == 0:
            pick = rng.choice(open_ids, round_size, replace=False)
        else:
            pick = open_ids[select_uncertain(model, gallery_vectors, pool[open_ids], round_size)]
        answers[pick] = annotator.label(pool[pick])
        asked[pick] = True
        model = train_pair_model(gallery_vectors, pool[asked], answers[asked], steps=steps)
        curve.append(quality(model))
    truth = gallery_labels[pool[asked, 0]] == gallery_labels[pool[asked, 1]]
    return {"labels": [r * round_size for r in range(rounds + 1)], f"P@{k}": curve, "positive share": float(truth.mean())}


def labels_to_reach(labels: list[float] | np.ndarray, curve: list[float] | np.ndarray, target: float) -> float:
    """How many labels a quality curve needs to first reach ``target``, interpolated linearly between its points.

    Args:
        labels: increasing label counts, >= 2 points.
        curve: the quality at each count, as many.
        target: the quality to reach.

    Returns:
        The label count (a float: between two rounds), or NaN if the curve never reaches it.
    """
    labels = np.asarray(labels, dtype=np.float64)
    curve = np.asarray(curve, dtype=np.float64)
    if labels.ndim != 1 or curve.shape != labels.shape or len(labels) < 2 or not np.isfinite(labels).all() or not np.isfinite(curve).all():
        raise TopicsError(f"labels and curve must be finite 1-D arrays of the same length >= 2, got {list(labels.shape)} and {list(curve.shape)}")
    if (np.diff(labels) <= 0).any():
        raise TopicsError("labels must be increasing")
    target = check_real(target, "target", error=TopicsError)
    reached = np.flatnonzero(curve >= target)
    if len(reached) == 0:
        return float("nan")
    i = int(reached[0])
    if i == 0:
        return float(labels[0])
    share = (target - curve[i - 1]) / (curve[i] - curve[i - 1])  # curve[i-1] < target <= curve[i]
    return float(labels[i - 1] + share * (labels[i] - labels[i - 1]))


def evaluate_active_learning(
    rounds: int | None = None,
    round_size: int = 100,
    pool_size: int | None = None,
    error_rate: float = 0.0,
    repeats: int | None = None,
    steps: int = 200,
    k: int = 10,
    seed: int = 0,
    encoder: Encoder | None = None,
    sample: data.Sample | None = None,
) -> dict[str, object]:
    """Uncertainty sampling against random sampling on the sample: the quality curves and the labels saved.

    The pairs are drawn from the sample's 2,000 gallery images and labelled by a
    ``SimulatedAnnotator``; quality is P@k by class of the 500 held-out queries against the
    gallery, both through the fine-tuned head. Each repeat draws a new pool, first round and
    annotator (seed ``seed + r``); the curves are the means over repeats.

    Args:
        rounds: labelling rounds (default 8 in fast mode, 12 otherwise).
        round_size: answers per round.
        pool_size: candidate pairs (default 20,000 in fast mode, 50,000 otherwise).
        error_rate: the annotator's error rate, 0..0.5.
        repeats: campaigns averaged (default 1 in fast mode, 5 otherwise).
        steps: training steps per round.
        k: the P@k cut-off.
        seed: the first repeat's seed.
        encoder: default the committed CNN (``load_pretrained()``).
        sample: default ``data.load_sample()``.

    Returns:
        ``{"labels", "P@k random", "P@k uncertainty" (curves, entry 0 the frozen embedding),
        "P@k frozen", "target P@k" (random's final quality), "labels to target random"
        (its whole budget, what random paid to get there), "labels to target uncertainty"
        (``labels_to_reach`` on the uncertainty curve), "labels saved" (the difference),
        "labels saved share" (of random's budget), "positive share random", "positive share uncertainty",
        "error_rate", "repeats", "pool_size", "round_size"}`` with k filled in. Where
        uncertainty sampling never reaches the target, its labels and the savings are NaN.
    """
    sample = sample_or_default(sample)
    fast = config.is_fast()
    rounds = check_int((8 if fast else 12) if rounds is None else rounds, "rounds", low=1, high=1_000, error=TopicsError)
    round_size = check_int(round_size, "round_size", low=1, high=100_000, error=TopicsError)
    pool_size = check_int((20_000 if fast else 50_000) if pool_size is None else pool_size, "pool_size", low=rounds * round_size, error=TopicsError)
    repeats = check_int((1 if fast else 5) if repeats is None else repeats, "repeats", low=1, high=100, error=TopicsError)
    error_rate = check_real(error_rate, "error_rate", low=0.0, high=0.5, error=TopicsError)
    steps = check_int(steps, "steps", low=1, high=100_000, error=TopicsError)
    k = check_int(k, "k", low=1, high=len(sample.gallery_images), error=TopicsError)
    seed = check_seed(seed, "seed", error=TopicsError)
    if seed + repeats - 1 > 2**32 - 1:
        raise TopicsError(f"seed + repeats - 1 must be a seed (<= {2**32 - 1}), got {seed + repeats - 1}")

    encoder = encoder_or_default(encoder)

    gallery = embed(encoder, sample.gallery_images, progress=False)
    queries = embed(encoder, sample.query_images, progress=False)
    key = f"P@{k}"
    curves: dict[str, list[list[float]]] = {s: [] for s in STRATEGIES}
    positives: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    for r in range(repeats):
        pool = candidate_pairs(len(gallery), pool_size, seed=seed + r)
        for strategy in STRATEGIES:
            run = run_active_learning(strategy, gallery, sample.gallery_labels, queries, sample.query_labels, pool,
                                      rounds=rounds, round_size=round_size, error_rate=error_rate, steps=steps, k=k, seed=seed + r)
            curves[strategy].append(run[key])
            positives[strategy].append(run["positive share"])
            labels = run["labels"]
    mean = {s: np.mean(curves[s], axis=0).tolist() for s in STRATEGIES}
    target = mean["random"][-1]
    needed = labels_to_reach(labels, mean["uncertainty"], target)
    saved = labels[-1] - needed  # random paid for all its labels to get there
    return {
        "labels": labels,
        f"{key} random": mean["random"],
        f"{key} uncertainty": mean["uncertainty"],
        f"{key} frozen": mean["random"][0],
        f"target {key}": target,
        "labels to target random": labels[-1],
        "labels to target uncertainty": needed,
        "labels saved": saved,
        "labels saved share": saved / labels[-1],
        "positive share random": float(np.mean(positives["random"])),
        "positive share uncertainty": float(np.mean(positives["uncertainty"])),
        "error_rate": error_rate,
        "repeats": repeats,
        "pool_size": pool_size,
        "round_size": round_size,
    }


__all__ = [
    "INITIAL_BIAS",
    "INITIAL_SCALE",
    "STRATEGIES",
    "PairModel",
    "SimulatedAnnotator",
    "candidate_pairs",
    "class_precision_at_k",
    "evaluate_active_learning",
    "labels_to_reach",
    "run_active_learning",
    "select_uncertain",
    "train_pair_model",
]
