"""Contrastive losses (chapter 04): the softmax loss written out step by step, the triplet loss, and SimCLR's NT-Xent.

The contrastive loss turns a data point's similarities into a softmax over its n
candidates and applies cross-entropy: n-way classification of "which one is the
positive". SimCLR's ``nt_xent`` is the same loss on a batch of 2N augmented views,
where each view's positive is its twin and the other 2N-2 views are the negatives.

What is here, in teaching order: ``similarities`` (dot, cosine, euclidean; the names
are in ``SIMILARITY_KINDS``), ``softmax_cross_entropy`` (written out),
``triplet_loss`` for contrast, ``nt_xent``, and MoCo's ``moco_infonce``
(a queue of earlier keys as the negatives).

Errors: ``visual_search.errors.ContrastiveError``, with a message naming the argument.

Data flow: imports nothing from the library but ``errors`` and ``_checks``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visual_search._checks import check_real
from visual_search.errors import ContrastiveError

# ---- The loss, step by step ----------------------------------------------------------------
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
    temperature = check_real(temperature, "temperature", low=0, low_open=True, error=ContrastiveError)
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
    margin = check_real(margin, "margin", low=0, low_open=True, error=ContrastiveError)
    a, p, n = (F.normalize(x, dim=1) for x in (anchor, positive, negative))

    def distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ((u - v) ** 2).sum(dim=1).clamp_min(1e-12).sqrt()  # the clamp keeps the gradient finite at distance 0

    return torch.clamp(distance(a, p) - distance(a, n) + margin, min=0).mean()


# ---- SimCLR ----------------------------------------------------------------------------------


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent (InfoNCE) loss over 2N views, averaged over all 2N anchors.

    Row i of ``z1`` and row i of ``z2`` are two views of one image. Each of the 2N
    views is an anchor whose positive is its twin and whose negatives are the other
    2N-2 views: cross-entropy over 2N-1 cosine similarities divided by the temperature.
    Swapping ``z1`` and ``z2`` only reorders the anchors, so the loss is symmetric.

    Args:
        z1, z2: float ``[N, D]`` embeddings of one shape, dtype and device, N >= 2 (an
            anchor needs a negative), D >= 1, finite (normalised here, so any scale works).
        temperature: divides the cosine similarities, a finite number > 0; lower is sharper.

    Returns:
        The scalar loss. With every embedding identical it is exactly log(2N - 1).

    Raises:
        ContrastiveError: if ``z1`` or ``z2`` is not a float tensor, their shapes are not one
            ``[N >= 2, D >= 1]``, their dtypes or devices differ, they hold NaN or infinity,
            or the temperature is not a finite number > 0. The message names the argument.
    """
    for name, z in (("z1", z1), ("z2", z2)):
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            got = f"{z.dtype} {list(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
            raise ContrastiveError(f"{name}: expected a float tensor [N, D], got {got}")
    if z1.ndim != 2 or z1.shape != z2.shape or len(z1) < 2 or z1.shape[1] < 1:
        raise ContrastiveError(f"z1 and z2 must both be [N >= 2, D >= 1] of one shape, got {list(z1.shape)} and {list(z2.shape)}")
    if z1.dtype != z2.dtype or z1.device != z2.device:
        raise ContrastiveError(f"z1 ({z1.dtype}, {z1.device}) and z2 ({z2.dtype}, {z2.device}) must share dtype and device")
    temperature = check_real(temperature, "temperature", low=0, low_open=True, error=ContrastiveError)
    for name, z in (("z1", z1), ("z2", z2)):
        if not torch.isfinite(z).all():
            raise ContrastiveError(f"{name}: the embeddings contain NaN or infinite values")
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # a view is not its own negative
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


# ---- MoCo ------------------------------------------------------------------------------------


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE: each query's positive is its own key, its negatives are the K keys in the queue.

    The same loss as ``softmax_cross_entropy`` with ``n = K + 1`` candidates per data point
    and the positive at index 0, but the K negatives are shared by the whole batch, so the
    logits are one ``[B, K]`` matrix product instead of a ``[B, K + 1, D]`` gather. The
    queue holds keys from earlier batches, made by the slowly moving momentum encoder, so
    the number of negatives is the queue's length, not the batch size: that is what lets
    MoCo use thousands of negatives with the small batches a CPU can afford.

    Args:
        q: float ``[B, D]`` query embeddings (from the encoder being trained).
        k: float ``[B, D]`` key embeddings (row i is the other view of query i; from the
            momentum encoder, so normally without gradient).
        queue: float ``[K, D]`` earlier keys, the negatives, K >= 1.
        temperature: divides the cosine similarities, a finite number > 0.

    Returns:
        The scalar loss, averaged over the B queries. With every embedding identical it
        is exactly log(K + 1).

    Raises:
        ContrastiveError: if an input is not a finite float tensor of the shapes above
            (one D, one dtype and device), or the temperature is not a finite number > 0.
    """
    for name, z in (("q", q), ("k", k), ("queue", queue)):
        if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.ndim != 2 or 0 in z.shape:
            got = f"{z.dtype} {list(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
            raise ContrastiveError(f"{name}: expected a float tensor [rows >= 1, D >= 1], got {got}")
        if not torch.isfinite(z).all():
            raise ContrastiveError(f"{name}: the embeddings contain NaN or infinite values")
    if q.shape != k.shape or queue.shape[1] != q.shape[1]:
        raise ContrastiveError(f"q and k must be one [B, D] and queue [K, D], got {list(q.shape)}, {list(k.shape)} and {list(queue.shape)}")
    if len({q.dtype, k.dtype, queue.dtype}) > 1 or len({q.device, k.device, queue.device}) > 1:
        raise ContrastiveError("q, k and queue must share dtype and device")
    temperature = check_real(temperature, "temperature", low=0, low_open=True, error=ContrastiveError)
    q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    negatives = q @ queue.T  # [B, K]
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


__all__ = ["SIMILARITY_KINDS", "moco_infonce", "nt_xent", "similarities", "softmax_cross_entropy", "triplet_loss"]
