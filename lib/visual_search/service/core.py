"""The visual search system: the three services and the indexing pipeline, wired together.

    search:  bytes -> EmbeddingService -> NeighbourService (k' > k) -> catalog records -> rerank -> k results
    text:    query -> text encoder (topics.text_search) -> the same NeighbourService -> rerank -> k results
    upload:  bytes -> decode -> blob file -> embed -> catalog row (commit) -> index.add      (searchable at once)
    delete:  catalog row deleted (commit) -> index.remove -> blob file dropped if unused
    swap:    new encoder -> re-embed the whole gallery in the background -> new index -> one assignment
    variant: a second encoder and its own index, served side by side (``search(variant=...)``), for
             the online experiments of chapter 08; uploads and deletes keep every variant current

**Consistency.** The catalog is the source of truth and the index a cache of its
``embedding`` column. Every write commits to the catalog first and then updates
the in-memory index; the index file is saved on clean shutdown, after start-up and
after a swap. So a crash can leave (a) a catalog row whose vector the saved index
lacks, or (b) an index entry whose row is gone. ``reconcile``, run at every start,
adds (a) from the stored embeddings and removes (b). Meanwhile the re-ranker drops
any candidate without a row (rule ``deleted``), so (b) is never shown.

**Concurrency.** Searches take no lock: each one reads ``self._active`` (encoder and
index, swapped together by one assignment) once, and the index's own snapshot. Writes
(upload, delete, the end of a swap) take one writer lock, so they are applied in one
order to the catalog and the index.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from tqdm import tqdm

from visual_search._checks import check_int
from visual_search.embed import embed
from visual_search.errors import NotFoundError, ServiceError, VectorIndexError
from visual_search.index import load_index
from visual_search.models import Encoder
from visual_search.service.blobs import BlobStore, stored_form
from visual_search.service.catalog import Catalog, ImageRecord, NewImage, content_hash
from visual_search.service.embedding import EmbeddingService
from visual_search.service.neighbours import DEFAULT_SPEC, EXACT_SPEC, IndexSpec, NeighbourService, overfetch
from visual_search.service.rerank import Candidate, QueryContext, Rule, default_rules, rerank
from visual_search.topics.moderation import ModerationModel
from visual_search.topics.text_search import TextEncoder

log = logging.getLogger("visual_search.service")

MAX_K = 100
#: The deepest a search fetches when the rules keep dropping candidates: a page of images that are all
#: private or near-copies of each other gets fewer than k results rather than an n x n similarity matrix.
MAX_FETCH = 2_000
#: Owner and user names: at most this many characters.
MAX_NAME = 200
#: How many recent search latencies ``stats`` summarises.
LATENCY_WINDOW = 2_000


def check_name(value: Any, name: str) -> str | None:
    """A user or owner name: None, or a string of 1..MAX_NAME printable characters."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME or not value.isprintable():
        shown = value[:40] + "..." if isinstance(value, str) and len(value) > 40 else value
        raise ServiceError(f"{name} {shown!r}: expected a printable string of at most {MAX_NAME} characters")
    return value


@dataclass(frozen=True)
class Result:
    id: int
    score: float
    rank: int
    url: str


@dataclass(frozen=True)
class SearchResponse:
    """What ``search`` returns (the API's JSON body, plus ``fetched``: the k' actually fetched)."""

    query_id: str
    model_version: str
    results: list[Result]
    dropped: dict[str, int]
    timing_ms: dict[str, float]
    fetched: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "model_version": self.model_version,
                "results": [r.__dict__ for r in self.results], "dropped": self.dropped, "timing_ms": self.timing_ms}


@dataclass(frozen=True)
class _Active:
    """The encoder and the index built from it: always replaced together."""

    embedder: EmbeddingService
    neighbours: NeighbourService


@dataclass
class Gallery:
    """Images to put into an empty catalog: uint8 ``[N, H, W]``, their labels and sources ("train:123")."""

    images: np.ndarray
    labels: np.ndarray
    sources: list[str]
    ids: np.ndarray | None = None
    name: str = "gallery"
    extra: dict[str, Any] = field(default_factory=dict)


def image_url(record: ImageRecord) -> str:
    """The URL the API serves an image at (a private image's URL names its owner)."""
    return f"/images/{record.id}" + (f"?user={quote(record.owner)}" if record.private and record.owner else "")


