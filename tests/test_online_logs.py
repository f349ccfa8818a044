"""Log readers against a real service driven by simulated users, exact values on tiny hand-made logs, malformed rows.

One sample-gallery service is built per module (about 2 s); 100 simulated users search it
in-process, and every metric is checked against a count made by hand from its SQLite tables.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
from fastapi.testclient import TestClient

from visual_search.data import load_sample
from visual_search.errors import OnlineError
from visual_search.models import load_pretrained
from visual_search.online.logs import log_metrics, query_table, read_impressions
from visual_search.online.users import CascadeModel, PositionBasedModel, run_simulated_users
from visual_search.service import Catalog, VisualSearchService, load_gallery
from visual_search.service.app import create_app


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = VisualSearchService(tmp_path_factory.mktemp("online") / "data", load_pretrained(), gallery=load_gallery("sample"), progress=False)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def simulated(service, sample):
    return run_simulated_users(service, PositionBasedModel(eta=1.0), sample.query_images, sample.query_labels, n_users=100, k=10, seed=3)


def hand_count(path):
    conn = sqlite3.connect(path)
    queries = conn.execute("SELECT query_id, user, model_version, shown FROM queries").fetchall()
    clicks = conn.execute("SELECT query_id, image_id, rank FROM clicks").fetchall()
    conn.close()
    return queries, clicks


def test_driver_logs_genuine_service_rows(service, sample, simulated):
    queries, clicks = hand_count(service.catalog.path)
    assert simulated.users == 100 and simulated.queries == len(queries) == 100
    assert simulated.clicks == len(clicks) > 0
    by_id = {q: (user, json.loads(shown)) for q, user, _, shown in queries}
    for imp in simulated.impressions:
        user, shown = by_id[imp["query_id"]]
        assert user == imp["user"] and shown == imp["shown"] and len(shown) == 10
        labels = service.catalog.records(shown)
        qlabel = sample.query_labels[imp["query_index"]]
        assert [g == 3 for g in imp["grades"]] == [labels[i].label == qlabel for i in shown]
    for query_id, image_id, rank in clicks:
        assert by_id[query_id][1][rank - 1] == image_id
    again = run_simulated_users(service, PositionBasedModel(eta=1.0), sample.query_images, sample.query_labels, n_users=3, k=10, seed=3,
                                user_prefix="again-", progress="again: users")  # a bar changes nothing but the screen
    same = [(i["query_index"], i["shown"], i["clicked_ranks"]) for i in simulated.impressions[:3]]
    assert [(i["query_index"], i["shown"], i["clicked_ranks"]) for i in again.impressions] == same  # seeded: same queries, same clicks


def test_metrics_match_a_hand_count_from_sqlite(service, simulated):
    queries, clicks = hand_count(service.catalog.path)
    shown = {q: len(json.loads(s)) for q, _, _, s in queries}
    ranks = {q: [] for q in shown}
    for q, _, r in clicks:
        ranks[q].append(r)
    n = len(shown)
    expected = {
        "queries": n,
        "results_shown": sum(shown.values()),
        "clicks": len(clicks),
        "ctr": sum(len(set(r)) for r in ranks.values()) / sum(shown.values()),
        "ctr_per_query": sum(len(set(ranks[q])) / shown[q] for q in shown) / n,
        "clicks_per_query": len(clicks) / n,
        "click_rate": sum(bool(r) for r in ranks.values()) / n,
        "mrr_first_click": sum(1 / min(r) if r else 0 for r in ranks.values()) / n,
    }
    for source in (service.catalog.path, str(service.catalog.path), service.catalog):
        got = log_metrics(source)
        assert got == pytest.approx(expected)
    grouped = log_metrics(service.catalog, by="model_version")
    assert list(grouped) == [service.model_version] and grouped[service.model_version] == pytest.approx(expected)
    halves = log_metrics(service.catalog, by=lambda user: "even" if int(user.split("-")[-1]) % 2 == 0 else "odd")
    assert halves["even"]["queries"] + halves["odd"]["queries"] == n
    assert halves["even"]["clicks"] + halves["odd"]["clicks"] == len(clicks)


def test_driver_over_http_with_a_test_client(service, sample):
    before = service.catalog.counts()
    labels = load_gallery("sample").labels  # the sample gallery's ids are 0..1999
    with TestClient(create_app(service)) as client:
        summary = run_simulated_users(client, CascadeModel(continuation=0.5), sample.query_images, sample.query_labels,
                                      n_users=4, searches_per_user=2, k=5, seed=1, label_of=labels, user_prefix="http-")
    after = service.catalog.counts()
    assert summary.queries == 8 == after["searches"] - before["searches"]
    assert summary.clicks == after["clicks"] - before["clicks"]
    ours = [i for i in read_impressions(service.catalog) if (i.user or "").startswith("http-")]
    assert sorted(i.query_id for i in ours) == sorted(i["query_id"] for i in summary.impressions)
    with pytest.raises(OnlineError, match="label_of"):
        run_simulated_users(client, PositionBasedModel(), sample.query_images, sample.query_labels, n_users=1)
    with pytest.raises(OnlineError, match="target"):
        run_simulated_users(object(), PositionBasedModel(), sample.query_images, sample.query_labels, n_users=1)


# ------------------------------------------------------------------ tiny hand-made logs
@pytest.fixture
def tiny(tmp_path):
    """Three searches: A shows 4 and gets clicks at ranks 2, 4 and 2 again; B shows 2, no click; C shows 5, click at 1."""
    cat = Catalog(tmp_path / "catalog.sqlite3")
    cat.log_query("A", "u1", "m1", [10, 11, 12, 13])
    cat.log_query("B", "u2", "m1", [20, 21])
    cat.log_query("C", "u3", "m2", [30, 31, 32, 33, 34])
    cat.log_click("A", 11, 2)
    cat.log_click("A", 13, 4)
    cat.log_click("A", 11, 2)
    cat.log_click("C", 30, 1)
    yield cat
    cat.close()


def test_exact_values_on_a_tiny_log(tiny):
    m = log_metrics(tiny)
    assert m["queries"] == 3 and m["results_shown"] == 11 and m["clicks"] == 4
    assert m["ctr"] == pytest.approx(3 / 11)  # distinct clicked results / shown
    assert m["ctr_per_query"] == pytest.approx((2 / 4 + 0 / 2 + 1 / 5) / 3)
    assert m["clicks_per_query"] == pytest.approx(4 / 3)  # the repeated click counts here
    assert m["click_rate"] == pytest.approx(2 / 3)
    assert m["mrr_first_click"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    by_model = log_metrics(tiny, by="model_version")
    assert by_model["m1"]["ctr"] == pytest.approx(2 / 6) and by_model["m2"]["mrr_first_click"] == 1.0
    variant = {"u1": "treatment", "u3": "treatment"}  # u2 is not in the experiment
    assert log_metrics(tiny, by=variant.get) == {"treatment": pytest.approx(log_metrics([i for i in read_impressions(tiny) if i.user != "u2"]))}
    t = query_table(read_impressions(tiny))
    assert t["first_rank"].tolist() == [2, 0, 1] and t["clicked"].tolist() == [2, 0, 1]


def test_a_search_without_results(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite3")
    cat.log_query("E", None, "m", [])
    cat.log_query("F", None, "m", [1, 2])
    cat.log_click("F", 2, 2)
    m = log_metrics(cat)
    assert m["ctr"] == 0.5 and m["ctr_per_query"] == 0.5 and m["click_rate"] == 0.5 and m["mrr_first_click"] == 0.25
    cat.close()


def test_empty_log_and_bad_sources(tmp_path):
    cat = Catalog(tmp_path / "empty.sqlite3")
    with pytest.raises(OnlineError, match="no searches"):
        log_metrics(cat)
    assert read_impressions(cat) == []
    cat.log_query("A", "u", "m", [1])
    with pytest.raises(OnlineError, match="no search falls"):
        log_metrics(cat, by=lambda user: None)
    with pytest.raises(OnlineError, match="by"):
        log_metrics(cat, by="colour")
    with pytest.raises(OnlineError, match="no such catalog"):
        log_metrics(tmp_path / "missing.sqlite3")
    with pytest.raises(OnlineError, match="source"):
        read_impressions(42)
    cat.close()


@pytest.mark.parametrize("shown, click, match", [
    ("[1, 2", None, "not JSON"),
    ('{"a": 1}', None, "JSON list"),
    ('[1, "2"]', None, "JSON list"),
    ("[1, -2]", None, "JSON list"),
    ("[1, true]", None, "JSON list"),
    ("[1, 2]", ("Q", 3, 1), "not shown"),
    ("[1, 2]", ("Q", 1, 0), "rank"),
    ("[1, 2]", ("Q", 1, -1), "rank"),
    ("[1, 2]", ("Q", 2, 3), "rank"),
    ("[1, 2]", ("Q", 2, 1), "showed image 1"),
    ("[1, 2]", ("nope", 1, 1), "no such query"),
])
def test_malformed_rows_are_named(tmp_path, shown, click, match):
    path = tmp_path / "c.sqlite3"
    Catalog(path).close()
    conn = sqlite3.connect(path)  # raw writes, past the catalog's own checks (foreign keys are off here)
    conn.execute("INSERT INTO queries (query_id, time, user, model_version, shown) VALUES ('Q', 1.0, 'u', 'm', ?)", (shown,))
    if click is not None:
        conn.execute("INSERT INTO clicks (query_id, image_id, rank, time) VALUES (?, ?, ?, 2.0)", click)
    conn.commit()
    conn.close()
    with pytest.raises(OnlineError, match=match) as err:
        read_impressions(path)
    assert ("'Q'" in str(err.value)) or ("clicks row 1" in str(err.value))
