"""The serving system: catalog, blob store, the three services, the indexing pipeline, the HTTP API.

In-process tests build one sample-gallery data dir per module and copy it for each
test that writes (copying is milliseconds; building is a second). The HTTP contract
is checked through FastAPI's TestClient; a real uvicorn server on 127.0.0.1 is
started for what only a real server shows (a chunked oversize upload, SIGKILL).
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from live_server import get_json, start_server, stop_server
from PIL import Image

from visual_search import config
from visual_search.errors import ImageError, NotFoundError, ServiceError, VisualSearchError
from visual_search.models import load_pretrained
from visual_search.service import (
    DEFAULT_SPEC,
    EXACT_SPEC,
    Candidate,
    Catalog,
    IndexSpec,
    QueryContext,
    VisualSearchService,
    content_hash,
    load_gallery,
    overfetch,
    parse_box,
)
from visual_search.service import rerank as rules
from visual_search.service.app import create_app
from visual_search.service.blobs import BlobStore
from visual_search.service.catalog import SCHEMA_VERSION, ImageRecord, NewImage
from visual_search.service.rerank import rerank


def other_model():
    """The committed encoder read from its other layer: a real second model version (other embeddings, other dim)."""
    encoder = load_pretrained()
    encoder.retrieval_layer = "embedding" if encoder.retrieval_layer == "pooled" else "pooled"
    encoder.config = {**encoder.config, "retrieval_layer": encoder.retrieval_layer}  # so a saved copy loads as this model
    return encoder


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def service(data_dir, encoder):
    svc = VisualSearchService(data_dir, encoder, progress=False)
    yield svc
    svc.close()


@pytest.fixture
def client(service):
    with TestClient(create_app(service, max_upload_bytes=200_000)) as c:
        yield c


# ----------------------------------------------------------------------- catalog
def test_catalog_uses_wal_and_records_its_schema_version(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite3")
    conn = sqlite3.connect(tmp_path / "c.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"images", "queries", "clicks", "meta"} <= tables
    cat.close()


def test_catalog_refuses_a_newer_schema_and_a_file_that_is_not_a_database(tmp_path):
    conn = sqlite3.connect(tmp_path / "new.sqlite3")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ServiceError, match="newer"):
        Catalog(tmp_path / "new.sqlite3")
    (tmp_path / "junk.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ServiceError, match="not a catalog"):
        Catalog(tmp_path / "junk.sqlite3")


def test_catalog_round_trips_records_and_never_reuses_an_id(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite3")
    vec = np.arange(4, dtype=np.float32)
    a, b = cat.add([NewImage("a" * 64, "m1", vec, "upload", owner="ann", private=True),
                    NewImage("b" * 64, "m1", vec, "upload", blocked=True)])
    rec = cat.records([a, b, 999], embeddings=True)
    assert set(rec) == {a, b} and rec[a].private and rec[a].owner == "ann" and not rec[b].private
    assert rec[b].blocked and not rec[a].blocked  # blocked is stored with the row (moderation at upload)
    np.testing.assert_array_equal(rec[a].embedding, vec)
    cat.delete(b)
    (c,) = cat.add([NewImage("c" * 64, "m1", vec, "upload")])
    assert c > b  # AUTOINCREMENT: a click log's old id never points at a new image
    with pytest.raises(NotFoundError):
        cat.delete(b)
    with pytest.raises(NotFoundError):
        cat.set_flags(b, blocked=True)
    cat.close()


def test_clicks_must_match_what_the_query_showed(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite3")
    cat.log_query("q1", "ann", "m1", [5, 7, 9])
    cat.log_click("q1", 7, 2)
    for query_id, image_id, rank, match in [("nope", 5, 1, "no such query"), ("q1", 8, 1, "not shown"), ("q1", 7, 1, "rank 2")]:
        with pytest.raises(ServiceError, match=match):
            cat.log_click(query_id, image_id, rank)
    assert cat.counts() == {"images": 0, "searches": 1, "clicks": 1}
    cat.close()


def test_content_hash_is_of_pixels_not_of_file_bytes(sample):
    img = sample.gallery_images[0]
    a, b = io.BytesIO(), io.BytesIO()
    Image.fromarray(img).save(a, format="PNG", compress_level=0)
    Image.fromarray(img).save(b, format="PNG", compress_level=9)
    assert a.getvalue() != b.getvalue()
    from visual_search.preprocess import load_image

    assert content_hash(load_image(a.getvalue())) == content_hash(load_image(b.getvalue())) == content_hash(img)
    assert content_hash(img) != content_hash(img.T.copy())  # same bytes, other shape
    assert content_hash(img[:27]) != content_hash(img)


def test_blob_store_is_content_addressed_idempotent_and_leaves_no_temp_files(tmp_path, sample):
    store = BlobStore(tmp_path / "blobs")
    d1 = store.put(sample.gallery_images[0])
    assert store.put(sample.gallery_images[0]) == d1
    np.testing.assert_array_equal(store.pixels(d1), sample.gallery_images[0])
    assert store.path(d1).name == f"{d1}.png" and store.path(d1).parent.name == d1[:2]
    assert not list((tmp_path / "blobs").rglob("*.tmp"))
    with pytest.raises(NotFoundError):
        store.path("../../etc/passwd")
    with pytest.raises(NotFoundError):
        store.png_bytes("0" * 64)


# ------------------------------------------------------------------- embedding
@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "1,2,3,4,5", "5,5,5,9", "5,9,9,5", "nan,0,4,4", "0,0,inf,4", ","])
def test_parse_box_refuses_what_is_not_a_box(text):
    with pytest.raises(ServiceError, match="box"):
        parse_box(text)


def test_parse_box_reads_four_numbers_and_treats_empty_as_no_box():
    assert parse_box("1, 2.5,10,20") == (1.0, 2.5, 10.0, 20.0)
    assert parse_box(None) is None and parse_box("  ") is None


def test_embedding_service_path_equals_the_library_path(service, sample):
    """bytes -> load_image -> crop -> embed gives what embed() gives on the cropped array."""
    from visual_search.embed import embed

    img = sample.query_images[3]
    vec, pixels, region = service.embedder.embed_upload(png(img), box=(2, 3, 20, 25))
    np.testing.assert_array_equal(pixels, img)
    np.testing.assert_array_equal(region, img[3:25, 2:20])
    np.testing.assert_allclose(vec, embed(service.embedder.encoder, img[3:25, 2:20][None])[0], atol=1e-6)
    assert abs(np.linalg.norm(vec) - 1) < 1e-5
    assert service.embedder.model_version == service.embedder.encoder.version


# ---------------------------------------------------------------------- rerank
def _cand(i, score, **kw):
    fields = {"owner": None, "private": False, "blocked": False, "content_hash": f"{i:064x}", "embedding": None} | kw
    rec = ImageRecord(i, fields["owner"], 0.0, fields["private"], fields["blocked"], fields["content_hash"], "m", None, "x", fields["embedding"])
    return Candidate(i, score, rec)


@pytest.mark.parametrize(
    "rule, candidates, context, kept",
    [
        (rules.DropDeleted(), [_cand(1, 0.9), Candidate(2, 0.8, None)], QueryContext(5), [1]),
        (rules.DropBlocked(), [_cand(1, 0.9, blocked=True), _cand(2, 0.8)], QueryContext(5), [2]),
        (rules.DropPrivate(), [_cand(1, 0.9, private=True, owner="ann"), _cand(2, 0.8)], QueryContext(5, user="bob"), [2]),
        (rules.DropPrivate(), [_cand(1, 0.9, private=True, owner="ann"), _cand(2, 0.8)], QueryContext(5, user="ann"), [1, 2]),
        (rules.DropPrivate(), [_cand(1, 0.9, private=True, owner="ann")], QueryContext(5, user=None), []),
        (rules.DropQueryDuplicates(), [_cand(1, 0.9, content_hash="h" * 64), _cand(2, 0.8)], QueryContext(5, query_hashes=frozenset({"h" * 64})), [2]),
        (rules.TopK(), [_cand(i, 1 - i / 10) for i in range(5)], QueryContext(3), [0, 1, 2]),
    ],
    ids=["deleted", "blocked", "private-other", "private-owner", "private-anonymous", "query-duplicate", "top-k"],
)
def test_each_rule_alone(rule, candidates, context, kept):
    assert [c.id for c in rule(candidates, context)] == kept


def test_near_duplicates_collapse_to_the_best_ranked_of_each_group():
    e = np.eye(3, dtype=np.float32)
    close = (e[0] + 0.01 * e[1]) / np.linalg.norm(e[0] + 0.01 * e[1])
    cands = [_cand(1, 0.9, embedding=e[1]), _cand(2, 0.8, embedding=e[0]), _cand(3, 0.7, embedding=close), _cand(4, 0.6, embedding=e[2])]
    assert [c.id for c in rules.CollapseNearDuplicates(0.995)(cands, QueryContext(5))] == [1, 2, 4]
    assert [c.id for c in rules.CollapseNearDuplicates(0.99999)(cands, QueryContext(5))] == [1, 2, 3, 4]
    with pytest.raises(ServiceError, match="threshold"):
        rules.CollapseNearDuplicates(2.0)


@pytest.mark.parametrize("seed", range(20))
def test_near_duplicate_collapse_equals_the_slow_greedy_loop(seed):
    """The vectorised rule against the obvious loop: keep a candidate unless it is close to one already kept."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    centres = rng.standard_normal((6, 8))
    v = centres[rng.integers(0, 6, n)] + 0.05 * rng.standard_normal((n, 8))
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    threshold = float(rng.uniform(0.95, 0.999))
    sims = v @ v.T
    kept: list[int] = []
    for i in range(n):
        if not any(sims[i, j] > threshold for j in kept):
            kept.append(i)
    got = rules.CollapseNearDuplicates(threshold)([_cand(i, 1 - i / n, embedding=v[i]) for i in range(n)], QueryContext(n))
    assert [c.id for c in got] == kept


