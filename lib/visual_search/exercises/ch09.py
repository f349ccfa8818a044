"""Checks for chapter 09, the serving pipeline: over-fetching, the filter rules, near-duplicate collapse,
pixel hashes and the memory of a float32 index."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from visual_search.exercises._core import call, checker, expect_equal
from visual_search.index import build_index
from visual_search.service.catalog import ImageRecord, content_hash
from visual_search.service.neighbours import overfetch
from visual_search.service.rerank import Candidate, CollapseNearDuplicates, DropBlocked, DropDeleted, DropPrivate, DropQueryDuplicates, QueryContext, rerank


@checker
def fetch_depth(answer: Callable[[int, int], int], rng: np.random.Generator) -> int:
    """``answer(k, n)`` -> how many candidates the first fetch asks for: the library's ``overfetch``."""
    cases = [(10, 1_000_000), (60, 1_000_000), (10, 25)]  # the small-k term, the large-k term, a tiny index
    cases += [(int(rng.integers(1, 101)), int(rng.choice([int(rng.integers(0, 120)), int(rng.integers(120, 100_000))]))) for _ in range(9)]
    for i, (k, n) in enumerate(cases):
        case = f"case {i + 1} (k={k}, an index of n={n:,} vectors)"
        expect_equal(call(answer, k, n, case=case), overfetch(k, n), case,
                     "k' = max(2k, k + 40): the + 40 wins for k < 40, the 2k beyond it; and never more than the n vectors the index holds")
    return len(cases)


OWNERS = (None, "alice", "bob", "carol")
USERS = (None, "alice", "bob")


def _records(rng: np.random.Generator, n: int) -> tuple[list[ImageRecord | None], list[str]]:
    hashes = [f"{int(h):064x}" for h in rng.integers(0, 2**62, size=6)]
    records: list[ImageRecord | None] = []
    for i in range(n):
        if rng.random() < 0.1:
            records.append(None)  # the catalog row is gone
            continue
        records.append(ImageRecord(id=i, owner=OWNERS[int(rng.integers(len(OWNERS)))], uploaded_at=0.0,
                                   private=bool(rng.random() < 0.25), blocked=bool(rng.random() < 0.15),
                                   content_hash=hashes[int(rng.integers(len(hashes)))], model_version="v", label=None, source="upload"))
    return records, hashes


@checker
def visible(answer: Callable[[list, str | None, frozenset], list], rng: np.random.Generator) -> int:
    """``answer(records, user, query_hashes)`` -> the positions the deleted, blocked, private and query-duplicate rules keep."""
    rules = [DropDeleted(), DropBlocked(), DropPrivate(), DropQueryDuplicates()]
    for i in range(10):
        records, hashes = _records(rng, int(rng.integers(4, 16)))
        user = USERS[i % len(USERS)]
        # always one private image of nobody's (owner None: user None must not count as its owner),
        # and, for a named user, one of the user's own private images (which the user must see)
        extra = [ImageRecord(100, None, 0.0, True, False, "e" * 64, "v", None, "upload")]
        if user is not None:
            extra.append(ImageRecord(101, user, 0.0, True, False, "f" * 64, "v", None, "upload"))
        for r in extra:
            records.insert(int(rng.integers(len(records) + 1)), r)
        query_hashes = frozenset(h for h in hashes if rng.random() < 0.2)
        candidates = [Candidate(j, 1.0 - j / 100, r) for j, r in enumerate(records)]
        kept, dropped = rerank(candidates, QueryContext(k=len(records), user=user, query_hashes=query_hashes), rules)
        want = np.array([c.id for c in kept], dtype=np.int64)
        case = f"case {i + 1} ({len(records)} candidates, user={user!r}, the rules drop {dropped})"
        got = call(answer, list(records), user, query_hashes, case=case)
        expect_equal(got, want, case,
                     "keep position j unless: records[j] is None (deleted); .blocked; .private and the user is not its owner "
                     "(a private image with owner None is nobody's, and user None owns nothing); or .content_hash is in query_hashes. "
                     "Return the kept positions in rank order")
    return 10


