"""Text query, a miniature CLIP (chapter 11): attributes, captions, tokenizer, the text tower, its measurement, POST /search/text.

Real data and the real committed image encoder throughout: the tower is trained on the
committed sample's gallery (a couple of seconds) and measured on its held-out query images.
The bounds were measured: on the sample, seeds 0, 1 and 2 give captioned P@10 0.86-0.87
(untrained tower 0.05-0.14), bare class names 0.93-0.95, "sandal" 10/10, attribute
agreement 0.59-0.60 against a base rate of 0.34.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from visual_search import data, metrics
from visual_search.embed import embed
from visual_search.errors import ServiceError, TopicsError
from visual_search.service import VisualSearchService
from visual_search.service.app import create_app
from visual_search.topics import text_search as ts


@pytest.fixture(scope="module")
def fit(sample, encoder) -> ts.TextSearchFit:
    return ts.fit_text_encoder(encoder, sample.gallery_images, sample.gallery_labels, steps=150, seed=0)


@pytest.fixture(scope="module")
def held_out(sample, encoder, fit):
    """The sample's query images: their vectors and their attribute words under the training rules."""
    return embed(encoder, sample.query_images, progress=False), fit.rules.words(sample.query_images, sample.query_labels)


@pytest.fixture(scope="module")
def report(encoder) -> dict:
    return ts.evaluate_text_search(encoder, fast=True, seed=0)


# ----------------------------------------------------------------------- attributes
def test_attributes_are_measured_as_documented():
    plain = np.zeros((1, 28, 28), np.uint8)
    plain[0, 4:24, 8:20] = 200  # 20 x 12 item of one grey
    striped = plain.copy()
    striped[0, 4:24:2, 8:20] = 100  # every other row darker: 19 row pairs, each changing by 100
    empty = np.zeros((1, 28, 28), np.uint8)
    got = ts.measure_attributes(np.concatenate([plain, striped, empty]))
    assert got["size"] == pytest.approx([240 / 784, 240 / 784, 0.0])
    assert got["brightness"] == pytest.approx([200.0, 150.0, 0.0])
    assert got["texture"] == pytest.approx([0.0, 100.0, 0.0])


def test_attributes_of_real_images_match_a_loop(sample):
    images = sample.gallery_images[:5]
    got = ts.measure_attributes(images)
    for i, im in enumerate(images.astype(float)):
        item = im > ts.INK_LEVEL
        changes = [abs(im[r + 1, c] - im[r, c]) for r in range(27) for c in range(28) if item[r, c] and item[r + 1, c]]
        assert got["brightness"][i] == pytest.approx(im[item].mean())
        assert got["size"][i] == pytest.approx(item.mean())
        assert got["texture"][i] == pytest.approx(np.mean(changes))


def test_rules_cut_each_class_in_thirds(sample, fit):
    words = fit.rules.words(sample.gallery_images, sample.gallery_labels)
    for c in range(len(data.CLASS_NAMES)):
        mine = [words[i] for i in np.flatnonzero(sample.gallery_labels == c)]
        for w in ("dark", "light", "small", "large", "plain", "patterned"):
            assert abs(np.mean([w in ws for ws in mine]) - 1 / 3) < 0.02, (c, w)
    held = fit.rules.words(sample.query_images, sample.query_labels)  # held-out images, training cut points
    share = np.mean([w in ws for ws in held for w in ("dark",)])
    assert 0.2 < share < 0.47
    assert all(not ({"dark", "light"} <= set(ws)) for ws in held)  # never both words of one attribute


# ----------------------------------------------------------------------- captions and tokenizer
def test_captions():
    assert ts.caption(9, ("dark",)) == "a dark ankle boot"
    assert ts.caption(9) == "an ankle boot"
    assert ts.caption(6, ("light", "patterned")) == "a light patterned shirt"
    assert ts.caption(5, ("small",), noun="super") == "small footwear"
    rng = np.random.default_rng(0)
    caps = ts.sample_captions(np.array([5, 5, 0]), [("dark",), (), ("light", "large")], rng)
    assert caps == ts.sample_captions(np.array([5, 5, 0]), [("dark",), (), ("light", "large")], np.random.default_rng(0))
    assert len(caps) == 3 and all(c.split()[-1] in ("sandal", "footwear", "t-shirt/top", "tops") for c in caps)