def test_rerank_counts_what_each_rule_dropped():
    cands = [_cand(1, 0.9, blocked=True), Candidate(2, 0.85, None), _cand(3, 0.8), _cand(4, 0.7), _cand(5, 0.6)]
    kept, dropped = rerank(cands, QueryContext(2), rules.default_rules())
    assert [c.id for c in kept] == [3, 4]
    assert dropped == {"deleted": 1, "blocked": 1, "private": 0, "query_duplicate": 0, "near_duplicate": 0, "top_k": 1}


@pytest.mark.parametrize("k, n, expected", [(20, 2000, 60), (10, 2000, 50), (100, 2000, 200), (20, 30, 30), (1, 1, 1)])
def test_overfetch_asks_for_more_than_k_but_never_more_than_the_index(k, n, expected):
    assert overfetch(k, n) == expected


# ----------------------------------------------------------------- the system
def test_search_returns_k_best_first_and_logs_what_it_showed(service, sample):
    r = service.search(png(sample.query_images[0]), k=10, user="ann")
    scores = [x.score for x in r.results]
    assert len(r.results) == 10 and scores == sorted(scores, reverse=True)
    assert [x.rank for x in r.results] == list(range(1, 11))
    assert r.model_version == service.model_version and set(r.timing_ms) >= {"embed", "search", "rerank"}
    conn = sqlite3.connect(service.catalog.path)
    user, shown = conn.execute("SELECT user, shown FROM queries WHERE query_id = ?", (r.query_id,)).fetchone()
    assert user == "ann" and json.loads(shown) == [x.id for x in r.results]
    assert service.search(png(sample.query_images[0]), k=10).results == r.results  # deterministic