def _embeddings(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    """n unit vectors in a few tight clusters, so some pairs are near-duplicates and chains occur."""
    centres = rng.standard_normal((int(rng.integers(1, 4)), dim))
    spread = rng.choice([0.03, 0.06, 0.1, 0.2], size=n)
    v = centres[rng.integers(len(centres), size=n)] + spread[:, None] * rng.standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _chain(rng: np.random.Generator, n: int, dim: int = 8) -> tuple[np.ndarray, float]:
    """Unit vectors at angles 0, a, 2a, ... in a random plane: each is close to its neighbours only."""
    angle = float(rng.uniform(0.05, 0.1))
    plane = np.linalg.qr(rng.standard_normal((dim, 2)))[0]
    t = angle * np.arange(n)
    v = (np.cos(t)[:, None] * plane[:, 0] + np.sin(t)[:, None] * plane[:, 1]).astype(np.float32)
    return v, float((np.cos(angle) + np.cos(2 * angle)) / 2)  # above cos(2a), below cos(a)


def _threshold_away_from(sims: np.ndarray, rng: np.random.Generator) -> float:
    """A threshold no off-diagonal similarity lies within 1e-3 of, so float rounding cannot decide a case."""
    off = sims[~np.eye(len(sims), dtype=bool)]
    for _ in range(200):
        t = float(rng.uniform(0.8, 0.995))
        if off.size == 0 or np.abs(off - t).min() > 1e-3:
            return t
    return 0.999_9  # pragma: no cover - 200 draws always find a gap for these sizes


@checker
def collapse_near_duplicates(answer: Callable[[np.ndarray, float], list], rng: np.random.Generator) -> int:
    """``answer(similarity, threshold)`` -> the positions the near-duplicate rule keeps, for candidates in rank order."""
    for i in range(10):
        n = int(rng.integers(3, 25))
        if i == 0:
            vectors, threshold = _chain(rng, n)
            kind = "a chain: each candidate is close only to the next one"
        else:
            vectors = _embeddings(rng, n)
            threshold = _threshold_away_from(vectors @ vectors.T, rng)
            kind = "clustered candidates"
        records = [ImageRecord(j, None, 0.0, False, False, "0" * 64, "v", None, "upload", vectors[j]) for j in range(n)]
        candidates = [Candidate(j, 1.0 - j / 100, r) for j, r in enumerate(records)]
        want = np.array([c.id for c in CollapseNearDuplicates(threshold)(candidates, QueryContext(k=n))], dtype=np.int64)
        similarity = (vectors.astype(np.float64) @ vectors.astype(np.float64).T)
        case = f"case {i + 1} ({kind}, {n} candidates, threshold {threshold:.4f})"
        got = call(answer, similarity.copy(), threshold, case=case)
        expect_equal(got, want, case,
                     "walk the candidates in rank order and drop one only if its similarity is above the threshold (strictly) "
                     "with a candidate you have KEPT; one close only to dropped candidates stays (the chain case). "
                     "Return the kept positions in rank order")
    return 10


def _pixels(rng: np.random.Generator, i: int) -> tuple[np.ndarray, str]:
    dtype = [np.uint8, np.uint8, np.int16, np.float32][i % 4]
    if i in (2, 5):
        a = (rng.random((5, 7)) * 255).astype(dtype).T
        return a, f"a transposed {a.shape} {np.dtype(dtype).name} view"
    shape = [(28, 28), (5, 7), (3, 4, 3), (1, 9)][int(rng.integers(4))]
    a = (rng.random(shape) * 255).astype(dtype)
    return a, f"{shape} {np.dtype(dtype).name} pixels"


@checker
def pixel_hash(answer: Callable[[np.ndarray], str], rng: np.random.Generator) -> int:
    """``answer(pixels)`` -> the 64 hex digits of the library's ``content_hash``."""
    cases = [_pixels(rng, i) for i in range(8)]
    flat = (rng.random((28, 28)) * 255).astype(np.uint8)
    cases += [(flat, "28 x 28 uint8 pixels"), (flat.reshape(14, 56), "the same bytes as case 9 but shaped 14 x 56")]
    for i, (pixels, kind) in enumerate(cases):
        case, want = f"case {i + 1} ({kind})", content_hash(pixels)
        expect_equal(call(answer, pixels, case=case), want, case,
                     "feed one hashlib.sha256 the header f'{pixels.dtype.str} {list(pixels.shape)}\\n' (encoded as bytes), "
                     "then pixels.tobytes() (C order, whatever the array's layout), and return .hexdigest(); "
                     "the header is what tells a 28x28 image from the same bytes shaped 14x56, or uint8 from int16")
    return len(cases)


@checker
def index_bytes(answer: Callable[[int, int], int], rng: np.random.Generator) -> int:
    """``answer(n, dim)`` -> the bytes of an exact cosine index of n float32 vectors with 8-byte ids."""
    for i in range(8):
        n, dim = int(rng.integers(1, 400)), int(rng.choice([2, 8, 64, 128, int(rng.integers(3, 200))]))
        index = build_index("exact", dim, metric="cosine").add(rng.standard_normal((n, dim)).astype(np.float32))
        case = f"case {i + 1} ({n} vectors of {dim} dims)"
        expect_equal(call(answer, n, dim, case=case), index.memory_bytes(), case,
                     "each vector is dim float32 numbers (4 bytes each) plus its id, an int64 (8 bytes): n x (4 x dim + 8)")
    return 8