class VisualSearchService:
    """Open (or create) a service over ``data_dir`` with ``encoder``.

    Start-up: create the catalog and fill it from ``gallery`` if it is empty;
    re-embed everything if the catalog's embeddings come from another model; load
    the saved index (or build it from the catalog's embeddings); reconcile the two.
    ``self.startup`` says what each step did.

    Args:
        data_dir: holds ``catalog.sqlite3``, ``images/`` (the blob store) and ``index/``.
        encoder: the embedding model.
        gallery: images for an empty catalog, or a function that loads them (called only then);
            ignored when the catalog has images.
        spec: which index to build (see ``neighbours.DEFAULT_SPEC``).
        rules: the re-ranking chain (default ``rerank.default_rules()``).
        progress: show progress bars while building.
        text_encoder: a text tower trained against ``encoder`` (``topics.text_search``), for
            ``search_text``; None: the service answers image queries only.
        moderation: a classifier on ``encoder``'s embeddings (``topics.moderation``): an upload it
            flags is stored blocked, and (unless ``rules`` is given) the chain gains its ``moderation``
            rule, which hides flagged candidates; None: no automatic moderation.
    """

    def __init__(
        self,
        data_dir: str | Path,
        encoder: Encoder,
        gallery: Gallery | Callable[[], Gallery] | None = None,
        spec: IndexSpec = DEFAULT_SPEC,
        rules: Sequence[Rule] | None = None,
        progress: bool = True,
        text_encoder: TextEncoder | None = None,
        moderation: ModerationModel | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "index").mkdir(exist_ok=True)
        self.catalog = Catalog(self.data_dir / "catalog.sqlite3")
        self.blobs = BlobStore(self.data_dir / "images")
        self.spec = spec
        self.rules = list(rules) if rules is not None else default_rules(moderation=moderation)
        self.progress = progress
        if text_encoder is not None and not isinstance(text_encoder, TextEncoder):
            raise ServiceError(f"text_encoder: expected a topics.text_search.TextEncoder or None, got {type(text_encoder).__name__}")
        self.text_encoder = text_encoder
        if moderation is not None and not isinstance(moderation, ModerationModel):
            raise ServiceError(f"moderation: expected a topics.moderation.ModerationModel or None, got {type(moderation).__name__}")
        self.moderation = moderation
        self.started = time.time()
        self._writer = threading.Lock()
        self._swap_lock = threading.Lock()
        self._swap_thread: threading.Thread | None = None
        self.swap_error: str | None = None
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._latency_lock = threading.Lock()  # stats() copies the deque while searches append to it
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()
        self._variants: dict[str, _Active] = {}  # copy-on-write under the writer lock: readers take one snapshot

        embedder = EmbeddingService(encoder)
        if moderation is not None and (moderation.model_version not in (None, embedder.model_version) or moderation.dim != embedder.dim):
            self.catalog.close()
            raise ServiceError(f"moderation: the classifier was trained on model {moderation.model_version} ({moderation.dim}-d), "
                               f"but the encoder is {embedder.model_version} ({embedder.dim}-d)")
        self.startup: dict[str, Any] = {}
        t0 = time.perf_counter()
        if gallery is not None and not len(self.catalog.ids()):  # an empty catalog, also after an interrupted first start
            self.startup["gallery_added"] = self._add_gallery(embedder, gallery() if callable(gallery) else gallery)
        index, report = self._open_index(embedder)
        self.startup.update(report)
        self.startup["seconds"] = round(time.perf_counter() - t0, 3)
        self._active = _Active(embedder, self._neighbours(index))
        self.catalog.set_meta("model_version", embedder.model_version)

    # --------------------------------------------------------------- building
    def _neighbours(self, index) -> NeighbourService:
        """The nearest-neighbour service over ``index`` (the spec's kind, or the exact fallback for small galleries)."""
        label = self.spec.label() if index.kind == self.spec.kind else EXACT_SPEC.label()
        return NeighbourService(index, self.spec.search, label)  # it keeps only the knobs this index has

    def _index_path(self, model_version: str) -> Path:
        return self.data_dir / "index" / f"{model_version}.vsindex"

    def _add_gallery(self, embedder: EmbeddingService, gallery: Gallery) -> int:
        images = np.asarray(gallery.images)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ServiceError(f"gallery images: expected uint8 [N, H, W], got {images.dtype} {list(images.shape)}")
        ids = np.arange(len(images)) if gallery.ids is None else np.asarray(gallery.ids)
        digests = [self.blobs.put(im) for im in tqdm(images, desc=f"storing {len(images):,} {gallery.name} images", disable=not self.progress)]
        vectors = embed(embedder.encoder, images, progress=self.progress)  # one size: the library's batched path
        self.catalog.add(NewImage(d, embedder.model_version, v, s, label=int(lab), id=int(i))
                         for d, v, s, lab, i in zip(digests, vectors, gallery.sources, gallery.labels, ids))
        self.catalog.set_meta("gallery", gallery.name)
        return len(images)

    def _embed_catalog(self, embedder: EmbeddingService, rows: list[tuple[int, str]], missing_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Embed catalog images (``(id, content hash)`` pairs) from their stored files, in batches.

        Returns ``(ids, vectors)``. With ``missing_ok``, an image whose file is gone (deleted since
        ``rows`` was read: a swap reads without the writer lock) is left out; otherwise it is an error.
        """
        out, kept = [], []
        for start in tqdm(range(0, len(rows), 4096), desc=f"re-embedding {len(rows):,} images with {embedder.model_version}",
                          disable=not self.progress or len(rows) < 4096):
            pixels = []
            for image_id, digest in rows[start : start + 4096]:
                try:
                    pixels.append(self.blobs.pixels(digest))
                except NotFoundError:
                    if not missing_ok:
                        raise ServiceError(f"image {image_id}: its file {self.blobs.path(digest)} is missing; the data dir is damaged") from None
                    continue
                kept.append(image_id)
            if pixels:
                out.append(embedder.embed_pixels(pixels))
        vectors = np.concatenate(out) if out else np.empty((0, embedder.dim), np.float32)
        return np.array(kept, dtype=np.int64), vectors

    def _open_index(self, embedder: EmbeddingService) -> tuple[Any, dict[str, Any]]:
        """Load the saved index (or build one from the catalog) and reconcile it with the catalog."""
        mv = embedder.model_version
        report: dict[str, Any] = {"re_embedded": 0}
        stale = self.catalog.rows_not_from(mv)
        if stale:  # a new checkpoint since the last run: these vectors are another model's
            self.catalog.set_embeddings(*self._embed_catalog(embedder, stale), mv)
            report["re_embedded"] = len(stale)
        ids, vectors, _ = self.catalog.embeddings()
        if not len(ids):
            vectors = np.empty((0, embedder.dim), np.float32)
        path = self._index_path(mv)
        index = None
        if path.exists():
            try:
                index = load_index(path)
                if index.model_version not in (mv, None) or index.dim != vectors.shape[1]:
                    index = None
            except VectorIndexError as err:
                log.warning("ignoring the saved index: %s", err)
                report["index_file_error"] = str(err)
        report["index_loaded"] = index is not None
        if index is None:
            index = self.spec.build(vectors, ids, mv)
            report.update(added=len(ids), removed=0)
        else:  # the reconcile step: the catalog wins
            missing = np.setdiff1d(ids, index.ids, assume_unique=True)
            extra = np.setdiff1d(index.ids, ids, assume_unique=True)
            if len(extra):
                index.remove(extra)
            if len(missing):
                index.add(vectors[np.searchsorted(ids, missing)], missing, model_version=mv)
            report.update(added=len(missing), removed=len(extra))
        index.save(path)
        for other in path.parent.glob("*.vsindex"):  # files of earlier models: the catalog no longer matches them
            if other != path:
                other.unlink()
        return index, report

    # ---------------------------------------------------------------- reading
    @property
    def model_version(self) -> str:
        return self._active.embedder.model_version

    @property
    def index(self):
        """The index now answering searches."""
        return self._active.neighbours.index

    @property
    def embedder(self) -> EmbeddingService:
        """The embedding service now answering (replaced, with the index, by a model swap)."""
        return self._active.embedder

    @property
    def neighbours(self) -> NeighbourService:
        """The nearest-neighbour service now answering: the index with its search knobs."""
        return self._active.neighbours

    def search(self, image: bytes | np.ndarray, box: Sequence[float] | None = None, k: int = 20, user: str | None = None,
               variant: str | None = None, log: bool = True) -> SearchResponse:
        """Search with an upload (bytes) or decoded uint8 pixels ``[H, W]``, optionally cropped to ``box``.

        Args:
            variant: a model added with ``add_variant`` (None: the main model).
            log: record the impression in the query log. An experiment that composes what is shown
                from several searches (interleaving, a RandPair swap) passes False and logs the final
                list with ``log_impression``; the response's ``query_id`` is then ``""``.

        Raises:
            ImageError: the bytes are not a readable image.
            ServiceError: a bad k, box, user or variant.
        """
        k = check_int(k, "k", low=1, high=MAX_K, error=ServiceError)
        user = check_name(user, "user")
        if not isinstance(log, (bool, np.bool_)):
            raise ServiceError(f"log: expected true or false, got {log!r}")
        active = self._active if variant is None else self._variant(variant)  # one encoder and one index for the whole request
        t0 = time.perf_counter()
        pixels = active.embedder.decode(image) if isinstance(image, (bytes, bytearray, memoryview)) else image
        region = active.embedder.crop(pixels, box)
        vector = active.embedder.embed_pixels(region)
        hashes = {content_hash(pixels), content_hash(stored_form(pixels)), content_hash(region)}  # as sent, as stored, as cropped
        context = QueryContext(k=k, user=user, query_hashes=frozenset(hashes))
        return self._nearest(active, vector, context, log, t0, time.perf_counter())

    def search_text(self, query: str, k: int = 20, user: str | None = None) -> SearchResponse:
        """Search with a text query ("a dark ankle boot"): its vector from the text encoder, then the path of ``search``.

        The same index, re-ranking rules and query log as an image search (no query image, so the
        near-copy rule has nothing to compare with). The text encoder was trained against one image
        model; after a swap to another, its vectors mean nothing there, so text search is refused.

        Raises:
            ServiceError: no text encoder, one trained against another model, or a bad k or user.
            TopicsError: an empty or too long query, or one with no known word.
        """
        k = check_int(k, "k", low=1, high=MAX_K, error=ServiceError)
        user = check_name(user, "user")
        text_encoder, active = self.text_encoder, self._active
        if text_encoder is None:
            raise ServiceError("text search: this service has no text encoder (start it with text_encoder=...)")
        if text_encoder.image_model_version not in (None, active.embedder.model_version) or text_encoder.dim != active.neighbours.index.dim:
            raise ServiceError(f"text search: the text encoder was trained against model {text_encoder.image_model_version} "
                               f"({text_encoder.dim}-d), but {active.embedder.model_version} ({active.neighbours.index.dim}-d) is serving")
        t0 = time.perf_counter()
        vector = text_encoder.encode([query])[0]
        return self._nearest(active, vector, QueryContext(k=k, user=user), True, t0, time.perf_counter())

    def _nearest(self, active: _Active, vector: np.ndarray, context: QueryContext, log: bool, t0: float, t1: float) -> SearchResponse:
        """The shared end of every search: nearest neighbours of ``vector``, re-ranked, logged, timed."""
        k, user = context.k, context.user
        n = len(active.neighbours)
        fetch = overfetch(k, n)
        search_s = rerank_s = 0.0
        while True:
            s0 = time.perf_counter()
            scores, ids = active.neighbours.search(vector, fetch)
            s1 = time.perf_counter()
            records = self.catalog.records(ids, embeddings=True)
            candidates = [Candidate(int(i), float(s), records.get(int(i))) for s, i in zip(scores, ids)]
            kept, dropped = rerank(candidates, context, self.rules)
            s2 = time.perf_counter()
            search_s += s1 - s0
            rerank_s += s2 - s1
            if len(kept) >= k or fetch >= min(n, MAX_FETCH):
                break
            fetch = min(n, MAX_FETCH, fetch * 4)  # the rules dropped too many: fetch deeper, but never without bound
        kept = [c for c in kept if c.record is not None]  # whatever the rules: a result needs a catalog row
        query_id = uuid.uuid4().hex if log else ""
        if log:
            self.catalog.log_query(query_id, user, active.embedder.model_version, [c.id for c in kept])
        total = time.perf_counter() - t0
        with self._latency_lock:
            self._latencies.append(total)
        timing = {"embed": (t1 - t0) * 1e3, "search": search_s * 1e3, "rerank": rerank_s * 1e3, "total": total * 1e3}
        results = [Result(c.id, c.score, rank, image_url(c.record)) for rank, c in enumerate(kept, start=1)]
        return SearchResponse(query_id, active.embedder.model_version, results, dropped, {k_: round(v, 3) for k_, v in timing.items()}, fetch)

    def log_impression(self, user: str | None, model_version: str, shown: Sequence[int], experiment: dict | None = None) -> str:
        """Log a result list that an experiment composed from unlogged searches; returns its new query id.

        Clicks on it then go through ``click`` like any other, checked against ``shown``.

        Args:
            user: who saw it. model_version: what produced it (e.g. ``"interleaved:<a>|<b>"``).
            shown: the ids in the order shown (distinct catalog ids, at most ``2 * MAX_K``).
            experiment: what the experiment did (JSON-able), stored in the query log's ``experiment`` column.

        Raises:
            ServiceError: a bad user, model version or list.
        """
        user = check_name(user, "user")
        if not isinstance(model_version, str) or not model_version or not model_version.isprintable():
            raise ServiceError(f"model_version: expected a non-empty printable string, got {model_version!r}")
        if not isinstance(shown, (Sequence, np.ndarray)) or isinstance(shown, (str, bytes)):
            raise ServiceError(f"shown: expected a list of image ids, got {type(shown).__name__}")
        ids = [check_int(i, "shown id", low=0, error=ServiceError) for i in shown]
        if len(ids) > 2 * MAX_K or len(set(ids)) != len(ids):
            raise ServiceError(f"shown: expected at most {2 * MAX_K} distinct ids, got {len(ids)} ({len(set(ids))} distinct)")
        query_id = uuid.uuid4().hex
        self.catalog.log_query(query_id, user, model_version, ids, experiment)
        return query_id

    def get_record(self, image_id: int, user: str | None = None) -> ImageRecord:
        """The record of an image ``user`` may see.

        Raises:
            NotFoundError: unknown or deleted, blocked (moderation hides it from everyone), or private
                and ``user`` is not its owner.
        """
        record = self.catalog.get(image_id)
        if record is None or not record.visible_to(user):
            raise NotFoundError(f"image {image_id}: no such image")
        return record

    def image_png(self, image_id: int, user: str | None = None) -> bytes:
        """The stored PNG of an image ``user`` may see (see ``get_record``)."""
        return self.blobs.png_bytes(self.get_record(image_id, user).content_hash)

    def random_image(self) -> ImageRecord:
        """A random image that anyone may see."""
        with self._rng_lock:
            record = self.catalog.random_visible(self._rng)
        if record is None:
            raise NotFoundError("the gallery has no public images")
        return record

    def stats(self) -> dict[str, Any]:
        """Counts, recent latency percentiles, and what is serving (with the add-ons: text search, moderation)."""
        with self._latency_lock:
            lat = np.array(self._latencies) * 1e3
        pct = {f"p{p}_ms": (round(float(np.percentile(lat, p)), 3) if len(lat) else None) for p in (50, 95, 99)}
        return {**self.catalog.counts(), "indexed": len(self.index), **pct, "latency_window": len(lat),
                "model_version": self.model_version, "variants": self.variants, "index": self._active.neighbours.label,
                "swapping": self.swapping, "swap_error": self.swap_error, "uptime_s": round(time.time() - self.started, 1),
                "text_search": self.text_encoder is not None,
                "moderation": None if self.moderation is None else f"{self.moderation.blocked_class} at p >= {self.moderation.threshold:.3f}"}

    # ---------------------------------------------------------------- writing
    def upload(self, image: bytes | np.ndarray, owner: str | None = None, private: bool = False) -> int:
        """Store, embed, catalog and index one image; it is searchable when this returns. Returns its id.

        With a moderation model, an image it flags is stored with ``blocked`` set (what PATCH
        /images does), so nobody sees it, and its record's ``source`` says why
        (``"upload; blocked by moderation: p(Sandal) = 0.973 >= threshold 0.091"``).

        Raises:
            ImageError: the bytes are not a readable image.
            ServiceError: a bad owner, or a private image without an owner.
        """
        owner = check_name(owner, "owner")
        if not isinstance(private, (bool, np.bool_)):
            raise ServiceError(f"private: expected true or false, got {private!r}")
        if private and owner is None:
            raise ServiceError("private: a private image needs an owner (nobody else could ever see it)")
        active = self._active
        pixels = active.embedder.decode(image) if isinstance(image, (bytes, bytearray, memoryview)) else image
        pixels = stored_form(pixels)  # what is stored is what is embedded, now and by any later re-embedding
        vector = active.embedder.embed_pixels(pixels)
        variants = self._variants
        others = {name: v.embedder.embed_pixels(pixels) for name, v in variants.items()}  # each variant's own model
        with self._writer:
            if self._active is not active:  # a swap landed while we embedded: use the new model
                active = self._active
                vector = active.embedder.embed_pixels(pixels)
            if self._variants is not variants:  # a variant came or went meanwhile: embed for the ones serving now
                before, variants = variants, self._variants
                others = {name: others[name] if before.get(name) is v else v.embedder.embed_pixels(pixels)
                          for name, v in variants.items()}
            decision = None if self.moderation is None else self.moderation.decide(vector, active.embedder.model_version)
            blocked = decision is not None and decision.flagged
            source = f"upload; blocked by moderation: {decision.reason}" if blocked else "upload"
            # every vector is computed before the first write: a failing encoder changes nothing
            digest = self.blobs.put(pixels, durable=True)
            # blocked is stored with the row, in the same transaction: no search or crash can see it unblocked
            (image_id,) = self.catalog.add([NewImage(digest, active.embedder.model_version, vector, source, owner, bool(private),
                                                     blocked=blocked)])
            active.neighbours.index.add(vector[None], np.array([image_id]), model_version=active.embedder.model_version)
            for name, other in variants.items():
                other.neighbours.index.add(others[name][None], np.array([image_id]), model_version=other.embedder.model_version)
        return image_id

    def delete(self, image_id: int) -> None:
        """Remove an image from the catalog and the index; searches after this returns never show it.

        Raises:
            NotFoundError: no such image.
        """
        with self._writer:
            record = self.catalog.delete(image_id)
            self._active.neighbours.index.remove(np.array([image_id]))
            for other in self._variants.values():
                other.neighbours.index.remove(np.array([image_id]))
            if self.catalog.count_hash(record.content_hash) == 0:
                self.blobs.discard(record.content_hash)

    def set_flags(self, image_id: int, private: bool | None = None, blocked: bool | None = None) -> ImageRecord:
        """Change ``private`` or ``blocked``; the next search applies it (the re-ranker reads the catalog)."""
        for name, value in (("private", private), ("blocked", blocked)):
            if value is not None and not isinstance(value, (bool, np.bool_)):
                raise ServiceError(f"{name}: expected true or false, got {value!r}")
        if private:
            record = self.catalog.get(image_id)
            if record is not None and record.owner is None:
                raise ServiceError(f"private: image {image_id} has no owner, so making it private would hide it from everyone")
        return self.catalog.set_flags(image_id, private, blocked)

    def click(self, query_id: str, image_id: int, rank: int) -> None:
        """Log a click on a result that ``query_id`` showed at ``rank``."""
        self.catalog.log_click(query_id, image_id, rank)

    # --------------------------------------------------------------- variants
    @property
    def variants(self) -> dict[str, str]:
        """``{variant name: model version}`` of the models served beside the main one."""
        return {name: v.embedder.model_version for name, v in self._variants.items()}  # a snapshot: never mutated

    def _variant(self, name: object) -> _Active:
        variants = self._variants  # one snapshot: a concurrent remove cannot make the lookup fail half-way
        found = variants.get(name) if isinstance(name, str) else None
        if found is None:
            raise ServiceError(f"variant {name!r}: not served here; the variants are {sorted(variants)} (or none, for the main model)")
        return found

    def add_variant(self, name: str, encoder: Encoder) -> str:
        """Serve ``encoder`` beside the main model as variant ``name``: ``search(..., variant=name)``.

        The whole catalog is embedded with it, from the stored images, into its own
        index (the same spec), under the writer lock: uploads and deletes wait for it
        and from then on update every variant. A variant lives in memory only: the
        catalog's ``embedding`` column stays the main model's, the source of truth on
        restart, so an experiment re-adds its variants when the service restarts.
        Adding a name again replaces that variant.

        Returns:
            The variant's model version.

        Raises:
            ServiceError: a bad name.
        """
        if check_name(name, "variant") is None:
            raise ServiceError("variant: a variant needs a name")
        embedder = EmbeddingService(encoder)
        with self._writer:
            ids, vectors = self._embed_catalog(embedder, self.catalog.hashes())
            index = self.spec.build(vectors, ids, embedder.model_version)
            self._variants = {**self._variants, name: _Active(embedder, self._neighbours(index))}
        return embedder.model_version

    def remove_variant(self, name: str) -> None:
        """Stop serving variant ``name``.

        Raises:
            ServiceError: no such variant.
        """
        with self._writer:
            self._variant(name)
            self._variants = {k: v for k, v in self._variants.items() if k != name}

    # ------------------------------------------------------------------- swap
    @property
    def swapping(self) -> bool:
        return self._swap_thread is not None and self._swap_thread.is_alive()

    def swap_model(self, encoder: Encoder, background: bool = True, source: str | None = None) -> threading.Thread | None:
        """Re-embed the whole gallery with ``encoder`` into a new index, then swap it in atomically.

        The old encoder and index keep answering until the swap; uploads and deletes
        made meanwhile are carried over. No search ever sees a half-built index.

        Args:
            encoder: the new model.
            background: run in a thread (the service keeps answering) or here.
            source: where the encoder came from (a checkpoint path), recorded in the catalog's ``meta``
                with the swap, so that the CLI restarts with the model that is serving.

        Returns:
            The background thread (``background=True``), or None after a synchronous swap.

        Raises:
            ServiceError: a swap is already running.
        """
        new = EmbeddingService(encoder)
        if not self._swap_lock.acquire(blocking=False):
            raise ServiceError("a model swap is already running; wait for it to finish")
        self.swap_error = None

        def job() -> None:
            try:
                self._swap(new, source)
            except Exception as err:  # reported by /stats; the old model keeps serving
                log.exception("model swap failed")
                self.swap_error = f"{type(err).__name__}: {err}"
            finally:
                if background:
                    self.catalog.close_thread()
                self._swap_lock.release()

        if not background:
            job()
            if self.swap_error:
                raise ServiceError(f"model swap failed: {self.swap_error}")
            return None
        self._swap_thread = threading.Thread(target=job, name="model-swap", daemon=True)
        self._swap_thread.start()
        return self._swap_thread

    def _swap(self, new: EmbeddingService, source: str | None = None) -> None:
        old = self._active
        mv = new.model_version
        ids, vectors = self._embed_catalog(new, self.catalog.hashes(), missing_ok=True)  # deletes go on meanwhile
        index = self.spec.build(vectors, ids, mv)  # the slow part, while the old index answers
        with self._writer:  # catch up with the writes made meanwhile, then commit
            now = self.catalog.hashes()
            now_ids = np.array([i for i, _ in now], dtype=np.int64)
            gone = np.setdiff1d(ids, now_ids)
            if len(gone):
                index.remove(gone)
                keep = ~np.isin(ids, gone)
                ids, vectors = ids[keep], vectors[keep]
            known = set(ids.tolist())
            late = [(i, h) for i, h in now if i not in known]
            if late:
                late_ids, late_vecs = self._embed_catalog(new, late)  # under the writer lock: no file can vanish now
                index.add(late_vecs, late_ids, model_version=mv)
                ids, vectors = np.concatenate([ids, late_ids]), np.concatenate([vectors, late_vecs])
            index.save(self._index_path(mv))
            self.catalog.set_embeddings(ids, vectors, mv)  # one transaction
            self.catalog.set_meta("model_version", mv)
            if source is not None:
                self.catalog.set_meta("checkpoint", source)
            self._active = _Active(new, self._neighbours(index))  # the swap
        if old.embedder.model_version != mv:
            self._index_path(old.embedder.model_version).unlink(missing_ok=True)

    def wait_for_swap(self, timeout: float = 600.0) -> None:
        """Block until a running swap finishes (or ``timeout`` seconds pass)."""
        thread = self._swap_thread
        if thread is not None:
            thread.join(timeout)

    # ---------------------------------------------------------------- closing
    def close(self) -> None:
        """Save the index and close the catalog (waits for a running swap first)."""
        self.wait_for_swap()
        with self._writer:
            self.index.save(self._index_path(self.model_version))
        self.catalog.close()