def test_the_vocabulary_holds_every_caption_word_and_no_stop_word(fit):
    vocab = set(fit.encoder.vocabulary)
    assert {"sandal", "ankle", "boot", "tshirt", "top", "footwear", "dark", "patterned"} <= vocab
    assert not vocab & ts.STOP_WORDS
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 200)
    for c in ts.sample_captions(labels, [("dark", "small", "plain")] * 200, rng):
        assert fit.encoder.tokenizer.tokenize(c)[1] == []


def test_tokenizer_lowercases_drops_stop_words_and_maps_plurals():
    tok = ts.Tokenizer(["boot", "dark", "dress", "sandal", "tshirt"])
    assert tok.tokenize("Show me some DARK Sandals") == ([tok.index["dark"], tok.index["sandal"]], [])
    assert tok.tokenize("dresses, boots and T-shirts!") == ([tok.index["dress"], tok.index["boot"], tok.index["tshirt"]], [])
    assert tok.tokenize("a shiny boot") == ([tok.index["boot"]], ["shiny"])
    assert tok.encode("boot") == [0]


@pytest.mark.parametrize("query, match", [("", "empty"), ("   ", "empty"), ("x" * 201, "limit"), ("a shiny hat", "no known word"),
                                          ("the a of", "no known word"), (5, "string")])
def test_tokenizer_refuses_bad_queries(query, match):
    with pytest.raises(TopicsError, match=match):
        ts.Tokenizer(["boot"]).encode(query)


@pytest.mark.parametrize("vocab", [[], "boot", ["boot", "boot"], ["Boot"], ["the"], ["two words"]])
def test_tokenizer_refuses_bad_vocabularies(vocab):
    with pytest.raises(TopicsError, match="vocabulary"):
        ts.Tokenizer(vocab)


# ----------------------------------------------------------------------- training
def test_training_lowers_the_loss(fit):
    assert fit.losses[0] > math.log(256)  # untrained: no better than a uniform guess over the batch
    assert np.mean(fit.losses[-20:]) < 0.7 * fit.losses[0]  # measured: 6.48 -> 3.76


def test_training_is_seeded(sample, encoder):
    pick = np.random.default_rng(0).choice(len(sample.gallery_images), 300, replace=False)
    images, labels = sample.gallery_images[pick], sample.gallery_labels[pick]
    vectors = embed(encoder, images, progress=False)
    words = ts.fit_attribute_rules(images, labels).words(images, labels)
    a, la = ts.train_text_encoder(vectors, labels, words, steps=10, batch_size=64, seed=3)
    b, lb = ts.train_text_encoder(vectors, labels, words, steps=10, batch_size=64, seed=3)
    c, _ = ts.train_text_encoder(vectors, labels, words, steps=10, batch_size=64, seed=4)
    assert la == lb and np.array_equal(a.encode(["dark sandal"]), b.encode(["dark sandal"]))
    assert not np.allclose(a.encode(["dark sandal"]), c.encode(["dark sandal"]))


