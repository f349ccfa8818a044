"""The graded evaluation set: queries, candidates, and a 0-5 similarity grade for each pair.

Real platforms pay human raters to grade (query, candidate) pairs. We cannot,
so the grades follow a fixed, documented rule over Fashion-MNIST's labels:

    5  the candidate is an augmented copy of the query (random crop, flip,
       brightness/contrast), planted in the gallery: a near-duplicate;
    3  the candidate has the query's class (a Sneaker for a Sneaker);
    1  the candidate has the query's super-category (a Sandal for a Sneaker);
    0  anything else.

Every gallery image is a candidate for every query, so ``grades`` is a dense
``[Q, G]`` uint8 matrix. Binary metrics (MRR, P@k, R@k, mAP) call a candidate
relevant when its grade is at least ``RELEVANT_GRADE`` (3: same class or copy).

``datasets/build_datasets.py`` builds the file from the committed sample with
``build_graded_eval``; ``load_graded_eval`` reads it back.

Reference rankings put every system in context on this set: ``rank_randomly``
(chance, the floor), ``rank_raw_pixels`` (the baseline that needs no model) and
``rank_ideally`` (an oracle that sorts by the true grade: each metric's ceiling).
``rank_all`` runs the three and ``score_rankings`` scores any ``{name: ids}``
with every offline metric plus an nDCG@k curve; ``viz.plot_scores`` draws the
result. They read and write no files, so notebook 07 and ``bench baseline`` call
the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from visual_search import config, metrics
from visual_search.data import SUPER_CATEGORY_OF_LABEL, DataError, Sample
from visual_search.embed import raw_pixel_embeddings
from visual_search.index.exact import exact_search

GRADE_COPY, GRADE_SAME_CLASS, GRADE_SAME_SUPER_CATEGORY, GRADE_OTHER = 5, 3, 1, 0
#: Binary metrics count grade >= this as relevant.
RELEVANT_GRADE = GRADE_SAME_CLASS
EVAL_PATH = config.DATASETS_DIR / "graded_eval.npz"
#: The cut-offs of the nDCG@k curve ``score_rankings`` adds.
NDCG_KS = (1, 2, 3, 5, 10, 20, 50, 100)
#: The name ``rank_all`` gives the oracle: a reference point (drawn as a line), not a system.
ORACLE = "ideal (oracle)"


@dataclass(frozen=True)
class GradedEvalSet:
    """Queries, a gallery of candidates, and a grade for every (query, candidate) pair.

    Attributes:
        query_images: uint8 ``[Q, 28, 28]``.
        query_labels: int64 ``[Q]``.
        gallery_images: uint8 ``[G, 28, 28]``: the sample's gallery, then one augmented copy per query.
        gallery_labels: int64 ``[G]``.
        copy_of: int64 ``[G]``: the query a gallery image is a copy of, or -1.
        grades: uint8 ``[Q, G]``, each 0..5.
    """

    query_images: np.ndarray
    query_labels: np.ndarray
    gallery_images: np.ndarray
    gallery_labels: np.ndarray
    copy_of: np.ndarray
    grades: np.ndarray

    def __len__(self) -> int:
        return len(self.query_images)

    def subset(self, n_queries: int, n_gallery: int | None = None) -> GradedEvalSet:
        """``n_queries`` evenly spaced queries (class-balanced when n is a multiple of 10), and the gallery.

        Queries are stored class by class, so we take every (Q / n)-th one. ``copy_of``
        is renumbered to the new query positions (copies of queries left out become -1,
        ordinary same-class items).

        Args:
            n_queries: queries to keep, 1..Q.
            n_gallery: candidates to keep (default: all). The planted copies of the kept
                queries always stay; the rest are evenly spaced ordinary candidates (the
                gallery is stored class by class too). A smaller, cheaper set for fast mode.

        Raises:
            DataError: for counts out of range.
        """
        if isinstance(n_queries, bool) or not isinstance(n_queries, (int, np.integer)) or not 1 <= n_queries <= len(self):
            raise DataError(f"n_queries must be in 1..{len(self)}, got {n_queries!r}")
        pick = np.linspace(0, len(self) - 1, n_queries).round().astype(np.int64)
        new_position = np.full(len(self), -1, dtype=np.int64)
        new_position[pick] = np.arange(n_queries)
        copy_of = np.where(self.copy_of >= 0, new_position[np.maximum(self.copy_of, 0)], -1)
        columns = np.arange(len(self.gallery_images))
        if n_gallery is not None:
            copies, others = np.flatnonzero(copy_of >= 0), np.flatnonzero(copy_of < 0)
            if isinstance(n_gallery, bool) or not isinstance(n_gallery, (int, np.integer)) or not len(copies) <= n_gallery <= len(columns):
                raise DataError(f"n_gallery must be in {len(copies)}..{len(columns)} (the kept queries' copies stay), got {n_gallery!r}")
            spaced = np.linspace(0, len(others) - 1, n_gallery - len(copies)).round().astype(np.int64)
            columns = np.sort(np.concatenate([others[spaced], copies]))
        return GradedEvalSet(
            self.query_images[pick],
            self.query_labels[pick],
            self.gallery_images[columns],
            self.gallery_labels[columns],
            copy_of[columns],
            self.grades[np.ix_(pick, columns)],
        )

    def grade_maps(self) -> list[dict[int, int]]:
        """Per query, ``{gallery id: grade}`` for every candidate with grade > 0 (the rest are 0)."""
        return [{int(g): int(row[g]) for g in np.flatnonzero(row)} for row in self.grades]

    def relevant_sets(self, threshold: int = RELEVANT_GRADE) -> list[set[int]]:
        """Per query, the gallery ids graded at least ``threshold``."""
        return [set(np.flatnonzero(row >= threshold).tolist()) for row in self.grades]


def grade_matrix(query_labels: np.ndarray, gallery_labels: np.ndarray, copy_of: np.ndarray) -> np.ndarray:
    """Apply the grading rule to every (query, candidate) pair; returns uint8 ``[Q, G]``."""
    q = np.asarray(query_labels)[:, None]
    g = np.asarray(gallery_labels)[None, :]
    grades = np.full((len(query_labels), len(gallery_labels)), GRADE_OTHER, dtype=np.uint8)
    grades[SUPER_CATEGORY_OF_LABEL[q] == SUPER_CATEGORY_OF_LABEL[g]] = GRADE_SAME_SUPER_CATEGORY
    grades[q == g] = GRADE_SAME_CLASS
    grades[np.arange(len(query_labels))[:, None] == np.asarray(copy_of)[None, :]] = GRADE_COPY
    return grades


def near_duplicate_augmentation() -> v2.Compose:
    """The augmentation that makes a grade-5 copy: what a re-upload or a screenshot might do."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(28, scale=(0.7, 1.0), ratio=(0.85, 1.15), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.3, contrast=0.3),
        ]
    )