def test_a_query_never_returns_itself(service, sample):
    for i in (0, 500, 1999):
        assert i not in [x.id for x in service.search(sample.gallery_images[i], k=20).results]
    r = service.search(sample.gallery_images[7], k=20)
    assert r.dropped["query_duplicate"] >= 1


def test_the_search_results_equal_an_exact_search_after_the_rules(service, sample):
    """Over the sample the index is exact, so the kept ids are the exact ranking minus what the rules dropped."""
    from visual_search.index import exact_search

    ids, vecs, _ = service.catalog.embeddings()
    q = service.embedder.embed_pixels(sample.query_images[9])
    _, order = exact_search(q[None], vecs, 60, metric="cosine")
    r = service.search(sample.query_images[9], k=20)
    expected = [int(ids[j]) for j in order[0]]
    got = [x.id for x in r.results]
    assert got == [i for i in expected if i in set(got)][:20]  # the same order, a subsequence of the exact ranking
    assert got[0] == expected[0]


def test_an_upload_is_searchable_by_the_next_request_and_a_delete_is_gone(service, sample):
    img = sample.query_images[42]  # a test-split image: not in the gallery
    new_id = service.upload(png(img), owner="ann")
    near = np.clip(img.astype(int) + 1, 0, 255).astype(np.uint8)  # same garment, not the same pixels
    assert service.search(near, k=5).results[0].id == new_id
    assert new_id in service.index.ids and service.catalog.get(new_id).owner == "ann"
    service.delete(new_id)
    assert new_id not in [x.id for x in service.search(near, k=20).results]
    assert new_id not in service.index.ids and service.catalog.get(new_id) is None
    with pytest.raises(NotFoundError):
        service.image_png(new_id)
    with pytest.raises(NotFoundError):
        service.delete(new_id)