def test_text_vectors_are_unit_float32_of_the_image_size(fit):
    v = fit.encoder.encode(["sandal", "a dark ankle boot", "tops"])
    assert v.dtype == np.float32 and v.shape == (3, 64)
    assert np.linalg.norm(v, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_sandal_returns_mostly_sandals(sample, fit, held_out):
    vectors, _ = held_out
    for query in ("sandal", "Show me sandals"):
        top = np.argsort(-(vectors @ fit.encoder.encode([query])[0]))[:10]
        assert (sample.query_labels[top] == data.CLASS_NAMES.index("Sandal")).sum() >= 8, query


def test_an_attribute_word_moves_the_results(sample, fit, held_out):
    vectors, _ = held_out
    brightness = ts.measure_attributes(sample.query_images)["brightness"]
    dark, light = (np.argsort(-(vectors @ fit.encoder.encode([q])[0]))[:10] for q in ("a dark shirt", "a light shirt"))
    assert brightness[dark].mean() + 20 < brightness[light].mean()


def test_scores_agree_with_faiss_and_the_library_metric(sample, fit, held_out):
    vectors, words = held_out
    queries = [ts.caption(int(y), ws) for y, ws in zip(sample.query_labels[:60], words[:60])]
    got = ts.text_to_image_scores(fit.encoder, queries, sample.query_labels[:60], words[:60], vectors, sample.query_labels, words, k=10)
    index = faiss.IndexFlatIP(64)
    index.add(vectors)
    _, ids = index.search(fit.encoder.encode(queries), 10)
    relevant = [set(np.flatnonzero(sample.query_labels == y).tolist()) for y in sample.query_labels[:60]]
    assert got["p_at_k"] == pytest.approx(metrics.mean_precision_at_k(ids.tolist(), relevant, 10))


def test_the_trained_tower_beats_the_untrained_one(report):
    assert report["captioned_p_at_k"] >= 0.75 and report["captioned_p_at_k"] - report["untrained_captioned_p_at_k"] >= 0.5
    assert report["class_name_p_at_k"] >= 0.8 and report["untrained_class_name_p_at_k"] < 0.4
    assert report["super_p_at_k"] >= 0.9 > report["untrained_super_p_at_k"] + 0.3
    assert report["sandal_p_at_k"] >= 0.8
    assert report["captioned_attribute_agreement"] >= report["attribute_base_rate"] + 0.15  # measured 0.59 vs 0.34
    assert report["chance_p_at_k"] == pytest.approx(0.1) and report["final_loss"] < report["initial_loss"]


# ----------------------------------------------------------------------- save and load
def test_save_and_load_round_trip(tmp_path, fit):
    path = ts.save_text_encoder(fit.encoder, tmp_path / "text.pt")
    state = torch.load(path, weights_only=True)
    assert state["vocabulary"] == list(fit.encoder.vocabulary) and state["image_model_version"] == fit.encoder.image_model_version
    loaded = ts.load_text_encoder(path)
    assert loaded.image_model_version == fit.encoder.image_model_version
    assert np.array_equal(loaded.encode(["a dark ankle boot"]), fit.encoder.encode(["a dark ankle boot"]))


def test_load_refuses_bad_files(tmp_path):
    with pytest.raises(TopicsError, match="no such"):
        ts.load_text_encoder(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(TopicsError, match="not a readable"):
        ts.load_text_encoder(tmp_path / "junk.pt")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(TopicsError, match="not a text encoder"):
        ts.load_text_encoder(tmp_path / "other.pt")
    torch.save({"format": "visual_search.text_encoder/1", "vocabulary": ["boot"], "dim": 64, "width": 8,
                "image_model_version": None, "weights": {}}, tmp_path / "damaged.pt")
    with pytest.raises(TopicsError, match="damaged"):
        ts.load_text_encoder(tmp_path / "damaged.pt")


# ----------------------------------------------------------------------- bad input
def test_bad_inputs_are_refused(sample):
    images, labels = sample.gallery_images[:30], sample.gallery_labels[:30]
    vectors = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    words = [()] * 30
    cases = [
        (lambda: ts.measure_attributes(images.astype(np.float32)), "images"),
        (lambda: ts.measure_attributes(images[0]), "images"),
        (lambda: ts.fit_attribute_rules(images, labels[:29]), "labels"),
        (lambda: ts.fit_attribute_rules(images, labels + 10), "labels"),
        (lambda: ts.fit_attribute_rules(images[:12], labels[:12]), "at least 3"),
        (lambda: ts.caption(10), "label"),
        (lambda: ts.caption(1, ("shiny",)), "words"),
        (lambda: ts.caption(1, "dark"), "words"),
        (lambda: ts.caption(1, noun="colour"), "noun"),
        (lambda: ts.sample_captions(labels, words[:3], np.random.default_rng(0)), "words"),
        (lambda: ts.sample_captions(labels, words, 0), "rng"),
        (lambda: ts.train_text_encoder(vectors.astype(np.float64), labels, words), "image_vectors"),
        (lambda: ts.train_text_encoder(np.full((30, 8), np.nan, np.float32), labels, words), "image_vectors"),
        (lambda: ts.train_text_encoder(vectors, labels, words[:5]), "words"),
        (lambda: ts.train_text_encoder(vectors, labels, words, batch_size=31), "batch_size"),
        (lambda: ts.train_text_encoder(vectors, labels, words, steps=0, batch_size=8), "steps"),
        (lambda: ts.train_text_encoder(vectors, labels, words, temperature=0, batch_size=8), "temperature"),
        (lambda: ts.train_text_encoder(vectors, labels, words, seed=-1, batch_size=8), "seed"),
        (lambda: ts.TextEncoder(["boot"], dim=0), "dim"),
        (lambda: ts.TextEncoder(["boot"]).encode("boot"), "texts"),
        (lambda: ts.fit_text_encoder("cnn", images, labels), "image_encoder"),
        (lambda: ts.save_text_encoder("model", "x.pt"), "encoder"),
        (lambda: ts.evaluate_text_search(fast=True, k=0), "k"),
        (lambda: ts.evaluate_text_search("cnn", fast=True), "image_encoder"),
    ]
    for call, match in cases:
        with pytest.raises(TopicsError, match=match):
            call()


def test_scores_refuse_bad_arguments(fit, held_out, sample):
    vectors, words = held_out
    with pytest.raises(TopicsError, match="k"):
        ts.text_to_image_scores(fit.encoder, ["sandal"], np.array([5]), [()], vectors, sample.query_labels, words, k=0)
    with pytest.raises(TopicsError, match="relevant"):
        ts.text_to_image_scores(fit.encoder, ["sandal"], np.array([5]), [()], vectors, sample.query_labels, words, relevant="colour")


# ----------------------------------------------------------------------- the service: POST /search/text
@pytest.fixture
def text_service(data_dir, encoder, fit):
    svc = VisualSearchService(data_dir, encoder, progress=False, text_encoder=fit.encoder)
    yield svc
    svc.close()


@pytest.fixture
def text_client(text_service):
    with TestClient(create_app(text_service)) as c:
        yield c


def test_text_search_through_the_app(text_client, text_service, sample):
    r = text_client.post("/search/text", json={"query": "sandal", "k": 10, "user": "ann"})
    assert r.status_code == 200
    body = r.json()
    png = text_client.get("/images/0").content
    image = text_client.post("/search", files={"image": ("q.png", png, "image/png")}, data={"k": "10"}).json()
    assert set(body) == set(image) and set(body["results"][0]) == set(image["results"][0])
    assert [x["rank"] for x in body["results"]] == list(range(1, 11))
    labels = [text_service.catalog.get(x["id"]).label for x in body["results"]]
    assert sum(lab == 5 for lab in labels) >= 8
    assert body["model_version"] == text_service.model_version
    top = body["results"][0]
    assert text_client.post("/clicks", json={"query_id": body["query_id"], "image_id": top["id"], "rank": 1}).status_code == 204  # logged


def test_text_search_applies_the_rerank_rules(text_client, text_service):
    first = text_client.post("/search/text", json={"query": "a dark ankle boot", "k": 5}).json()["results"][0]["id"]
    text_service.set_flags(first, blocked=True)
    again = text_client.post("/search/text", json={"query": "a dark ankle boot", "k": 5}).json()
    assert first not in [x["id"] for x in again["results"]] and again["dropped"].get("blocked", 0) >= 1


@pytest.mark.parametrize("body, match", [
    ({"query": ""}, "empty"),
    ({"query": "   "}, "empty"),
    ({"query": "boot " * 50}, "limit"),
    ({"query": "zyx plugh"}, "no known word"),
    ({"query": "sandal", "k": 0}, "k"),
    ({"query": "sandal", "k": 101}, "k"),
    ({"query": "sandal", "k": "5"}, "k"),
    ({"query": 5}, "query"),
    ({"k": 5}, "query"),
    ({"query": "sandal", "colour": "red"}, "colour"),
    ({"query": "sandal", "user": "x" * 201}, "user"),
])
def test_text_search_refuses_bad_requests(text_client, body, match):
    r = text_client.post("/search/text", json=body)
    assert r.status_code == 422 and match in r.json()["detail"]


def test_text_search_refuses_a_body_that_is_not_json(text_client):
    r = text_client.post("/search/text", content=b"sandal", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def test_a_service_without_a_text_encoder_refuses_text_search(data_dir, encoder):
    svc = VisualSearchService(data_dir, encoder, progress=False)
    try:
        with TestClient(create_app(svc)) as client:
            r = client.post("/search/text", json={"query": "sandal"})
        assert r.status_code == 422 and "no text encoder" in r.json()["detail"]
    finally:
        svc.close()


def test_a_text_encoder_of_another_model_is_refused(data_dir, encoder, fit):
    stale = ts.TextEncoder(fit.encoder.vocabulary, image_model_version="some-other-model")
    svc = VisualSearchService(data_dir, encoder, progress=False, text_encoder=stale)
    try:
        with pytest.raises(ServiceError, match="trained against model some-other-model"):
            svc.search_text("sandal")
    finally:
        svc.close()
    with pytest.raises(ServiceError, match="text_encoder"):
        VisualSearchService(data_dir, encoder, progress=False, text_encoder="text.pt")