def build_graded_eval(sample: Sample, seed: int = 0) -> GradedEvalSet:
    """Build the graded set from the sample: plant one augmented copy of each query in the gallery.

    Args:
        sample: the committed sample (its queries and gallery).
        seed: seeds torch's generator; the same seed and torch version give the same copies.

    Returns:
        The ``GradedEvalSet``.
    """
    augment = near_duplicate_augmentation()
    with torch.random.fork_rng():  # seed locally; the caller's global RNG state is restored afterwards
        torch.manual_seed(seed)
        copies = np.stack([augment(torch.from_numpy(img).unsqueeze(0))[0].numpy() for img in sample.query_images])
    n_gallery, n_query = len(sample.gallery_images), len(sample.query_images)
    copy_of = np.concatenate([np.full(n_gallery, -1), np.arange(n_query)]).astype(np.int64)
    gallery_labels = np.concatenate([sample.gallery_labels, sample.query_labels]).astype(np.int64)
    return GradedEvalSet(
        query_images=sample.query_images,
        query_labels=sample.query_labels,
        gallery_images=np.concatenate([sample.gallery_images, copies]).astype(np.uint8),
        gallery_labels=gallery_labels,
        copy_of=copy_of,
        grades=grade_matrix(sample.query_labels, gallery_labels, copy_of),
    )


def save_graded_eval(evalset: GradedEvalSet, path: str | Path = EVAL_PATH) -> None:
    """Write the set as a compressed ``.npz`` (one array per field)."""
    np.savez_compressed(path, **{name: getattr(evalset, name) for name in GradedEvalSet.__dataclass_fields__})


def load_graded_eval(path: str | Path = EVAL_PATH) -> GradedEvalSet:
    """Load the committed graded evaluation set (500 queries x 2,500 candidates).

    Raises:
        DataError: if the file is missing, lacks a field, or has grades outside 0..5.
    """
    path = Path(path)
    try:
        with np.load(path) as z:
            evalset = GradedEvalSet(**{name: z[name] for name in GradedEvalSet.__dataclass_fields__})
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: cannot load the graded evaluation set ({e}); rebuild it with `python datasets/build_datasets.py`") from e
    if evalset.grades.shape != (len(evalset.query_images), len(evalset.gallery_images)) or evalset.grades.max(initial=0) > metrics.MAX_GRADE:
        raise DataError(f"{path}: grades must be a [queries, candidates] matrix of 0..5, got shape {evalset.grades.shape}")
    return evalset


