"""Contrastive training data and losses.

A contrastive data point is a query, one positive (an image that should rank
high for it) and n-1 negatives; its label is the index of the positive. The
loss turns similarities into a softmax over the n candidates and applies
cross-entropy, i.e. it is n-way classification of "which one is the positive".

SimCLR builds such data points from a batch for free: two random augmentations
of each image are each other's positive, and the other 2N-2 views are the
negatives (``nt_xent``).

What is here, in teaching order:

* chapter 03, the data: ``make_datapoints`` (query, positive, n-1 negatives, label)
  and three sources of positives, ``positives_from_augmentation``,
  ``positives_from_clicks`` (on a ``simulate_click_log``) and
  ``positives_from_labels``, merged by ``combine_positives`` and compared by
  ``positive_precision``;
* chapter 04, the loss step by step: ``similarities`` (dot, cosine, euclidean),
  ``softmax_cross_entropy`` (written out), ``triplet_loss`` for contrast, and
  SimCLR's ``augment_batch`` and ``nt_xent``.

Data flow: this module imports only ``data`` from the library (the super-categories
that decide a simulated click's relevance).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from visual_search import data
from visual_search.errors import ContrastiveError  # noqa: F401  (re-exported: raised here, importable from here)




def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    crop_scale: tuple[float, float] = (0.35, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    max_rotation: float = 15.0,
    brightness: float = 0.4,
    contrast: float = 0.4,
    blur_p: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 1.2),
) -> torch.Tensor:
    """SimCLR augmentations with independent random parameters for every image, in a few batched ops.

    ``torchvision.transforms.v2`` draws one set of parameters per call, so calling it
    on a batch gives every image the same crop. Here each image gets its own random
    resized crop, flip and rotation (one ``affine_grid`` + ``grid_sample``), its own
    brightness and contrast factors (broadcast arithmetic), and, with probability
    ``blur_p``, its own Gaussian blur (a grouped convolution).

    Args:
        x: float images in [0, 1], ``[N, C, H, W]``.
        generator: a seeded CPU ``torch.Generator`` for reproducible views.
        crop_scale: range of the crop's area as a fraction of the image.
        crop_ratio: range of the crop's aspect ratio.
        flip_p: probability of a horizontal flip.
        max_rotation: rotations are uniform in +-this many degrees.
        brightness, contrast: factors are uniform in [1 - b, 1 + b].
        blur_p: probability of blurring an image.
        blur_sigma: range of the blur's standard deviation in pixels.

    Returns:
        A new tensor of the same shape, values in [0, 1].
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ContrastiveError(f"x: expected float images [N, C, H, W], got {x.dtype} {list(x.shape)}")
    n, c, h, w = x.shape
    dev = x.device

    def uniform(lo: float, hi: float, size: int = n) -> torch.Tensor:
        # drawn on the CPU (a CPU generator gives the same views on any device), then moved
        return torch.rand(size, generator=generator, dtype=x.dtype).to(dev) * (hi - lo) + lo

    # Geometry: where each output pixel samples the input, in [-1, 1] coordinates.
    area = uniform(*crop_scale)
    log_ratio = uniform(math.log(crop_ratio[0]), math.log(crop_ratio[1]))
    crop_w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    crop_h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    centre_x = (uniform(-1, 1) * (1 - crop_w))
    centre_y = (uniform(-1, 1) * (1 - crop_h))
    angle = uniform(-max_rotation, max_rotation) * math.pi / 180
    flip = torch.where(uniform(0, 1) < flip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([crop_w * cos * flip, -crop_h * sin, centre_x], 1), torch.stack([crop_w * sin * flip, crop_h * cos, centre_y], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Photometry: brightness scales, contrast stretches around each image's mean.
    out = out * uniform(1 - brightness, 1 + brightness).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * uniform(1 - contrast, 1 + contrast).view(n, 1, 1, 1) + mean

    # Blur: a 5x5 Gaussian per image (sigma ~0 means no blur), as one grouped convolution.
    sigma = torch.where(uniform(0, 1) < blur_p, uniform(*blur_sigma), torch.full((n,), 1e-3, device=dev))
    offsets = torch.arange(-2, 3, device=dev, dtype=x.dtype)
    k1 = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    kernel = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, dim=0).unsqueeze(1)  # [N*C, 1, 5, 5]
    out = F.conv2d(F.pad(out.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="replicate"), kernel, groups=n * c).reshape(n, c, h, w)
    return out.clamp(0.0, 1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent (InfoNCE) loss over 2N views, averaged over all 2N anchors.

    Row i of ``z1`` and row i of ``z2`` are two views of one image. Each of the 2N
    views is an anchor whose positive is its twin and whose negatives are the other
    2N-2 views: cross-entropy over 2N-1 cosine similarities divided by the temperature.

    Args:
        z1, z2: ``[N, D]`` embeddings (normalised here, so any scale works).
        temperature: divides the cosine similarities; lower is sharper.

    Returns:
        The scalar loss. With every embedding identical it is exactly log(2N - 1).
    """
    if z1.ndim != 2 or z1.shape != z2.shape or len(z1) < 2:
        raise ContrastiveError(f"z1 and z2 must both be [N >= 2, D], got {list(z1.shape)} and {list(z2.shape)}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ContrastiveError(f"temperature must be finite and positive, got {temperature}")
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # a view is not its own negative
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


# ---- The loss, step by step (chapter 04) --------------------------------------------------
#
# A batch of B data points: query embeddings [B, D] and, for each query, n candidate
# embeddings [B, n, D] of which exactly one (at index labels[b]) is the positive.
#
#   1. similarities:   s[b, j] = sim(query[b], candidates[b, j])            [B, n]
#   2. logits:         s / temperature                                     [B, n]
#   3. softmax:        p[b, j] = exp(logit[b, j]) / sum_k exp(logit[b, k])  [B, n]
#   4. cross-entropy:  loss[b] = -log p[b, labels[b]];  the loss is the mean over b.
#
# With embeddings E [N, D] and the id arrays from ``make_datapoints``, the inputs are
# ``E[query_ids]`` and ``E[torch.as_tensor(candidates)]``.

#: The similarity functions ``similarities`` knows.
SIMILARITY_KINDS: tuple[str, ...] = ("dot", "cosine", "euclidean")


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 < temperature < math.inf:
        raise ContrastiveError(f"temperature must be a positive finite number, got {temperature!r}")


def _check_float_tensor(x: object, name: str, ndim: int, shape_hint: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != ndim or not x.is_floating_point():
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ContrastiveError(f"{name}: expected a float tensor {shape_hint}, got {got}")
    return x


def similarities(query: torch.Tensor, candidates: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Step 1 of the loss: how similar each query is to each of its n candidates.

    * ``"dot"``: ``q . c``; rewards long vectors as well as aligned ones.
    * ``"cosine"``: ``q . c / (|q| |c|)``, the dot product of the L2-normalised vectors,
      in [-1, 1]; only the direction counts (what SimCLR and our search use).
    * ``"euclidean"``: ``-|q - c|^2``, minus the squared distance, so that larger still
      means more similar. On unit vectors it equals ``2 * cosine - 2``, so it ranks
      exactly like cosine.

    Args:
        query: float ``[B, D]``, one embedding per data point.
        candidates: float ``[B, n, D]``, the n candidates (positive and negatives) of each.
        kind: one of ``SIMILARITY_KINDS``.

    Returns:
        Float ``[B, n]``: entry ``[b, j]`` is the similarity of query b to its candidate j.
        Differentiable, so the loss can be trained through it.

    Raises:
        ContrastiveError: for an unknown kind, non-float tensors, or shapes that disagree.
    """
    if kind not in SIMILARITY_KINDS:
        raise ContrastiveError(f"kind must be one of {list(SIMILARITY_KINDS)}, got {kind!r}")
    _check_float_tensor(query, "query", 2, "[B, D]")
    _check_float_tensor(candidates, "candidates", 3, "[B, n, D]")
    if candidates.shape[0] != query.shape[0] or candidates.shape[2] != query.shape[1]:
        raise ContrastiveError(f"query {list(query.shape)} and candidates {list(candidates.shape)} must be [B, D] and [B, n, D] with the same B and D")
    if candidates.dtype != query.dtype or candidates.device != query.device:
        raise ContrastiveError(f"query ({query.dtype}, {query.device}) and candidates ({candidates.dtype}, {candidates.device}) must share dtype and device")
    if kind == "cosine":
        query, candidates = F.normalize(query, dim=-1), F.normalize(candidates, dim=-1)
    if kind in ("dot", "cosine"):
        return torch.einsum("bd,bnd->bn", query, candidates)
    return -((query[:, None, :] - candidates) ** 2).sum(dim=-1)


def softmax_cross_entropy(
    query: torch.Tensor,
    candidates: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "cosine",
    temperature: float = 1.0,
) -> torch.Tensor:
    """The contrastive loss written out: similarities -> / temperature -> softmax -> cross-entropy.

    Each data point is an n-way classification ("which candidate is the positive?").
    The softmax turns the n scaled similarities into probabilities; cross-entropy is
    minus the log of the probability given to the positive. The log-softmax is taken
    as ``logit - logsumexp(logits)``, which never overflows ``exp``. The result equals
    ``F.cross_entropy(similarities(...) / temperature, labels)``.

    Args:
        query: float ``[B, D]`` query embeddings.
        candidates: float ``[B, n, D]`` candidate embeddings.
        labels: int64 ``[B]``, the index (0..n-1) of each data point's positive.
        kind: the similarity, see ``similarities``.
        temperature: divides the similarities. A small temperature sharpens the softmax
            (hard negatives weigh more); cosine similarities lie in [-1, 1], so without a
            temperature below 1 the probabilities could never get close to 0 or 1.

    Returns:
        The mean loss over the B data points, a scalar tensor. It is log(n) when all
        similarities are equal (a uniform guess) and tends to 0 as the positive wins.

    Raises:
        ContrastiveError: for bad shapes, labels outside 0..n-1, or temperature <= 0.
    """
    _check_temperature(temperature)
    sims = similarities(query, candidates, kind)  # step 1: [B, n]
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (sims.shape[0],):
        got = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ContrastiveError(f"labels: expected an int64 tensor [{sims.shape[0]}] (one positive index per query), got {got}")
    n = sims.shape[1]
    if len(labels) == 0:
        raise ContrastiveError("query: empty batch, there is no loss to average")
    if labels.min() < 0 or labels.max() >= n:
        raise ContrastiveError(f"labels: every positive index must be in 0..{n - 1} (n = {n} candidates), got values {labels.min().item()}..{labels.max().item()}")
    logits = sims / temperature  # step 2
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # step 3: log softmax over the n candidates
    picked = log_probs.gather(1, labels.to(log_probs.device)[:, None]).squeeze(1)  # step 4: log p(positive)
    return -picked.mean()


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """The triplet loss: the positive must be closer to the anchor than the negative, by a margin.

    ``mean(max(0, d(a, p) - d(a, n) + margin))`` with d the euclidean distance between
    L2-normalised embeddings. Unlike the softmax loss it sees one negative at a time, and
    a triplet stops contributing (zero gradient) once it satisfies the margin, so it
    needs hard negatives to keep learning. Equals ``torch.nn.TripletMarginLoss(margin, p=2)``
    on normalised inputs (up to that class's 1e-6 offset).

    Args:
        anchor, positive, negative: float ``[B, D]`` embeddings (normalised here).
        margin: how much closer the positive must be, > 0. With margin 0, mapping every
            image to the same point would already give zero loss (collapse); unit vectors
            are at most 2 apart, so sensible margins are well below 2.

    Returns:
        The mean loss over the B triplets, a scalar tensor.

    Raises:
        ContrastiveError: if the three are not float ``[B, D]`` of one shape, or the margin is not positive.
    """
    for name, x in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        _check_float_tensor(x, name, 2, "[B, D]")
    if not anchor.shape == positive.shape == negative.shape or len(anchor) == 0:
        raise ContrastiveError(f"anchor {list(anchor.shape)}, positive {list(positive.shape)} and negative {list(negative.shape)} must share one non-empty shape [B, D]")
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not 0 < margin < math.inf:
        raise ContrastiveError(f"margin must be a positive finite number, got {margin!r}")
    a, p, n = (F.normalize(x, dim=1) for x in (anchor, positive, negative))

    def distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ((u - v) ** 2).sum(dim=1).clamp_min(1e-12).sqrt()  # the clamp keeps the gradient finite at distance 0

    return torch.clamp(distance(a, p) - distance(a, n) + margin, min=0).mean()


# ---- Data points: a query, its positive, n-1 negatives (chapter 03) ------------------------


def _ids(x: object, name: str, ndim: int = 1) -> np.ndarray:
    """``x`` as an int64 numpy array of ``ndim`` dimensions, or ContrastiveError."""
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    if arr.ndim != ndim or not (np.issubdtype(arr.dtype, np.integer) or (arr.size == 0 and arr.dtype == np.float64)):
        raise ContrastiveError(f"{name}: expected a {ndim}-D array of integer ids, got {arr.dtype} with shape {list(arr.shape)}")
    return arr.astype(np.int64)


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ContrastiveError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def make_datapoints(
    query_ids: np.ndarray, positive_ids: np.ndarray, pool_ids: np.ndarray, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Build the design notes' data points: for each query, n candidates of which one is the positive.

    For query b the n-1 negatives are drawn uniformly without replacement from
    ``pool_ids`` (duplicates in the pool count once), never the query itself nor its
    positive; the positive is then put at a uniformly random position, and that
    position is the label. The negatives are random, so some share the query's class
    ("false negatives"); with many classes they are few, and the loss tolerates them.

    Args:
        query_ids: int ``[B]``, the query of each data point.
        positive_ids: int ``[B]``, its positive (a source from ``positives_from_*``).
        pool_ids: int ``[P]``, the images negatives are drawn from.
        n: candidates per data point (1 positive + n-1 negatives), >= 2.
        seed: the random seed; the same seed gives the same data points.

    Returns:
        ``(candidates, labels)``: int64 ``[B, n]`` candidate ids and int64 ``[B]`` with
        ``candidates[b, labels[b]] == positive_ids[b]``. Feed them to
        ``softmax_cross_entropy`` as ``E[query_ids]``, ``E[candidates]``, ``labels``.

    Raises:
        ContrastiveError: for mismatched id arrays, n < 2, or a pool too small to give
            some query n-1 negatives.
    """
    query_ids, positive_ids = _ids(query_ids, "query_ids"), _ids(positive_ids, "positive_ids")
    if query_ids.shape != positive_ids.shape:
        raise ContrastiveError(f"query_ids {list(query_ids.shape)} and positive_ids {list(positive_ids.shape)} must have the same length")
    pool = np.unique(_ids(pool_ids, "pool_ids"))  # sorted, each id once
    n = _check_count(n, "n", 2)
    # Which pool positions each query excludes: its own id and its positive's (once if they are equal).
    excluded = []
    for ids in (query_ids, positive_ids):
        pos = np.searchsorted(pool, ids)
        present = (pos < len(pool)) & (pool[np.minimum(pos, len(pool) - 1)] == ids) if len(pool) else np.zeros(len(ids), bool)
        excluded.append(np.where(present, pos, -1))
    excluded[1] = np.where(excluded[1] == excluded[0], -1, excluded[1])
    ex = np.sort(np.stack(excluded, axis=1), axis=1)  # [B, 2], -1 = nothing to exclude
    available = len(pool) - (ex >= 0).sum(axis=1)
    if len(query_ids) and (available < n - 1).any():
        b = int(np.argmax(available < n - 1))
        raise ContrastiveError(
            f"n={n} needs n-1={n - 1} negatives but pool_ids has only {available[b]} distinct ids "
            f"other than query {query_ids[b]} and its positive {positive_ids[b]}"
        )
    rng = np.random.default_rng(seed)
    negatives = np.empty((len(query_ids), n - 1), dtype=np.int64)
    for b in range(len(query_ids)):
        idx = rng.choice(available[b], n - 1, replace=False)  # a rank among the allowed pool positions...
        for e in ex[b]:
            if e >= 0:
                idx += idx >= e  # ...mapped to a pool position by skipping the excluded ones (ascending)
        negatives[b] = pool[idx]
    labels = rng.integers(0, n, size=len(query_ids)).astype(np.int64)
    candidates = np.empty((len(query_ids), n), dtype=np.int64)
    is_positive = np.arange(n)[None, :] == labels[:, None]
    candidates[is_positive] = positive_ids
    candidates[~is_positive] = negatives.reshape(-1)  # row by row, in order, around the positive
    return candidates, labels


# ---- Three sources of positives (chapter 03) -----------------------------------------------
#
# Each returns ``(query_ids, positive_ids)``, int64 arrays of equal length.
#   (a) augmentation: free, always right, but only ever "the same image, distorted";
#   (b) clicks: free and about real similarity, but noisy, sparse and position-biased;
#   (c) human labels: accurate, but costly (here class labels stand in for annotators).
# ``positive_precision`` measures the noise of each source.


def positives_from_augmentation(n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Self-supervision: every image is its own positive.

    The pair (i, i) means "two different views of image i": the views are made at
    training time by ``augment_batch`` (a fresh random crop, flip, rotation, colour
    change and blur for each), so the ids alone look trivial. This is SimCLR's source.

    Args:
        n_images: how many images, >= 1.

    Returns:
        ``(query_ids, positive_ids)``, both ``arange(n_images)`` as int64.
    """
    n_images = _check_count(n_images, "n_images", 1)
    ids = np.arange(n_images, dtype=np.int64)
    return ids, ids.copy()


#: Probability that a user clicks an item they examined, by its relevance to the query.
CLICK_PROBABILITY: dict[str, float] = {"same class": 0.6, "same super-category": 0.2, "other": 0.03}
#: Without a ``ranking``, the fraction of shown items (on average) that share the query's class.
RANDOM_SHOWN_SAME_CLASS: float = 0.5


@dataclass(frozen=True)
class ClickLog:
    """A (simulated) search log: one row per session.

    Attributes:
        query_ids: int64 ``[S]``, the query image of each session.
        shown_ids: int64 ``[S, n_shown]``, the images shown, top to bottom.
        clicked_ids: int64 ``[S]``, the clicked image, or -1 when the user clicked nothing.
        positions: int64 ``[S]``, the 0-based position of the click in ``shown_ids``, or -1.
    """

    query_ids: np.ndarray
    shown_ids: np.ndarray
    clicked_ids: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.query_ids)


def simulate_click_log(
    labels: np.ndarray,
    n_sessions: int,
    n_shown: int = 10,
    position_bias: float = 1.0,
    seed: int = 0,
    ranking: np.ndarray | None = None,
) -> ClickLog:
    """Simulate users clicking on search results, to teach where click positives come from.

    The generative model, per session:

    1. **Query.** A uniformly random image of the N is the query.
    2. **Results.** The "production system" shows ``n_shown`` images: the first
       ``n_shown`` entries of ``ranking[query]`` if a ranking is given (for instance
       raw-pixel or SimCLR search via ``visual_search.baseline.cosine_rank``, without the
       query itself); otherwise a random mix, in random order, of distinct images other
       than the query, each of the query's class with probability
       ``RANDOM_SHOWN_SAME_CLASS`` and of another class otherwise.
    3. **Examination (position bias).** The user looks at position p (0-based) with
       probability ``1 / (p + 1) ** position_bias``, independently per position:
       ``position_bias = 0`` examines everything, larger values look mostly at the top.
    4. **Attraction (relevance and noise).** An examined item attracts a click with
       probability ``CLICK_PROBABILITY``: 0.6 for the query's class, 0.2 for the same
       super-category (``data.SUPER_CATEGORY_OF_LABEL``, e.g. a shirt for a pullover),
       0.03 otherwise (curiosity, mis-taps: noise).
    5. **Cascade.** The user scans top to bottom and clicks the first examined item that
       attracts them, then leaves: at most one click per session, -1 if none.

    So clicks are sparse (many sessions have none), noisy (some clicks are on other
    classes) and biased towards the top of whatever the production system ranked.

    Args:
        labels: int ``[N]`` class labels (0..9) of the images; they decide relevance.
        n_sessions: how many sessions, >= 1.
        n_shown: results per page, >= 1 (and at most N - 1 without a ranking).
        position_bias: the exponent of the examination probability, >= 0.
        seed: the random seed; the same seed gives the same log.
        ranking: optional int ``[N, >= n_shown]``, the production system's ranked ids for
            each image as a query.

    Returns:
        A ``ClickLog``.

    Raises:
        ContrastiveError: for bad labels, counts, bias, or a ranking of the wrong shape or ids.
    """
    labels = _ids(labels, "labels")
    n_images = len(labels)
    n_classes = len(data.SUPER_CATEGORY_OF_LABEL)
    if n_images < 2 or labels.min() < 0 or labels.max() >= n_classes:
        raise ContrastiveError(f"labels: expected at least 2 class labels in 0..{n_classes - 1}, got {n_images} labels" + (f" in {labels.min()}..{labels.max()}" if n_images else ""))
    n_sessions = _check_count(n_sessions, "n_sessions", 1)
    n_shown = _check_count(n_shown, "n_shown", 1)
    if isinstance(position_bias, bool) or not isinstance(position_bias, numbers.Real) or not 0 <= position_bias < math.inf:
        raise ContrastiveError(f"position_bias must be a non-negative finite number, got {position_bias!r}")
    rng = np.random.default_rng(seed)
    query_ids = rng.integers(0, n_images, size=n_sessions).astype(np.int64)

    if ranking is not None:
        ranking = _ids(ranking, "ranking", ndim=2)
        if ranking.shape[0] != n_images or ranking.shape[1] < n_shown:
            raise ContrastiveError(f"ranking: expected [N={n_images}, >= n_shown={n_shown}] ranked ids, got shape {list(ranking.shape)}")
        if ranking.size and (ranking.min() < 0 or ranking.max() >= n_images):
            raise ContrastiveError(f"ranking: ids must be in 0..{n_images - 1}, got {ranking.min()}..{ranking.max()}")
        shown = ranking[query_ids, :n_shown]
    else:
        if n_shown > n_images - 1:
            raise ContrastiveError(f"n_shown={n_shown} is more than the {n_images - 1} images other than the query")
        members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
        others = {c: np.flatnonzero(labels != c) for c in members}
        shown = np.empty((n_sessions, n_shown), dtype=np.int64)
        for s, q in enumerate(query_ids):
            same, other = members[labels[q]], others[labels[q]]
            n_same = min(int(rng.binomial(n_shown, RANDOM_SHOWN_SAME_CLASS)), len(same) - 1)
            n_same = max(n_same, n_shown - len(other))  # too few other-class images: fill with the class
            pick = rng.choice(len(same) - 1, n_same, replace=False)
            pick += pick >= np.searchsorted(same, q)  # skip the query itself
            row = np.concatenate([same[pick], other[rng.choice(len(other), n_shown - n_same, replace=False)]])
            shown[s] = rng.permutation(row)

    query_labels = labels[query_ids][:, None]
    shown_labels = labels[shown]
    same_class = shown_labels == query_labels
    same_super = data.SUPER_CATEGORY_OF_LABEL[shown_labels] == data.SUPER_CATEGORY_OF_LABEL[query_labels]
    p_click = np.where(same_class, CLICK_PROBABILITY["same class"], np.where(same_super, CLICK_PROBABILITY["same super-category"], CLICK_PROBABILITY["other"]))
    p_examine = 1.0 / (np.arange(n_shown) + 1.0) ** position_bias
    examined = rng.random((n_sessions, n_shown)) < p_examine[None, :]
    attracted = rng.random((n_sessions, n_shown)) < p_click
    clicks = examined & attracted
    has_click = clicks.any(axis=1)
    positions = np.where(has_click, clicks.argmax(axis=1), -1).astype(np.int64)  # argmax = the first True: the cascade
    clicked = np.where(has_click, shown[np.arange(n_sessions), np.maximum(positions, 0)], -1).astype(np.int64)
    return ClickLog(query_ids=query_ids, shown_ids=shown.astype(np.int64), clicked_ids=clicked, positions=positions)


def positives_from_clicks(log: ClickLog) -> tuple[np.ndarray, np.ndarray]:
    """Clicks as positives: the (query, clicked image) pair of every session with a click.

    Args:
        log: a ``ClickLog`` (e.g. from ``simulate_click_log``).

    Returns:
        ``(query_ids, positive_ids)``, int64, one pair per session that has a click;
        sessions without a click give no data point (clicks are sparse).

    Raises:
        ContrastiveError: if ``log`` is not a ClickLog or its arrays disagree in length.
    """
    if not isinstance(log, ClickLog):
        raise ContrastiveError(f"log: expected a ClickLog, got {type(log).__name__}")
    query_ids, clicked = _ids(log.query_ids, "log.query_ids"), _ids(log.clicked_ids, "log.clicked_ids")
    if query_ids.shape != clicked.shape:
        raise ContrastiveError(f"log.query_ids {list(query_ids.shape)} and log.clicked_ids {list(clicked.shape)} must have the same length")
    mask = clicked >= 0
    return query_ids[mask], clicked[mask]


def positives_from_labels(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Human judgement: for each image, a different random image that annotators put in its class.

    Class labels stand in for human annotators: accurate positives, but in a real
    system every pair costs money and time.

    Args:
        labels: int ``[N]`` class labels.
        seed: the random seed; the same seed gives the same pairs.

    Returns:
        ``(query_ids, positive_ids)``: ``arange(N)`` and, for each image, another image
        (never itself) with the same label, chosen uniformly; int64.

    Raises:
        ContrastiveError: if labels is not 1-D integers or some class has a single image.
    """
    labels = _ids(labels, "labels")
    rng = np.random.default_rng(seed)
    positives = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            raise ContrastiveError(f"labels: class {c} has a single image ({members[0]}), which has no other image to pair with")
        pick = rng.integers(0, len(members) - 1, size=len(members))
        pick += pick >= np.arange(len(members))  # skip the image itself
        positives[members] = members[pick]
    return np.arange(len(labels), dtype=np.int64), positives


def combine_positives(*pairs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge positives from several sources (e.g. clicks for volume, labels to fix their noise).

    Args:
        *pairs: ``(query_ids, positive_ids)`` tuples, as the ``positives_from_*`` functions return.

    Returns:
        ``(query_ids, positive_ids)``: the concatenations, in the order given, int64.

    Raises:
        ContrastiveError: if no pair is given, or one is not two equal-length 1-D id arrays.
    """
    if not pairs:
        raise ContrastiveError("pairs: give at least one (query_ids, positive_ids) tuple")
    queries, positives = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ContrastiveError(f"pairs[{i}]: expected a (query_ids, positive_ids) tuple, got {type(pair).__name__}")
        q, p = _ids(pair[0], f"pairs[{i}] query_ids"), _ids(pair[1], f"pairs[{i}] positive_ids")
        if q.shape != p.shape:
            raise ContrastiveError(f"pairs[{i}]: query_ids {list(q.shape)} and positive_ids {list(p.shape)} must have the same length")
        queries.append(q)
        positives.append(p)
    return np.concatenate(queries), np.concatenate(positives)


def positive_precision(query_ids: np.ndarray, positive_ids: np.ndarray, labels: np.ndarray) -> float:
    """How clean a source of positives is: the fraction of pairs whose positive has the query's class.

    1.0 for human labels, and for augmentation, whose positive is the query itself; below
    1 for clicks, by as much as users click on other classes. Chance level is the sum of
    the squared class frequencies (0.1 on balanced Fashion-MNIST).

    Args:
        query_ids, positive_ids: int ``[M]`` pairs, M >= 1.
        labels: int ``[N]`` class labels of all images.

    Returns:
        The fraction in [0, 1].

    Raises:
        ContrastiveError: for mismatched or empty pairs, or ids outside 0..N-1.
    """
    query_ids, positive_ids, labels = _ids(query_ids, "query_ids"), _ids(positive_ids, "positive_ids"), _ids(labels, "labels")
    if query_ids.shape != positive_ids.shape or len(query_ids) == 0:
        raise ContrastiveError(f"query_ids {list(query_ids.shape)} and positive_ids {list(positive_ids.shape)} must be non-empty and of the same length")
    for name, ids in (("query_ids", query_ids), ("positive_ids", positive_ids)):
        if ids.min() < 0 or ids.max() >= len(labels):
            raise ContrastiveError(f"{name}: ids must be in 0..{len(labels) - 1} (the labels), got {ids.min()}..{ids.max()}")
    return float(np.mean(labels[query_ids] == labels[positive_ids]))
