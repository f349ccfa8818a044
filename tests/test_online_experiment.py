"""Online experiments on the real service: variants served side by side, A/B arms, RandPair swaps, interleaving.

One sample-gallery data dir is built per module (the committed SimCLR encoder) and
one service on a copy of it serves the raw-pixel encoder as variant ``"pixels"``;
tests that upload, delete or rewrite the catalog get their own copy. Every check
reads what the service logged (its SQLite tables), never the experiment's own state.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from visual_search.data import load_sample
from visual_search.errors import OnlineError, ServiceError
from visual_search.models import raw_pixel_encoder
from visual_search.online.assignment import assign
from visual_search.online.experiment import Experiment
from visual_search.online.logs import interleaving_outcomes, log_metrics, read_impressions, swap_rows
from visual_search.online.users import PositionBasedModel, run_simulated_users
from visual_search.service import Catalog, VisualSearchService, load_gallery
from visual_search.service.app import create_app
from visual_search.service.blobs import png_bytes
from visual_search.service.catalog import SCHEMA_VERSION

K = 10


@pytest.fixture(scope="module")
def sample():
    return load_sample()


@pytest.fixture(scope="module")
def service(template, tmp_path_factory, encoder):
    """One service for the read-only tests, with the raw-pixel model as variant "pixels"."""
    path = tmp_path_factory.mktemp("shared") / "data"
    shutil.copytree(template, path)
    svc = VisualSearchService(path, encoder, progress=False)
    svc.add_variant("pixels", raw_pixel_encoder())
    yield svc
    svc.close()


@pytest.fixture
def own_service(data_dir, encoder):
    svc = VisualSearchService(data_dir, encoder, progress=False)
    yield svc
    svc.close()


def ids(response) -> list[int]:
    return [r.id for r in response.results]


def logged(service, query_id: str):
    (imp,) = [i for i in read_impressions(service.catalog) if i.query_id == query_id]
    return imp


# ------------------------------------------------------------------- service variants
def test_variants_serve_their_own_model(service, sample):
    """A variant answers with its own model version; the main model is untouched; stats lists the variants."""
    version = service.variants["pixels"]
    assert version == raw_pixel_encoder().version and version != service.model_version
    assert service.stats()["variants"] == {"pixels": version}
    image = sample.query_images[0]
    main, pixels = service.search(image, k=K, log=False), service.search(image, k=K, variant="pixels", log=False)
    assert main.model_version == service.model_version and pixels.model_version == version
    assert len(ids(main)) == len(ids(pixels)) == K
    assert ids(main) != ids(pixels)  # a different model ranks differently
    assert service.search(image, k=K, variant=None, log=False).model_version == service.model_version


def test_a_variant_is_the_raw_pixel_ranking(service, sample):
    """Variant "pixels" ranks the gallery exactly as raw-pixel cosine similarity does (the sample's ids are positions)."""
    from visual_search.embed import raw_pixel_embeddings

    gallery = load_gallery("sample")
    g = raw_pixel_embeddings(gallery.images)
    for q in range(3):
        image = sample.query_images[q]
        scores = g @ raw_pixel_embeddings(image[None])[0]
        got = service.search(image, k=5, variant="pixels", log=False)
        np.testing.assert_allclose([r.score for r in got.results], np.sort(scores)[::-1][:5], atol=1e-4)


@pytest.mark.parametrize("variant", ["nope", "PIXELS", 3])
def test_unknown_variant_is_named(service, sample, variant):
    with pytest.raises(ServiceError, match=repr(variant)):
        service.search(sample.query_images[0], variant=variant)


def test_uploads_and_deletes_reach_every_variant(own_service):
    """A new upload is found by a variant's search at once (rank 1, cosine ~1); once deleted it is gone from it."""
    own_service.add_variant("pixels", raw_pixel_encoder())
    pattern = np.random.default_rng(0).integers(0, 255, size=(28, 28), dtype=np.uint8)  # unlike any gallery item
    near = pattern + np.uint8(1)  # not the same pixels: exact copies of the query are dropped by design
    image_id = own_service.upload(png_bytes(pattern))
    top = own_service.search(near, k=5, variant="pixels", log=False).results[0]
    assert top.id == image_id and top.score == pytest.approx(1.0, abs=1e-3)
    assert own_service.search(near, k=5, log=False).results[0].id == image_id  # and the main model, of course
    own_service.delete(image_id)
    assert image_id not in ids(own_service.search(near, k=20, variant="pixels", log=False))
    assert image_id not in ids(own_service.search(near, k=20, log=False))


def test_add_variant_after_an_upload_embeds_it(own_service):
    pattern = np.random.default_rng(1).integers(0, 255, size=(28, 28), dtype=np.uint8)
    image_id = own_service.upload(png_bytes(pattern))
    own_service.add_variant("pixels", raw_pixel_encoder())
    assert own_service.search(pattern + np.uint8(1), k=3, variant="pixels", log=False).results[0].id == image_id


def test_remove_variant(own_service, sample):
    own_service.add_variant("pixels", raw_pixel_encoder())
    own_service.remove_variant("pixels")
    assert own_service.variants == {} and own_service.stats()["variants"] == {}
    with pytest.raises(ServiceError, match="'pixels'"):
        own_service.search(sample.query_images[0], variant="pixels")
    with pytest.raises(ServiceError, match="'pixels'"):
        own_service.remove_variant("pixels")
    for bad in ("", None, "a\nb"):
        with pytest.raises(ServiceError, match="variant"):
            own_service.add_variant(bad, raw_pixel_encoder())


def test_search_without_logging(own_service, sample):
    """log=False returns an empty query id and writes no queries row; a bad log flag is refused."""
    before = own_service.catalog.counts()["searches"]
    response = own_service.search(sample.query_images[0], k=5, user="quiet", log=False)
    assert response.query_id == "" and len(response.results) == 5
    assert own_service.catalog.counts()["searches"] == before and read_impressions(own_service.catalog) == []
    assert own_service.search(sample.query_images[0], k=5).query_id != ""
    assert own_service.catalog.counts()["searches"] == before + 1
    with pytest.raises(ServiceError, match="log"):
        own_service.search(sample.query_images[0], log="no")


def test_log_impression_records_the_list_and_its_experiment(own_service):
    query_id = own_service.log_impression("ann", "m-x", [5, 3, 9], {"experiment": "e", "variant": "b"})
    imp = logged(own_service, query_id)
    assert imp.user == "ann" and imp.model_version == "m-x" and imp.shown == (5, 3, 9)
    assert imp.experiment == {"experiment": "e", "variant": "b"}
    own_service.click(query_id, 3, 2)  # checked against what was logged
    assert logged(own_service, query_id).clicked_ranks == (2,)
    with pytest.raises(ServiceError):
        own_service.click(query_id, 3, 1)
    assert logged(own_service, own_service.log_impression(None, "m", [])).experiment is None


@pytest.mark.parametrize("args, match", [
    (("u", "m", [1, 2, 1]), "distinct"),
    (("u", "m", list(range(10_000))), "distinct"),
    (("u", "m", [1, -2]), "shown id"),
    (("u", "m", [1, "2"]), "shown id"),
    (("u", "", [1]), "model_version"),
    (("u", None, [1]), "model_version"),
    (("u", "a\nb", [1]), "model_version"),
    (("u\n", "m", [1]), "user"),
    (("u", "m", [1], {"x": object()}), "experiment"),
    (("u", "m", [1], {"x": float("nan")}), "experiment"),
])
def test_log_impression_refuses_bad_input(service, args, match):
    before = service.catalog.counts()["searches"]
    with pytest.raises(ServiceError, match=match):
        service.log_impression(*args)
    assert service.catalog.counts()["searches"] == before  # nothing half-written


@pytest.mark.parametrize("experiment", [["a", "b"], "variant-b", 3])
def test_log_impression_refuses_an_experiment_that_is_not_an_object(own_service, experiment):
    with pytest.raises(ServiceError, match="experiment"):
        own_service.log_impression("u", "m", [1], experiment)
    read_impressions(own_service.catalog)  # the log stays readable


@pytest.mark.parametrize("shown", [5, None])
def test_log_impression_refuses_a_shown_that_is_not_a_list(service, shown):
    with pytest.raises(ServiceError, match="shown"):
        service.log_impression("u", "m", shown)


def test_catalog_log_query_refuses_non_json_experiment(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite3")
    with pytest.raises(ServiceError, match="experiment"):
        cat.log_query("Q", "u", "m", [1], experiment={"when": {1, 2}})
    cat.log_query("Q", "u", "m", [1], experiment={"b": 1, "a": [1, "x"]})
    assert read_impressions(cat)[0].experiment == {"a": [1, "x"], "b": 1}
    cat.close()


# ---------------------------------------------------------------------------- HTTP
def test_http_search_takes_a_variant(service, sample):
    image = png_bytes(sample.query_images[1])
    with TestClient(create_app(service, max_upload_bytes=200_000)) as c:
        files = {"image": ("q.png", image, "image/png")}
        pixels = c.post("/search", files=files, data={"k": "5", "variant": "pixels", "user": "web"})
        main = c.post("/search", files={"image": ("q.png", image, "image/png")}, data={"k": "5"})
        empty = c.post("/search", files={"image": ("q.png", image, "image/png")}, data={"k": "5", "variant": ""})
        unknown = c.post("/search", files={"image": ("q.png", image, "image/png")}, data={"k": "5", "variant": "nope"})
    assert pixels.status_code == main.status_code == empty.status_code == 200
    assert pixels.json()["model_version"] == service.variants["pixels"]
    assert main.json()["model_version"] == empty.json()["model_version"] == service.model_version
    assert logged(service, pixels.json()["query_id"]).model_version == service.variants["pixels"]
    assert [r["id"] for r in pixels.json()["results"]] == ids(service.search(sample.query_images[1], k=5, variant="pixels", log=False))
    assert unknown.status_code == 422
    assert unknown.headers["content-type"].startswith("application/json")
    assert "'nope'" in unknown.json()["detail"]


# -------------------------------------------------------------------- schema migration
def downgrade_to_schema_1(path: Path) -> None:
    """Rewrite a catalog file as schema 1 wrote it: a queries table without ``experiment``, user_version 1."""
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE queries DROP COLUMN experiment")
    conn.execute("INSERT INTO queries (query_id, time, user, model_version, shown) VALUES ('old', 1.0, 'ann', 'm-old', '[4, 2]')")
    conn.execute("INSERT INTO clicks (query_id, image_id, rank, time) VALUES ('old', 2, 2, 2.0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_a_schema_1_catalog_gains_the_experiment_column(tmp_path):
    path = tmp_path / "c.sqlite3"
    Catalog(path).close()
    downgrade_to_schema_1(path)
    (old,) = read_impressions(path)  # a schema-1 file reads, experiment None
    assert old.experiment is None and old.shown == (4, 2) and old.clicked_ranks == (2,)
    cat = Catalog(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert "experiment" in {row[1] for row in conn.execute("PRAGMA table_info(queries)")}
    conn.close()
    cat.log_query("new", "bob", "m-new", [7], experiment={"experiment": "e", "variant": "a"})
    old, new = read_impressions(cat)
    assert (old.query_id, old.user, old.model_version, old.shown, old.clicked_ranks, old.experiment) == ("old", "ann", "m-old", (4, 2), (2,), None)
    assert new.experiment == {"experiment": "e", "variant": "a"}
    cat.close()
    Catalog(path).close()  # opening a migrated file again is a no-op


def test_a_service_opens_a_schema_1_data_dir(data_dir, encoder, sample):
    downgrade_to_schema_1(data_dir / "catalog.sqlite3")
    svc = VisualSearchService(data_dir, encoder, progress=False)
    try:
        svc.add_variant("pixels", raw_pixel_encoder())
        exp = Experiment(svc, "mig", {"p": "pixels"})
        qid = exp.search(sample.query_images[0], k=5, user="u").query_id
        by_id = {i.query_id: i for i in read_impressions(svc.catalog)}
        assert by_id["old"].experiment is None and by_id["old"].clicked_ranks == (2,)
        assert by_id[qid].experiment == {"experiment": "mig", "variant": "p"}
    finally:
        svc.close()


# ------------------------------------------------------------------------------ A/B
def test_ab_routes_each_user_by_assign_and_logs_the_arm(service, sample):
    arms = {"simclr": None, "pixels": "pixels"}
    exp = Experiment(service, "enc-ab", arms, seed=0)
    version = {"simclr": service.model_version, "pixels": service.variants["pixels"]}
    seen: dict[str, str] = {}
    for u in range(24):
        user = f"user-{u}"
        arm = assign(user, "enc-ab", ("simclr", "pixels"))
        assert exp.arm_of(user) == arm
        response = exp.search(sample.query_images[u], k=K, user=user)
        assert response.model_version == version[arm]
        assert [r.rank for r in response.results] == list(range(1, K + 1))
        assert ids(response) == ids(service.search(sample.query_images[u], k=K, variant=arms[arm], log=False))
        imp = logged(service, response.query_id)
        assert imp.experiment == {"experiment": "enc-ab", "variant": arm}
        assert imp.user == user and imp.model_version == version[arm] and list(imp.shown) == ids(response)
        seen[response.query_id] = arm
    assert set(seen.values()) == {"simclr", "pixels"}  # 24 users: both arms drawn
    ours = [i for i in read_impressions(service.catalog) if i.query_id in seen]
    groups = log_metrics(ours, by="variant")
    assert sorted(groups) == ["pixels", "simclr"]
    for arm in groups:
        assert groups[arm]["queries"] == list(seen.values()).count(arm)
        assert groups[arm] == pytest.approx(log_metrics([i for i in ours if seen[i.query_id] == arm]))


def test_ab_weights_steer_assignment(service):
    exp = Experiment(service, "weighted", {"a": None, "b": "pixels"}, weights=(1, 0))
    assert {exp.arm_of(f"w{u}") for u in range(50)} == {"a"}
    assert Experiment(service, "solo", {"only": "pixels"}).arm_of("anyone") == "only"


@pytest.mark.parametrize("mode", ["first", "adjacent"])
def test_randpair_swaps_exactly_one_pair(service, sample, mode):
    """swap_rate 1: each logged list is production's with rank 1 and k (or k-1 and k) swapped, k in 2..depth."""
    name = f"swap-{mode}"
    exp = Experiment(service, name, {"prod": None}, swap_rate=1.0, swap_mode=mode, swap_depth=K, seed=7)
    ks = []
    for q in range(12):
        image = sample.query_images[20 + q]
        response = exp.search(image, k=K, user=f"s{q}")
        production = ids(service.search(image, k=K, log=False))
        imp = logged(service, response.query_id)
        k = imp.experiment["swap"]
        assert imp.experiment == {"experiment": name, "variant": "prod", "swap": k, "swap_mode": mode}
        assert 2 <= k <= K
        a, b = (1, k) if mode == "first" else (k - 1, k)
        expected = list(production)
        expected[a - 1], expected[b - 1] = expected[b - 1], expected[a - 1]
        assert list(imp.shown) == expected == ids(response)
        assert [r.rank for r in response.results] == list(range(1, K + 1))
        ks.append(k)
    assert len(set(ks)) > 1  # k is drawn, not fixed
    rows = swap_rows(service.catalog, n_ranks=K, experiment=name)
    assert rows.mode == mode and rows.impressions == 12
    assert rows.swap[::K].tolist() == ks
    assert rows.ranks.tolist() == list(range(1, K + 1)) * 12 and rows.clicked.sum() == 0


def test_swaps_are_seeded(service, sample):
    def ks(seed):
        exp = Experiment(service, f"seeded-{seed}", {"prod": None}, swap_rate=1.0, seed=seed)
        return [logged(service, exp.search(sample.query_images[q], k=K, user=f"z{q}").query_id).experiment["swap"] for q in range(6)]

    assert ks(3) == ks(3)


def test_swap_rate_zero_never_swaps(service, sample):
    exp = Experiment(service, "noswap", {"prod": None}, swap_rate=0.0)
    for q in range(3):
        response = exp.search(sample.query_images[q], k=K, user=f"n{q}")
        assert logged(service, response.query_id).experiment == {"experiment": "noswap", "variant": "prod"}
        assert ids(response) == ids(service.search(sample.query_images[q], k=K, log=False))


# ------------------------------------------------------------------------ interleaving
def test_interleaving_mixes_both_rankers_and_credits_clicks(service, sample):
    exp = Experiment(service, "tdi", {"simclr": None, "pixels": "pixels"}, mode="interleave", seed=1)
    queries = []
    for q in range(3):
        image = sample.query_images[40 + q]
        response = exp.search(image, k=K, user=f"i{q}")
        ra = ids(service.search(image, k=K, log=False))
        rb = ids(service.search(image, k=K, variant="pixels", log=False))
        imp = logged(service, response.query_id)
        teams = imp.experiment["teams"]
        assert imp.experiment == {"experiment": "tdi", "arms": ["simclr", "pixels"], "teams": teams}
        assert response.model_version == imp.model_version == f"interleaved:{service.model_version}|{service.variants['pixels']}"
        assert len(teams) == len(imp.shown) == K and set(teams) <= {"a", "b"}
        assert list(imp.shown) == ids(response) and len(set(imp.shown)) == K
        assert set(imp.shown) <= set(ra) | set(rb)
        team_a = [i for i, t in zip(imp.shown, teams, strict=True) if t == "a"]
        team_b = [i for i, t in zip(imp.shown, teams, strict=True) if t == "b"]
        assert all(i in ra for i in team_a) and all(i in rb for i in team_b)
        assert team_a == sorted(team_a, key=ra.index) and team_b == sorted(team_b, key=rb.index)  # each team in its ranker's order
        assert abs(len(team_a) - len(team_b)) <= 1  # team draft: the teams take turns
        queries.append((response.query_id, list(imp.shown), teams))
    (qa, shown_a, teams_a), (qb, shown_b, teams_b), _ = queries
    pa, pb = teams_a.index("a"), teams_b.index("b")
    exp.click(qa, shown_a[pa], pa + 1)  # one click on team a's result
    exp.click(qb, shown_b[pb], pb + 1)  # one click on team b's result; the third query gets none
    assert interleaving_outcomes(service.catalog, experiment="tdi") == ["a", "b", "tie"]
    with pytest.raises(OnlineError, match="no interleaved impression"):
        interleaving_outcomes(service.catalog, experiment="no-such-experiment")


def test_log_metrics_by_variant_leaves_interleaved_and_plain_searches_out(service, sample):
    plain = service.search(sample.query_images[0], k=K, user="plain").query_id
    inter = Experiment(service, "tdi-2", {"a": None, "b": "pixels"}, mode="interleave").search(sample.query_images[0], k=K, user="x").query_id
    ab = Experiment(service, "ab-2", {"only": "pixels"}).search(sample.query_images[0], k=K, user="y").query_id
    ours = [i for i in read_impressions(service.catalog) if i.query_id in (plain, inter, ab)]
    assert log_metrics(ours, by="variant") == {"only": pytest.approx(log_metrics([i for i in ours if i.query_id == ab]))}


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(arms={"a": "nope"}), "'nope'"),
    (dict(arms={"a": None, "b": "pixels"}, mode="interleave", swap_rate=0.1), "swap_rate"),
    (dict(arms={"a": None}, mode="interleave"), "exactly two"),
    (dict(arms={"a": None, "b": "pixels", "c": None}, mode="interleave"), "exactly two"),
    (dict(arms={"a": None}, swap_mode="middle"), "swap_mode"),
    (dict(arms={"a": None}, swap_rate=1.5), "swap_rate"),
    (dict(arms={"a": None}, swap_rate=-0.1), "swap_rate"),
    (dict(arms={"a": None}, swap_depth=1), "swap_depth"),
    (dict(arms={"a": None}, swap_depth=101), "swap_depth"),
    (dict(arms={"a": None}, mode="bandit"), "mode"),
    (dict(arms={}), "arms"),
    (dict(arms={"": None}), "arms"),
    (dict(arms={"a": None, "b": "pixels"}, weights=(1, -1)), "weights"),
    (dict(arms={"a": None, "b": "pixels"}, weights=(1, 1, 1)), "weights"),
    (dict(arms={"a": None}, seed=-1), "seed"),
])
def test_bad_experiments_are_refused(service, kwargs, match):
    with pytest.raises(OnlineError, match=match):
        Experiment(service, kwargs.pop("name", "bad"), **kwargs)


def test_weights_that_are_not_a_sequence_are_refused(service):
    with pytest.raises(OnlineError, match="weights"):
        Experiment(service, "w", {"a": None, "b": "pixels"}, weights=5)


def test_bad_experiment_targets_and_users(service, sample):
    with pytest.raises(OnlineError, match="service"):
        Experiment("http://localhost", "x", {"a": None})
    with pytest.raises(OnlineError, match="name"):
        Experiment(service, "", {"a": None})
    for mode, arms in (("ab", {"a": None, "b": "pixels"}), ("interleave", {"a": None, "b": "pixels"})):
        before = service.catalog.counts()["searches"]
        with pytest.raises(OnlineError, match="user"):
            Experiment(service, "nouser", arms, mode=mode).search(sample.query_images[0], k=K, user=None)
        assert service.catalog.counts()["searches"] == before
    with pytest.raises(OnlineError, match="arm_of"):
        Experiment(service, "tdi-3", {"a": None, "b": "pixels"}, mode="interleave").arm_of("u")


@pytest.mark.parametrize("experiment, match", [
    ('{"experiment": "e"', "not JSON"),
    ("[1, 2]", "JSON object"),
    ('"variant"', "JSON object"),
    ("null", "JSON object"),
])
def test_malformed_experiment_rows_are_named(tmp_path, experiment, match):
    path = tmp_path / "c.sqlite3"
    Catalog(path).close()
    conn = sqlite3.connect(path)  # a raw write, past the catalog's own checks
    conn.execute("INSERT INTO queries (query_id, time, user, model_version, shown, experiment) VALUES ('Q', 1.0, 'u', 'm', '[1, 2]', ?)",
                 (experiment,))
    conn.commit()
    conn.close()
    with pytest.raises(OnlineError, match=match) as err:
        read_impressions(path)
    assert "'Q'" in str(err.value)


@pytest.mark.parametrize("teams", ["ab", "abx", 7])
def test_malformed_interleaving_teams_are_named(tmp_path, teams):
    cat = Catalog(tmp_path / "c.sqlite3")
    cat.log_query("Q", "u", "m", [1, 2, 3], experiment={"experiment": "e", "arms": ["x", "y"], "teams": teams})
    with pytest.raises(OnlineError, match="'Q'.*teams"):
        interleaving_outcomes(cat)
    cat.close()


# ------------------------------------------------------------------- simulated users
def test_simulated_users_drive_an_experiment(service, sample):
    exp = Experiment(service, "sim-ab", {"simclr": None, "pixels": "pixels"}, seed=2)
    summary = run_simulated_users(exp, PositionBasedModel(eta=1.0), sample.query_images, sample.query_labels,
                                  n_users=12, k=5, seed=4, user_prefix="simexp-")
    assert summary.users == summary.queries == 12
    by_id = {i.query_id: i for i in read_impressions(service.catalog)}
    for imp in summary.impressions:
        row = by_id[imp["query_id"]]
        arm = assign(imp["user"], "sim-ab", ("simclr", "pixels"))
        assert row.experiment == {"experiment": "sim-ab", "variant": arm}
        assert list(row.shown) == imp["shown"] and row.clicked_ranks == tuple(imp["clicked_ranks"])
    assert summary.clicks == sum(len(by_id[i["query_id"]].clicked_ranks) for i in summary.impressions)
    json.dumps(log_metrics([by_id[i["query_id"]] for i in summary.impressions], by="variant"))  # plain numbers


def test_a_double_click_counts_once_for_interleaving(own_service, sample):
    own_service.add_variant("pixels", raw_pixel_encoder())
    exp = Experiment(own_service, "dbl", {"simclr": None, "pixels": "pixels"}, mode="interleave", seed=3)
    response = exp.search(sample.query_images[5], k=K, user="d")
    teams = logged(own_service, response.query_id).experiment["teams"]
    pos = teams.index("b")
    for _ in range(2):  # the same result clicked twice: two click rows, one credit
        exp.click(response.query_id, ids(response)[pos], pos + 1)
    assert interleaving_outcomes(own_service.catalog, experiment="dbl") == ["b"]


def test_malformed_variants_and_swap_modes_in_the_log_are_named(own_service):
    own_service.log_impression("u", "m", list(range(10)), {"experiment": "e", "variant": ["a"]})
    with pytest.raises(OnlineError, match="variant .* must be a string"):
        log_metrics(own_service.catalog, by="variant")
    good = own_service.log_impression("u", "m", list(range(10)), {"experiment": "s", "variant": "x", "swap": 3, "swap_mode": "sideways"})
    with pytest.raises(OnlineError, match=f"{good}.*swap_mode 'sideways'"):
        swap_rows(own_service.catalog, experiment="s")


def test_variants_are_copied_on_write(own_service, sample):
    """A reader's snapshot of the variants never changes under it: add and remove replace the mapping."""
    before = own_service._variants
    own_service.add_variant("second", raw_pixel_encoder())
    assert own_service._variants is not before and "second" not in before
    snapshot = own_service._variants
    own_service.remove_variant("second")
    assert "second" in snapshot and "second" not in own_service.variants
    with pytest.raises(ServiceError, match="second"):
        own_service.remove_variant("second")


def test_a_migration_interrupted_after_the_alter_still_opens(tmp_path):
    """The column exists but the version was never bumped (a crash in between): the next open must not fail."""
    Catalog(tmp_path / "c.sqlite3").close()
    conn = sqlite3.connect(tmp_path / "c.sqlite3")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    cat = Catalog(tmp_path / "c.sqlite3")
    cat.log_query("Q", "u", "m", [1], {"experiment": "e", "variant": "a"})
    assert read_impressions(cat)[0].experiment == {"experiment": "e", "variant": "a"}
    cat.close()
    conn = sqlite3.connect(tmp_path / "c.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_log_metrics_groups_variants_within_one_experiment(own_service, sample):
    """Two experiments with the same arm labels: ``experiment=`` keeps them apart."""
    own_service.add_variant("pixels", raw_pixel_encoder())
    for name, n in (("first", 3), ("second", 5)):
        exp = Experiment(own_service, name, {"a": None, "b": "pixels"})
        for u in range(n):
            exp.search(sample.query_images[u], k=K, user=f"{name}-{u}")
    merged = log_metrics(own_service.catalog, by="variant")
    first = log_metrics(own_service.catalog, by="variant", experiment="first")
    assert sum(m["queries"] for m in merged.values()) == 8 and sum(m["queries"] for m in first.values()) == 3
    with pytest.raises(OnlineError, match="no search"):
        log_metrics(own_service.catalog, by="variant", experiment="third")
