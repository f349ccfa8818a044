"""The graded evaluation set: queries, candidates, and a 0-5 similarity grade for each pair.

Real platforms pay human raters to grade (query, candidate) pairs. We cannot,
so the grades follow a fixed, documented rule over Fashion-MNIST's labels:

    5  the candidate is an edited copy of the query, planted in the gallery: a
       near-duplicate. ``unseen_edits`` makes it from edits that no training
       recipe of the course uses (``UNSEEN_EDITS``: JPEG re-compression, a
       shrink into a black canvas, a small zero-padded shift, sharpening or
       noise), so the copies do not favour the augmentations a model was
       trained to ignore (SimCLR's crops, flips, rotations, colour jitter, blur);
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

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

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
#: The edit families ``unseen_edits`` composes a grade-5 copy from; none is a training augmentation.
UNSEEN_EDITS = ("jpeg", "rescale_in_canvas", "translate", "sharpen_or_noise")
#: Each family is applied to a copy with this probability (at least one always is).
UNSEEN_EDIT_P = 0.5
#: The ranges ``unseen_edits`` draws from (uniform): JPEG quality, the shrunk item's side as a
#: fraction of the image, how far (whole pixels, each axis) it may sit from the canvas's centre,
#: the shift in whole pixels (each axis), the unsharp mask's strength (%)
#: and the Gaussian noise's standard deviation (grey levels of 0..255).
JPEG_QUALITY = (20, 60)
CANVAS_SCALE = (0.75, 0.90)
MAX_OFF_CENTRE = 2
MAX_SHIFT = 2
SHARPEN_PERCENT = (100, 200)
NOISE_SIGMA = (6.0, 16.0)


@dataclass(frozen=True)
class GradedEvalSet:
    """Queries, a gallery of candidates, and a grade for every (query, candidate) pair.

    Attributes:
        query_images: uint8 ``[Q, 28, 28]``.
        query_labels: int64 ``[Q]``.
        gallery_images: uint8 ``[G, 28, 28]``: the sample's gallery, then one edited copy per query
            (``unseen_edits``).
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


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``img`` moved by whole pixels (down ``dy``, right ``dx``), zeros where it left: no interpolation."""
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


def unseen_edits(images: np.ndarray, seed: int = 0, families: Sequence[str] = UNSEEN_EDITS) -> np.ndarray:
    """Edited copies of ``images`` made only from edits that no training recipe of the course uses.

    The grade-5 copies of the graded set (``build_graded_eval``) and chapter 04's edited
    queries are made here. They used to be made with a subset of SimCLR's own training
    augmentations (``augment.augment_batch``: random resized crop, flip, rotation,
    brightness/contrast jitter, blur), which favours SimCLR by construction: it was
    trained to ignore exactly those changes. So the rule is: **no** crop or resize-up,
    flip, rotation, brightness/contrast jitter or blur. Instead each copy gets a random
    composition of ``UNSEEN_EDITS``, each family applied with probability
    ``UNSEEN_EDIT_P`` (at least one always is), in this order:

    * ``rescale_in_canvas``: shrink the item to ``CANVAS_SCALE`` (75-90 %) of its side
      (Pillow's box filter, a downscale only) and paste it on a black canvas of the
      original size, up to ``MAX_OFF_CENTRE`` (2) whole pixels off centre on each axis;
    * ``translate``: a shift of up to ``MAX_SHIFT`` (2) whole pixels on each axis (not
      both zero), zero-padded, with no interpolation;
    * ``sharpen_or_noise``: half the time an unsharp mask (radius 1, strength
      ``SHARPEN_PERCENT``, 100-200 %), else additive Gaussian noise with a standard
      deviation in ``NOISE_SIGMA`` (6-16 grey levels), clipped to 0..255;
    * ``jpeg``: re-compression by Pillow at a quality in ``JPEG_QUALITY`` (20-60), last,
      as a re-upload would do.

    Every random number comes from ``numpy.random.default_rng(seed)`` (the global
    numpy and torch generators are not touched); the same seed and the pinned
    numpy/Pillow give the same copies.

    Args:
        images: uint8 ``[N, H, W]`` greyscale images (Fashion-MNIST's 28x28).
        seed: the seed of every random choice.
        families: the families that may be applied, a non-empty subset of ``UNSEEN_EDITS``
            (default: all). The random draws do not depend on it, so one family alone shows
            exactly its share of the default copies.

    Returns:
        uint8 ``[N, H, W]``: one edited copy per image, in order.

    Raises:
        DataError: if ``images`` is not a uint8 ``[N, H, W]`` array, or for an unknown family.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3 or 0 in images.shape[1:]:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"images: expected a uint8 [N, H, W] array, got {got}")
    allowed = np.array([f in families for f in UNSEEN_EDITS])
    if isinstance(families, str) or not allowed.any() or not set(families) <= set(UNSEEN_EDITS):
        raise DataError(f"families: expected a non-empty subset of {UNSEEN_EDITS}, got {families!r}")
    n, h, w = images.shape
    rng = np.random.default_rng(seed)
    apply = rng.random((n, len(UNSEEN_EDITS))) < UNSEEN_EDIT_P
    forced = rng.integers(len(UNSEEN_EDITS), size=n)  # the edit a copy gets when the coins gave it none
    apply[np.arange(n), forced] |= ~apply.any(axis=1)
    apply &= allowed
    jpeg, rescale, translate, sharpen_or_noise = apply.T
    quality = rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, size=n)
    scale = rng.uniform(*CANVAS_SCALE, size=n)
    off_centre = rng.integers(-MAX_OFF_CENTRE, MAX_OFF_CENTRE + 1, size=(n, 2))  # where the shrunk item goes
    steps = np.arange(-MAX_SHIFT, MAX_SHIFT + 1)
    offsets = np.array([(dy, dx) for dy in steps for dx in steps if dy or dx])  # every shift but (0, 0)
    shift = offsets[rng.integers(len(offsets), size=n)]
    sharpen = rng.random(n) < 0.5
    percent = rng.integers(SHARPEN_PERCENT[0], SHARPEN_PERCENT[1] + 1, size=n)
    sigma = rng.uniform(*NOISE_SIGMA, size=n)
    noise_seeds = rng.integers(2**63, size=n)

    out = np.empty_like(images)
    for i, img in enumerate(images):
        if rescale[i]:
            nh, nw = max(1, round(h * scale[i])), max(1, round(w * scale[i]))
            small = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BOX))
            top = int(np.clip((h - nh) // 2 + off_centre[i, 0], 0, h - nh))
            left = int(np.clip((w - nw) // 2 + off_centre[i, 1], 0, w - nw))
            img = np.zeros_like(img)
            img[top : top + nh, left : left + nw] = small
        if translate[i]:
            img = _shift(img, int(shift[i, 0]), int(shift[i, 1]))
        if sharpen_or_noise[i]:
            if sharpen[i]:
                img = np.asarray(Image.fromarray(img).filter(ImageFilter.UnsharpMask(radius=1, percent=int(percent[i]), threshold=0)))
            else:
                noise = np.random.default_rng(noise_seeds[i]).normal(0.0, sigma[i], size=img.shape)
                img = np.clip(img + noise, 0, 255).round().astype(np.uint8)
        if jpeg[i]:
            buffer = io.BytesIO()
            Image.fromarray(img).save(buffer, format="JPEG", quality=int(quality[i]))
            buffer.seek(0)
            img = np.asarray(Image.open(buffer).convert("L"))
        out[i] = img
    return out


def build_graded_eval(sample: Sample, seed: int = 0) -> GradedEvalSet:
    """Build the graded set from the sample: plant one edited copy of each query in the gallery.

    Args:
        sample: the committed sample (its queries and gallery).
        seed: seeds ``unseen_edits``; the same seed and the pinned numpy/Pillow give the same copies.

    Returns:
        The ``GradedEvalSet``.
    """
    copies = unseen_edits(sample.query_images, seed=seed)
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
