"""Image metadata: combine tags with the visual score, as a filter and as a weighted hybrid, and see what noisy tags cost.

Real catalogues carry text next to the pixels: the seller's category, user tags, a title.
The course's stand-in for user tags is each image's super-category (``data.SUPER_CATEGORIES``:
tops, bottoms, dresses, footwear, bags), made as unreliable as real tags by ``noisy_tags``:
a share of them replaced by a random *other* tag, as a careless uploader would.

A tag can enter the ranking in two ways:

* **A filter** (``rank_filtered``): keep only the candidates whose tag matches the query's,
  in visual order. It is what a "category" facet does, and it is all or nothing: a mistagged
  sneaker is gone from a footwear search, however similar it looks. When fewer candidates
  match than the page needs, the rest is back-filled in visual order, so a page is never
  short (a strict filter would show fewer results).
* **A weighted hybrid** (``rank_hybrid``): ``cosine similarity + weight * [tags match]``. A
  matching tag is a bonus worth ``weight`` of cosine similarity, so a very similar item with
  a wrong tag can still win. ``weight = 0`` is the visual ranking; a weight above 2 (the
  whole range of a cosine) is the filter, so the filter is the hybrid's limit.

The query's tag comes from the user (a shopper who picked "footwear": correct) or is
predicted (``predict_tags``): a vote of its ``k`` nearest gallery neighbours' tags, which needs
no user input but only re-uses what the pixels already say, and inherits the gallery's noise.

``evaluate_metadata`` measures both uses with both query tags on the graded evaluation set
(nDCG@10 and mAP@100 through ``evalset.evaluate_rankings``) against the visual ranking, over a
sweep of gallery tag-noise rates: clean tags help; as noise grows, the filter, which trusts
the tag completely, falls first and furthest, while the hybrid degrades gently towards the
visual ranking.

Every bad input raises ``TopicsError`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from visual_search import config, data, evalset
from visual_search._checks import check_int, check_real, check_seed
from visual_search.embed import embed
from visual_search.errors import TopicsError
from visual_search.index import exact_search
from visual_search.models import Encoder
from visual_search.topics._validate import encoder_or_default
from visual_search.topics._validate import vectors as check_vectors

#: The number of distinct tags: one per super-category.
N_TAGS = len(data.SUPER_CATEGORY_NAMES)
#: The noise rates ``evaluate_metadata`` sweeps by default.
NOISE_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
#: The hybrid's default weight: a matching tag is worth this much cosine similarity.
HYBRID_WEIGHT = 0.1
#: Neighbours that vote on a predicted tag.
PREDICT_K = 10
#: The methods ``evaluate_metadata`` reports, in order.
METHODS = ("filter, user tag", "hybrid, user tag", "filter, predicted tag", "hybrid, predicted tag")


# ---- checks --------------------------------------------------------------------------------------


def _tags(tags: object, name: str, n_tags: int | None = N_TAGS, length: int | None = None) -> np.ndarray:
    """A non-empty integer array ``[N]`` of tags in 0..n_tags-1 (any >= 0 for None; ``length`` entries if given), as int64."""
    try:
        array = np.asarray(tags) if not isinstance(tags, (str, bytes)) else None
    except (TypeError, ValueError):  # ragged lists
        array = None
    if array is None or array.ndim != 1 or array.dtype.kind not in "iu" or len(array) == 0:
        got = f"{array.dtype} {list(array.shape)}" if array is not None else type(tags).__name__
        raise TopicsError(f"{name} must be a non-empty integer array [N], got {got}")
    if length is not None and len(array) != length:
        raise TopicsError(f"{name} must have {length} entries (one per row), got {len(array)}")
    if array.min() < 0 or (n_tags is not None and array.max() >= n_tags):
        allowed = ">= 0" if n_tags is None else f"in 0..{n_tags - 1}"
        raise TopicsError(f"{name} must be tags {allowed}, got values {int(array.min())}..{int(array.max())}")
    return array.astype(np.int64)


def _n_tags(n_tags: object) -> int:
    return check_int(n_tags, "n_tags", low=2, high=1_000_000, error=TopicsError)


def _similarities(similarities: object) -> np.ndarray:
    if not isinstance(similarities, np.ndarray) or similarities.ndim != 2 or similarities.dtype.kind != "f" or 0 in similarities.shape:
        got = f"{similarities.dtype} {list(similarities.shape)}" if isinstance(similarities, np.ndarray) else type(similarities).__name__
        raise TopicsError(f"similarities must be a non-empty float array [queries, gallery], got {got}")
    if not np.isfinite(similarities).all():
        raise TopicsError("similarities contains NaN or infinity")
    return similarities


def _k(k: object, n_gallery: int) -> int:
    return check_int(k, "k", low=1, high=n_gallery, error=TopicsError)


# ---- tags ------------------------------------------------------------------------------------------


def super_category_tags(labels: np.ndarray | Sequence[int]) -> np.ndarray:
    """The clean tag of each image: its class label's super-category (an index into ``data.SUPER_CATEGORY_NAMES``).

    Args:
        labels: integer class labels ``[N]``, 0..9.

    Returns:
        int64 ``[N]``, each in 0..``N_TAGS - 1``.
    """
    labels = _tags(labels, "labels", n_tags=len(data.CLASS_NAMES))
    return data.SUPER_CATEGORY_OF_LABEL[labels].astype(np.int64)


def noisy_tags(tags: np.ndarray | Sequence[int], noise_rate: float, seed: int = 0, n_tags: int = N_TAGS) -> np.ndarray:
    """Replace a share of the tags with a random other tag: user tags as unreliable as real ones.

    Exactly ``round(noise_rate * N)`` tags, drawn without replacement, are changed, each to a
    tag drawn uniformly from the ``n_tags - 1`` others, so the share of wrong tags is the
    rate itself (not a random number near it) and a "changed" tag is always wrong.

    Args:
        tags: integer tags ``[N]``, 0..n_tags-1 (the clean ones).
        noise_rate: the share to replace, 0..1.
        seed: seeds which tags change and what to.
        n_tags: how many distinct tags exist, >= 2.

    Returns:
        A new int64 ``[N]`` array.
    """
    n_tags = _n_tags(n_tags)
    tags = _tags(tags, "tags", n_tags)
    noise_rate = check_real(noise_rate, "noise_rate", low=0.0, high=1.0, error=TopicsError)
    rng = np.random.default_rng(check_seed(seed, "seed", error=TopicsError))
    out = tags.copy()
    changed = rng.choice(len(tags), size=int(round(noise_rate * len(tags))), replace=False)
    shift = rng.integers(1, n_tags, size=len(changed))  # 1..n_tags-1 steps round the circle: never the same tag
    out[changed] = (tags[changed] + shift) % n_tags
    return out


def predict_tags(
    query_vectors: np.ndarray, gallery_vectors: np.ndarray, gallery_tags: np.ndarray, k: int = PREDICT_K, n_tags: int = N_TAGS
) -> np.ndarray:
    """Each query's tag by a vote of its ``k`` nearest gallery neighbours' tags (exact cosine search).

    A tie goes to the tied tag whose first voter ranks highest (the nearer neighbour).

    Args:
        query_vectors: float ``[Q, D]`` embeddings.
        gallery_vectors: float ``[G, D]``, same model.
        gallery_tags: integer ``[G]``, 0..n_tags-1 (noisy or clean).
        k: voters, 1..G.
        n_tags: distinct tags, >= 2.

    Returns:
        int64 ``[Q]``.
    """
    query_vectors = check_vectors(query_vectors, "query_vectors")
    gallery_vectors = check_vectors(gallery_vectors, "gallery_vectors", query_vectors.shape[1])
    n_tags = _n_tags(n_tags)
    gallery_tags = _tags(gallery_tags, "gallery_tags", n_tags, len(gallery_vectors))
    k = _k(k, len(gallery_vectors))
    _, ids = exact_search(query_vectors, gallery_vectors, k, metric="cosine")
    votes = gallery_tags[ids]  # [Q, k], nearest first
    counts = np.zeros((len(votes), n_tags), dtype=np.int64)
    np.add.at(counts, (np.arange(len(votes))[:, None], votes), 1)
    tied = counts[np.arange(len(votes))[:, None], votes] == counts.max(axis=1, keepdims=True)  # voters of a top tag
    return votes[np.arange(len(votes)), np.argmax(tied, axis=1)]


# ---- rankings --------------------------------------------------------------------------------------


def visual_similarities(query_vectors: np.ndarray, gallery_vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query with every gallery item: float32 ``[Q, G]`` (rows need not be unit length)."""
    query_vectors = check_vectors(query_vectors, "query_vectors")
    gallery_vectors = check_vectors(gallery_vectors, "gallery_vectors", query_vectors.shape[1])

    def unit(x: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise TopicsError("vectors: a zero vector has no direction, so no cosine similarity")
        return x / norms

    return (unit(query_vectors) @ unit(gallery_vectors).T).astype(np.float32)


def _matches(similarities: np.ndarray, query_tags: object, gallery_tags: object) -> np.ndarray:
    """``[Q, G]`` booleans: does candidate g carry query q's tag?"""
    n_queries, n_gallery = similarities.shape
    q = _tags(query_tags, "query_tags", None, n_queries)
    g = _tags(gallery_tags, "gallery_tags", None, n_gallery)
    return q[:, None] == g[None, :]


def rank_visual(similarities: np.ndarray, k: int = 100) -> np.ndarray:
    """The top ``k`` gallery ids per query by similarity alone (ties: lower id first): int64 ``[Q, k]``."""
    similarities = _similarities(similarities)
    k = _k(k, similarities.shape[1])
    return np.argsort(-similarities, axis=1, kind="stable")[:, :k].astype(np.int64)


def rank_filtered(similarities: np.ndarray, query_tags: np.ndarray, gallery_tags: np.ndarray, k: int = 100) -> np.ndarray:
    """The tag filter: candidates whose tag matches the query's first, in visual order, then the rest (the back-fill).

    Args:
        similarities: float ``[Q, G]`` (``visual_similarities``).
        query_tags: integer ``[Q]``; gallery_tags: integer ``[G]``; tags are non-negative integers.
        k: results per query, 1..G.

    Returns:
        int64 ``[Q, k]`` gallery ids.
    """
    similarities = _similarities(similarities)
    match = _matches(similarities, query_tags, gallery_tags)
    k = _k(k, similarities.shape[1])
    order = np.lexsort((-similarities, ~match), axis=-1)  # the last key sorts first; lexsort is stable (ties: lower id)
    return order[:, :k].astype(np.int64)


def hybrid_scores(similarities: np.ndarray, query_tags: np.ndarray, gallery_tags: np.ndarray, weight: float = HYBRID_WEIGHT) -> np.ndarray:
    """``similarity + weight * [the candidate's tag is the query's]``: float64 ``[Q, G]``.

    Args:
        similarities: float ``[Q, G]``.
        query_tags, gallery_tags: integer ``[Q]`` and ``[G]``.
        weight: what a matching tag is worth in cosine similarity, 0..1000 (0: visual only;
            above 2, every match outranks every non-match: the filter).
    """
    similarities = _similarities(similarities)
    match = _matches(similarities, query_tags, gallery_tags)
    weight = check_real(weight, "weight", low=0.0, high=1_000.0, error=TopicsError)
    return similarities.astype(np.float64) + weight * match


def rank_hybrid(similarities: np.ndarray, query_tags: np.ndarray, gallery_tags: np.ndarray, weight: float = HYBRID_WEIGHT, k: int = 100) -> np.ndarray:
    """The top ``k`` gallery ids per query by ``hybrid_scores`` (ties: lower id first): int64 ``[Q, k]``."""
    scores = hybrid_scores(similarities, query_tags, gallery_tags, weight)
    k = _k(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)


# ---- the measurement -------------------------------------------------------------------------------


def evaluate_metadata(
    noise_rates: Sequence[float] = NOISE_RATES,
    weight: float = HYBRID_WEIGHT,
    n_queries: int | None = None,
    seed: int = 0,
    encoder: Encoder | None = None,
    graded: evalset.GradedEvalSet | None = None,
) -> dict:
    """Tags as a filter and as a hybrid score on the graded set, against the visual ranking, as the gallery's tags get noisier.

    The gallery's tags are its super-categories with ``noise_rate`` of them wrong
    (``noisy_tags``, seeded with ``seed``: the same wrong tags for every method at one rate).
    The user's query tag is the query's true super-category; the predicted one is the vote
    of its ``PREDICT_K`` nearest neighbours' (noisy) tags. Every ranking is scored by
    ``evalset.evaluate_rankings`` (grades: 5 copy, 3 same class, 1 same super-category).

    Args:
        noise_rates: the shares of wrong gallery tags to sweep, each 0..1 (default 0..0.5).
        weight: the hybrid's weight (``hybrid_scores``).
        n_queries: evenly spaced queries of the graded set (default 100 in fast mode, all 500 otherwise).
        seed: seeds the tag noise.
        encoder: default the committed CNN (``load_pretrained()``).
        graded: default ``evalset.load_graded_eval()``.

    Returns:
        ``{"n_queries", "n_gallery", "weight", "noise_rates": [...],
        "visual": {"nDCG@10", "mAP@100"},
        "nDCG@10": {method: [one per rate]}, "mAP@100": {method: [...]},
        "predicted tag accuracy": [...]}`` with the methods of ``METHODS``.
    """
    if isinstance(noise_rates, (str, bytes)) or not isinstance(noise_rates, (Sequence, np.ndarray)) or len(noise_rates) == 0:
        raise TopicsError(f"noise_rates must be a non-empty sequence of shares 0..1, got {noise_rates!r}")
    rates = [check_real(r, "noise_rates entry", low=0.0, high=1.0, error=TopicsError) for r in noise_rates]
    weight = check_real(weight, "weight", low=0.0, high=1_000.0, error=TopicsError)
    seed = check_seed(seed, "seed", error=TopicsError)
    graded = evalset.load_graded_eval() if graded is None else graded
    if not isinstance(graded, evalset.GradedEvalSet):
        raise TopicsError(f"graded must be a visual_search.evalset.GradedEvalSet, got {type(graded).__name__}")
    n_queries = check_int((100 if config.is_fast() else len(graded)) if n_queries is None else n_queries, "n_queries",
                          low=1, high=len(graded), error=TopicsError)
    if n_queries < len(graded):
        graded = graded.subset(n_queries)
    encoder = encoder_or_default(encoder)

    queries = embed(encoder, graded.query_images, progress=False)
    gallery = embed(encoder, graded.gallery_images, progress=False)
    similarities = visual_similarities(queries, gallery)
    user_tags = super_category_tags(graded.query_labels)
    clean_gallery_tags = super_category_tags(graded.gallery_labels)
    k = 100  # enough for nDCG@10 and mAP@100

    def score(ranked: np.ndarray) -> tuple[float, float]:
        scores = evalset.evaluate_rankings(ranked, graded, k=10, map_k=100)
        return scores["nDCG@10"], scores["mAP@100"]

    visual = score(rank_visual(similarities, k))
    ndcg: dict[str, list[float]] = {method: [] for method in METHODS}
    mean_ap: dict[str, list[float]] = {method: [] for method in METHODS}
    accuracy = []
    for rate in rates:
        gallery_tags = noisy_tags(clean_gallery_tags, rate, seed=seed)
        predicted = predict_tags(queries, gallery, gallery_tags)
        accuracy.append(float((predicted == user_tags).mean()))
        for method, query_tags in (("user tag", user_tags), ("predicted tag", predicted)):
            for use, ranked in (("filter", rank_filtered(similarities, query_tags, gallery_tags, k)),
                                ("hybrid", rank_hybrid(similarities, query_tags, gallery_tags, weight, k))):
                n, m = score(ranked)
                ndcg[f"{use}, {method}"].append(n)
                mean_ap[f"{use}, {method}"].append(m)
    return {
        "n_queries": n_queries,
        "n_gallery": len(graded.gallery_images),
        "weight": weight,
        "noise_rates": rates,
        "visual": {"nDCG@10": visual[0], "mAP@100": visual[1]},
        "nDCG@10": ndcg,
        "mAP@100": mean_ap,
        "predicted tag accuracy": accuracy,
    }