def evaluate_rankings(ranked: np.ndarray, evalset: GradedEvalSet, k: int = 10, map_k: int = 100) -> dict[str, float]:
    """Score ranked gallery ids ``[Q, >= max(k, map_k)]`` against the graded set.

    AP divides by every relevant item, so when a query has more than ``map_k``
    relevant candidates (ours have 250) even a perfect ranking scores below 1:
    ``rank_ideally`` (below) gives each metric's ceiling.

    Returns:
        ``{"MRR", f"P@{k}", f"R@{k}", f"mAP@{map_k}", f"nDCG@{k}"}``; binary metrics
        use ``RELEVANT_GRADE``.

    Raises:
        DataError: if ``ranked`` is not an integer ``[Q, K]`` array with K >= max(k, map_k)
            whose ids are all valid gallery positions (a buggy index should fail
            loudly here, not look like a bad model).
    """
    ranked = np.asarray(ranked)
    need = max(k, map_k)
    if ranked.ndim != 2 or len(ranked) != len(evalset) or ranked.shape[1] < need:
        raise DataError(f"ranked: expected [{len(evalset)}, K >= {need}] gallery ids, got shape {list(ranked.shape)}")
    if ranked.dtype.kind not in "iu":
        raise DataError(f"ranked: gallery ids must be integers, got dtype {ranked.dtype}")
    bad = (ranked < 0) | (ranked >= len(evalset.gallery_images))
    if bad.any():
        q, pos = np.argwhere(bad)[0]
        raise DataError(
            f"ranked: id {ranked[q, pos]} (query {q}, position {pos}) is not a gallery id 0..{len(evalset.gallery_images) - 1}; "
            f"{int(bad.sum())} such ids in all"
        )
    lists = ranked.tolist()
    relevant = evalset.relevant_sets()
    return {
        "MRR": metrics.mean_reciprocal_rank(lists, relevant),
        f"P@{k}": metrics.mean_precision_at_k(lists, relevant, k),
        f"R@{k}": metrics.mean_recall_at_k(lists, relevant, k),
        f"mAP@{map_k}": metrics.mean_average_precision(lists, relevant, map_k),
        f"nDCG@{k}": metrics.mean_ndcg_at_k(lists, evalset.grade_maps(), k),
    }


def rank_raw_pixels(evalset: GradedEvalSet, k: int = 100) -> np.ndarray:
    """Top-k gallery ids per query by cosine similarity of normalised raw pixels (the baseline).

    ``k`` is capped at the gallery size, like every search in the library.
    """
    queries, gallery = raw_pixel_embeddings(evalset.query_images), raw_pixel_embeddings(evalset.gallery_images)
    return exact_search(queries, gallery, k, metric="ip")[1]  # unit rows: inner product = cosine


def rank_randomly(evalset: GradedEvalSet, k: int = 100, seed: int = 0) -> np.ndarray:
    """k distinct random gallery ids per query: the chance level every method must beat."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(len(evalset.gallery_images))[:k] for _ in range(len(evalset))])


def rank_ideally(evalset: GradedEvalSet, k: int = 100) -> np.ndarray:
    """The oracle: gallery ids sorted by grade (ties by id). Its scores are each metric's ceiling
    on this set; e.g. mAP@100 cannot reach 1 when a query has more than 100 relevant items."""
    return np.argsort(-evalset.grades.astype(np.int64), axis=1, kind="stable")[:, :k]


def rank_all(evalset: GradedEvalSet, k: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Rank with every reference method: ``{name: ids [Q, k]}``, floor first, ceiling (``ORACLE``) last."""
    return {
        "random": rank_randomly(evalset, k, seed=seed),
        "raw pixels": rank_raw_pixels(evalset, k),
        ORACLE: rank_ideally(evalset, k),
    }


def score_rankings(rankings: dict[str, np.ndarray], evalset: GradedEvalSet) -> dict[str, dict]:
    """Every offline metric per method (``evaluate_rankings``), plus ``"nDCG@k"``: ``{k: mean nDCG@k}`` for ``NDCG_KS``."""
    grade_maps = evalset.grade_maps()
    scores = {}
    for name, ranked in rankings.items():
        scores[name] = evaluate_rankings(ranked, evalset)
        scores[name]["nDCG@k"] = {k: metrics.mean_ndcg_at_k(np.asarray(ranked).tolist(), grade_maps, k) for k in NDCG_KS}
    return scores