def test_a_file_shared_by_two_images_stays_until_the_last_one_goes(service, sample):
    img = sample.query_images[1]
    a, b = service.upload(img), service.upload(img)
    path = service.blobs.path(content_hash(img))
    service.delete(a)
    assert path.exists()
    service.delete(b)
    assert not path.exists()


def test_private_and_blocked_take_effect_on_the_next_request(service, sample):
    img = sample.query_images[7]
    near = np.clip(img.astype(int) + 1, 0, 255).astype(np.uint8)
    mine = service.upload(img, owner="ann", private=True)
    assert mine in [x.id for x in service.search(near, k=5, user="ann").results]
    r = service.search(near, k=5, user="bob")
    assert mine not in [x.id for x in r.results] and r.dropped["private"] == 1
    with pytest.raises(NotFoundError):
        service.image_png(mine, user="bob")
    assert service.image_png(mine, user="ann")[:8] == b"\x89PNG\r\n\x1a\n"
    service.set_flags(mine, private=False)
    assert mine in [x.id for x in service.search(near, k=5, user="bob").results]
    service.set_flags(mine, blocked=True)
    r = service.search(near, k=5, user="ann")
    assert mine not in [x.id for x in r.results] and r.dropped["blocked"] == 1


def test_over_fetching_refills_when_the_rules_drop_more_than_it_fetched(service, sample):
    q = sample.query_images[11]
    first = service.search(q, k=10)
    top = [x.id for x in service.search(q, k=100).results]
    for image_id in top[:80]:  # block more than the first fetch (overfetch(10, 2000) = 50) could absorb
        service.set_flags(image_id, blocked=True)
    r = service.search(q, k=10)
    assert len(r.results) == 10 and r.fetched > overfetch(10, len(service.index))
    assert not set(x.id for x in r.results) & set(top[:80]) and first.results != r.results


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda s: s.search(b"", k=5), ImageError, "empty"),
        (lambda s: s.search(b"GIF89a-not-really", k=5), ImageError, "not an image"),
        (lambda s: s.search(np.zeros((28, 28), np.uint8), k=0), ServiceError, "k"),
        (lambda s: s.search(np.zeros((28, 28), np.uint8), k=101), ServiceError, "k"),
        (lambda s: s.search(np.zeros((28, 28), np.uint8), k=True), ServiceError, "k"),
        (lambda s: s.search(np.zeros((28, 28), np.uint8), box=(40, 40, 50, 50)), ServiceError, "does not overlap"),
        (lambda s: s.search(np.zeros((28, 28), np.uint8), user="x" * 500), ServiceError, "user"),
        (lambda s: s.upload(np.zeros((28, 28), np.uint8), private=True), ServiceError, "owner"),
        (lambda s: s.upload(np.zeros((28, 28), np.uint8), owner="ann", private="yes"), ServiceError, "private"),
        (lambda s: s.set_flags(0, private=True), ServiceError, "no owner"),
        (lambda s: s.set_flags(10**6, blocked=True), NotFoundError, "no such image"),
        (lambda s: s.click("nope", 1, 1), ServiceError, "no such query"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_nothing_changes(service, call, error, match):
    before = (len(service.index), service.catalog.counts())
    with pytest.raises(error, match=match):
        call(service)
    assert (len(service.index), service.catalog.counts()) == before


# ------------------------------------------------------------ crash and restart
def test_restart_loads_the_saved_index_instead_of_rebuilding(data_dir, encoder):
    svc = VisualSearchService(data_dir, encoder, progress=False)
    assert svc.startup["index_loaded"] and svc.startup["added"] == svc.startup["removed"] == 0
    svc.close()


def test_reconcile_adds_catalog_rows_the_saved_index_lacks(data_dir, encoder, sample):
    svc = VisualSearchService(data_dir, encoder, progress=False)
    new_id = svc.upload(sample.query_images[3])
    svc.catalog.close()  # a crash: the row is committed, the index file was never saved again
    again = VisualSearchService(data_dir, encoder, progress=False)
    assert again.startup["added"] == 1 and new_id in again.index.ids
    again.close()


def test_reconcile_removes_index_entries_without_a_catalog_row(data_dir, encoder):
    conn = sqlite3.connect(data_dir / "catalog.sqlite3")
    with conn:
        conn.execute("DELETE FROM images WHERE id IN (3, 4)")  # rows gone, the saved index still has them
    conn.close()
    svc = VisualSearchService(data_dir, encoder, progress=False)
    assert svc.startup["removed"] == 2 and not {3, 4} & set(svc.index.ids.tolist())
    assert set(svc.index.ids.tolist()) == set(svc.catalog.ids().tolist())
    svc.close()


def test_a_damaged_index_file_is_rebuilt_from_the_catalog(data_dir, encoder):
    (path,) = (data_dir / "index").glob("*.vsindex")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    svc = VisualSearchService(data_dir, encoder, progress=False)
    assert not svc.startup["index_loaded"] and "index_file_error" in svc.startup and len(svc.index) == 2000
    svc.close()


def test_a_new_checkpoint_at_start_re_embeds_the_catalog(data_dir, encoder):
    second = other_model()
    assert second.version != encoder.version
    svc = VisualSearchService(data_dir, second, progress=False)
    assert svc.startup["re_embedded"] == 2000 and svc.model_version == second.version == svc.index.model_version
    assert set(svc.catalog.embeddings()[2]) == {second.version}
    svc.close()


def test_sigkill_during_uploads_loses_no_acknowledged_image_and_leaves_no_orphan(data_dir, sample, encoder):
    proc, base = start_server(data_dir)
    acknowledged: list[int] = []
    stop = threading.Event()

    def uploader(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as c:
            for i in range(offset, 400, 2):  # bounded in count; the kill ends it sooner
                if stop.is_set():
                    return
                try:
                    r = c.post("/images", files={"image": ("x.png", png(sample.query_images[i]), "image/png")})
                except httpx.HTTPError:
                    return
                if r.status_code == 201:
                    acknowledged.append(r.json()["id"])

    threads = [threading.Thread(target=uploader, args=(o,)) for o in (0, 1)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(15)
    assert len(acknowledged) >= 10
    svc = VisualSearchService(data_dir, encoder, progress=False)  # start-up reconciles
    catalog_ids, index_ids = set(svc.catalog.ids().tolist()), set(svc.index.ids.tolist())
    assert set(acknowledged) <= catalog_ids and catalog_ids == index_ids
    svc.close()
    proc, base = start_server(data_dir)
    try:
        stats = get_json(base + "/stats")
        assert stats["images"] == stats["indexed"] == len(catalog_ids)
    finally:
        stop_server(proc)


def test_sigterm_saves_the_index_so_the_next_start_has_nothing_to_reconcile(data_dir, sample, encoder):
    proc, base = start_server(data_dir)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            assert c.post("/images", files={"image": ("x.png", png(sample.query_images[0]), "image/png")}).status_code == 201
    finally:
        stop_server(proc)  # SIGTERM: the app's lifespan closes the service, which saves the index
    svc = VisualSearchService(data_dir, encoder, progress=False)
    assert svc.startup["index_loaded"] and svc.startup["added"] == svc.startup["removed"] == 0 and len(svc.index) == 2001
    svc.close()


# ------------------------------------------------------------------ model swap
def test_a_model_swap_under_searches_and_writes_fails_nothing_and_loses_nothing(service, sample):
    old = service.model_version
    second = other_model()
    failures, uploaded = [], []
    versions: list[list[str]] = [[], []]  # each thread's own, in the order its searches ran
    stop = threading.Event()

    def searcher(mine: list[str]) -> None:
        # Bounded in count and time, with room to outlast the swap: under load a 2,000-search cap could
        # run out before the rebuild finished, and a thread then never saw the new model.
        i, deadline = 0, time.monotonic() + 240
        while not stop.is_set() and i < 50_000 and time.monotonic() < deadline:
            try:
                mine.append(service.search(sample.query_images[i % 500], k=10).model_version)
            except Exception as err:  # any failure counts
                failures.append(repr(err))
            i += 1

    threads = [threading.Thread(target=searcher, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    service.swap_model(second)
    deadline = time.monotonic() + 120
    i = 0
    while service.swapping and time.monotonic() < deadline:
        uploaded.append(service.upload(sample.query_images[100 + i % 400]))  # writes during the rebuild
        if i % 3 == 2:
            service.delete(uploaded.pop(0))
        if i < 300:
            service.delete(1000 + i)  # a gallery image the swap listed before it was deleted: its file goes too
        i += 1
        time.sleep(0.01)
    service.wait_for_swap(60)
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    assert not failures and service.swap_error is None
    assert service.model_version == second.version != old
    for mine in versions:  # each thread saw the old model, then the new one, and never went back
        assert mine[0] == old and mine[-1] == second.version and mine == sorted(mine, key=lambda v: v == second.version)
    assert i > 0, "the swap finished before any write could race it"
    assert set(service.index.ids.tolist()) == set(service.catalog.ids().tolist()) and set(uploaded) <= set(service.index.ids.tolist())
    assert 1000 not in service.index.ids
    assert set(service.catalog.embeddings()[2]) == {second.version}
    with pytest.raises(ServiceError, match="already running"):
        service._swap_lock.acquire()
        try:
            service.swap_model(second)
        finally:
            service._swap_lock.release()


# ------------------------------------------------------------------ index choice
def test_the_default_index_is_the_one_the_committed_benchmark_chose():
    """DEFAULT_SPEC is the benchmark's pick, up to its noise: recall@10 >= 0.95 and a p50 within 25% of the fastest.

    The top rows differ by hundredths of a millisecond (under 1% of an end-to-end search), which run-to-run
    noise on a shared 2-core machine reorders; the committed JSON's own ``best`` may be any of them.
    """
    path = config.RESULTS_DIR / "bench_serve.json"
    if not path.exists():
        pytest.skip("results/bench_serve.json not committed yet (python -m visual_search.bench serve)")
    choice = json.loads(path.read_text())["index_choice"]
    best = next(r for r in choice["rows"] if (r["kind"], r["params"], r["search"]) == tuple(choice["best"][x] for x in ("kind", "params", "search")))
    mine = [r for r in choice["rows"] if (r["kind"], r["params"], r["search"]) == (DEFAULT_SPEC.kind, DEFAULT_SPEC.params, DEFAULT_SPEC.search)]
    assert mine, f"{DEFAULT_SPEC} was not measured"
    assert mine[0]["recall@10"] >= 0.95 and mine[0]["p50_ms"] <= 1.25 * best["p50_ms"]


def test_small_galleries_fall_back_to_an_exact_index(service):
    assert service.index.kind == EXACT_SPEC.kind  # 2,000 images < DEFAULT_SPEC.min_train
    vecs = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float32)
    index = IndexSpec("ivf", {"nlist": 16}, {"nprobe": 4}, min_train=1000).build(vecs, np.arange(3000), "m")
    assert index.kind == "ivf" and len(index) == 3000


# --------------------------------------------------------------------- HTTP API
def test_health_stats_and_docs(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["images"] == 2000 and h["model_version"].startswith("cnn-")
    s = client.get("/stats").json()
    assert {"images", "searches", "clicks", "p50_ms", "p95_ms"} <= set(s)
    assert s["text_search"] is False and s["moderation"] is None  # chapter 11's add-ons are off unless given
    assert client.get("/docs").status_code == 200 and "/search" in client.get("/openapi.json").json()["paths"]


def test_the_search_route_follows_the_contract(client, sample):
    r = client.post("/search", files={"image": ("q.png", png(sample.query_images[5]), "image/png")}, data={"k": "7", "box": "2,2,26,26", "user": "ann"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"query_id", "model_version", "results", "dropped", "timing_ms"}
    assert len(body["results"]) == 7 and [x["rank"] for x in body["results"]] == list(range(1, 8))
    assert all(set(x) == {"id", "score", "rank", "url"} and x["url"] == f"/images/{x['id']}" for x in body["results"])
    assert {"embed", "search", "rerank"} <= set(body["timing_ms"])
    assert len(client.post("/search", files={"image": ("q.png", png(sample.query_images[5]), "image/png")}).json()["results"]) == 20
    first = body["results"][0]
    assert client.post("/clicks", json={"query_id": body["query_id"], "image_id": first["id"], "rank": 1}).status_code == 204
    assert client.get("/stats").json()["clicks"] == 1


def test_images_routes_follow_the_contract(client, sample):
    r = client.post("/images", files={"image": ("x.png", png(sample.query_images[8]), "image/png")}, data={"owner": "ann", "private": "true"})
    assert r.status_code == 201 and set(r.json()) == {"id"}
    image_id = r.json()["id"]
    assert client.get(f"/images/{image_id}").status_code == 404  # private, and not asked by its owner
    got = client.get(f"/images/{image_id}", params={"user": "ann"})
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(got.content))), sample.query_images[8])
    assert client.patch(f"/images/{image_id}", json={"private": False}).status_code == 200
    assert client.get(f"/images/{image_id}").status_code == 200
    assert client.patch(f"/images/{image_id}", json={"blocked": True}).json()["blocked"] is True
    assert client.delete(f"/images/{image_id}").status_code == 204
    assert client.get(f"/images/{image_id}", params={"user": "ann"}).status_code == 404
    assert client.get("/random").json()["url"].startswith("/images/")
    assert client.get("/").status_code == 200 and "text/html" in client.get("/").headers["content-type"]


def _bomb() -> bytes:
    """A small PNG whose header declares 30,000 x 30,000 pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


GOOD = np.zeros((28, 28), np.uint8)


@pytest.mark.parametrize(
    "method, url, kwargs, status, detail",
    [
        ("post", "/search", {"files": {"image": ("x.png", b"", "image/png")}}, 400, "empty"),
        ("post", "/search", {"files": {"image": ("x.txt", b"hello, world", "text/plain")}}, 400, "not an image"),
        ("post", "/search", {"files": {"image": ("x.png", png(GOOD)[:40], "image/png")}}, 400, "upload"),
        ("post", "/search", {"files": {"image": ("x.png", _bomb(), "image/png")}}, 400, "pixels"),
        ("post", "/search", {"files": {"image": ("x.png", b"\0" * 300_000, "image/png")}}, 413, "too large"),
        ("post", "/search", {"files": {"image": ("x.png", png(GOOD), "image/png")}, "data": {"box": "1,2,3"}}, 422, "box"),
        ("post", "/search", {"files": {"image": ("x.png", png(GOOD), "image/png")}, "data": {"box": "nan,0,5,5"}}, 422, "box"),
        ("post", "/search", {"files": {"image": ("x.png", png(GOOD), "image/png")}, "data": {"box": "50,50,60,60"}}, 422, "overlap"),
        ("post", "/search", {"files": {"image": ("x.png", png(GOOD), "image/png")}, "data": {"k": "0"}}, 422, "k"),
        ("post", "/search", {"files": {"image": ("x.png", png(GOOD), "image/png")}, "data": {"k": "1000"}}, 422, "k"),
        ("post", "/search", {"files": {"image": ("x.png", png(GOOD), "image/png")}, "data": {"k": "abc"}}, 422, "k"),
        ("post", "/search", {"data": {"k": "5"}}, 422, "image"),
        ("post", "/images", {"files": {"image": ("x.png", png(GOOD), "image/png")}, "data": {"private": "true"}}, 422, "owner"),
        ("post", "/images", {"files": {"image": ("x.png", png(GOOD), "image/png")}, "data": {"private": "maybe"}}, 422, "private"),
        ("get", "/images/123456", {}, 404, "no such image"),
        ("get", "/images/99999999999999999999999", {}, 422, "image_id"),
        ("get", "/images/-1", {}, 422, "image_id"),
        ("delete", "/images/123456", {}, 404, "no such image"),
        ("patch", "/images/1", {"json": {"private": "yes"}}, 422, "private"),
        ("patch", "/images/1", {"json": {"hidden": True}}, 422, "hidden"),
        ("patch", "/images/123456", {"json": {"blocked": True}}, 404, "no such image"),
        ("post", "/clicks", {"json": {"query_id": "nope", "image_id": 1, "rank": 1}}, 422, "no such query"),
        ("post", "/clicks", {"json": {"query_id": "q", "image_id": "1", "rank": 1}}, 422, "image_id"),
        ("post", "/clicks", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
        ("patch", "/images/1", {"content": b"private=1", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
        ("post", "/admin/model", {"json": {"checkpoint": "/etc/passwd"}}, 422, "must be inside"),
        ("post", "/admin/model", {"json": {"checkpoint": "a\u0000b"}}, 422, "not a usable path"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_detail_and_the_server_keeps_serving(client, method, url, kwargs, status, detail):
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status, r.text
    assert detail.lower() in r.json()["detail"].lower()
    assert client.get("/health").json()["status"] == "ok"


def test_a_checkpoint_that_is_not_a_checkpoint_is_refused(client, service):
    models = service.data_dir / "models"
    models.mkdir()
    (models / "forged.pt").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    r = client.post("/admin/model", json={"checkpoint": str(models / "forged.pt")})
    assert r.status_code == 422 and "forged.pt" in r.json()["detail"]
    assert not service.swapping


def test_every_library_error_maps_to_a_4xx(service):
    """The app maps the whole family, so a new subclass raised anywhere under a route can never become a 500."""

    class BrandNewError(VisualSearchError):
        pass

    app = create_app(service)

    @app.get("/boom")
    def boom():
        raise BrandNewError("boom: a new kind of bad input")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 422 and r.json() == {"detail": "boom: a new kind of bad input"}


def test_random_never_offers_a_private_or_blocked_image(client, service, sample):
    private = service.upload(sample.query_images[0], owner="ann", private=True)
    for image_id in range(0, 2000, 2):  # half the gallery blocked
        service.catalog.set_flags(image_id, blocked=True)
    seen = {client.get("/random").json()["id"] for _ in range(60)}
    assert seen and all(i % 2 == 1 and i != private for i in seen)


def test_blocked_images_are_hidden_from_everyone_and_patch_does_not_reveal_owners(client, service, sample):
    image_id = service.upload(sample.query_images[2], owner="ann")
    body = client.patch(f"/images/{image_id}", json={"blocked": True}).json()
    assert body == {"id": image_id, "private": False, "blocked": True}
    assert client.get(f"/images/{image_id}", params={"user": "ann"}).status_code == 404


def test_a_large_upload_is_stored_small_and_still_recognised_as_the_query(service, sample):
    from visual_search.service.blobs import MAX_STORED_SIDE

    big = np.asarray(Image.fromarray(sample.query_images[4]).resize((1000, 600)))
    image_id = service.upload(png(big))
    stored = service.blobs.pixels(service.catalog.get(image_id).content_hash)
    assert max(stored.shape) == MAX_STORED_SIDE and stored.shape == (154, 256)
    r = service.search(png(big), k=20)
    assert image_id not in [x.id for x in r.results] and r.dropped["query_duplicate"] == 1


def test_fetching_deeper_stops_at_max_fetch(service, sample, monkeypatch):
    from visual_search.service import core

    monkeypatch.setattr(core, "MAX_FETCH", 100)
    for image_id in range(2000):
        service.catalog.set_flags(image_id, blocked=True)  # nothing can be shown
    r = service.search(sample.query_images[0], k=10)
    assert r.results == [] and r.fetched == 100 and r.dropped["blocked"] == 100


def test_an_interrupted_first_start_fills_the_gallery_on_the_next(tmp_path, encoder):
    Catalog(tmp_path / "data" / "catalog.sqlite3").close()  # the file exists, empty: a first start killed while embedding
    svc = VisualSearchService(tmp_path / "data", encoder, gallery=lambda: load_gallery("sample"), progress=False)
    assert svc.startup["gallery_added"] == 2000 and len(svc.index) == 2000
    svc.close()


def test_a_restart_keeps_the_model_a_swap_installed(data_dir, encoder, tmp_path):
    from visual_search.models import save_encoder
    from visual_search.service.__main__ import _last_checkpoint

    path = save_encoder(other_model(), tmp_path / "other.pt")
    svc = VisualSearchService(data_dir, encoder, progress=False)
    svc.swap_model(load_pretrained(), background=False, source=None)  # same model: no source recorded
    assert _last_checkpoint(data_dir) is None
    from visual_search.models import load_encoder

    svc.swap_model(load_encoder(path)[0], background=False, source=str(path))
    svc.close()
    assert _last_checkpoint(data_dir) == path


# ----------------------------------------------------------- a real uvicorn server
@pytest.fixture(scope="module")
def live(template, tmp_path_factory):
    data = tmp_path_factory.mktemp("live") / "data"
    shutil.copytree(template, data)
    proc, base = start_server(data)
    yield base
    stop_server(proc)


def test_a_chunked_upload_over_the_limit_is_refused_before_it_is_read(live):
    sent = 0

    def body():
        nonlocal sent
        for _ in range(40):  # 40 MiB offered; the server must stop reading after 10 MiB
            sent += 1
            yield b"\0" * 2**20

    with httpx.Client(base_url=live, timeout=30) as c:
        try:
            r = c.post("/search", content=body(), headers={"content-type": "multipart/form-data; boundary=x"})
            assert r.status_code == 413 and "too large" in r.json()["detail"]
        except httpx.HTTPError:
            pass  # the server may close the connection once it has answered 413
        assert sent < 40
        assert c.get("/health").json()["status"] == "ok"


def test_a_declared_length_over_the_limit_is_refused_without_reading_the_body(live):
    host, port = live.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 52428800\r\n\r\n")
        chunks = []  # answered at once, although not one byte of the 50 MB body was sent; read until it closes
        while chunk := s.recv(4096):
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 413") and "too large" in reply
    assert get_json(live + "/health")["status"] == "ok"


def test_concurrent_clients_all_get_answers(live, sample):
    errors, done = [], []

    def client_loop(offset: int) -> None:
        with httpx.Client(base_url=live, timeout=30) as c:
            for i in range(15):
                r = c.post("/search", files={"image": ("q.png", png(sample.query_images[offset + i]), "image/png")}, data={"k": "10"})
                (done if r.status_code == 200 and len(r.json()["results"]) == 10 else errors).append(r.status_code)

    threads = [threading.Thread(target=client_loop, args=(o * 20,)) for o in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(done) == 90
