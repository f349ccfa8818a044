"""The capacity planner against hand-worked examples, its inputs from the committed measurements, and its command line."""

from __future__ import annotations

import json
import math

import pytest

from visual_search.errors import ScaleError
from visual_search.scale import capacity
from visual_search.scale.__main__ import main
from visual_search.scale.capacity import format_plan, load_measurements, parse_index, plan

GIB = 2**30


def measured(**overrides):
    """Round measurements that make the arithmetic easy to do by hand."""
    ivfpq = {"n_ref": 1e6, "bytes_per_vector": 40.0, "qps": 1000.0, "latency_ms": 2.0, "recall@10": 0.88,
             "qps_exponent": -0.5, "latency_exponent": 0.5, "fit_range": (1e4, 1e6), "params": {"m": 16, "nbits": 8}}
    exact = {"n_ref": 1e6, "bytes_per_vector": 264.0, "qps": 100.0, "latency_ms": 20.0, "recall@10": 1.0,
             "qps_exponent": -1.0, "latency_exponent": 1.0, "fit_range": (1e4, 1e6), "params": {}}
    hnsw = {"n_ref": 1e6, "bytes_per_vector": 256.0 + 264.0, "qps": 5000.0, "latency_ms": 0.5, "recall@10": 0.95,
            "qps_exponent": -0.1, "latency_exponent": 0.1, "fit_range": (1e4, 1e6), "params": {"M": 32}}
    return {"source": "hand-worked", "dim": 64, "indexes": {"ivfpq": ivfpq, "exact": exact, "hnsw": hnsw},
            "embed_images_per_s_per_core": 4000.0, **overrides}


def test_the_worked_example_in_the_issue_by_hand():
    """200B images, 64-d, IVF-PQ m=16, 20k QPS, 256 GiB machines: latency decides the shards."""
    r = plan(200e9, 64, "ivfpq:m=16", 20_000, 256, measurements=measured())
    # 16 bytes of code (16 x 8 bits) + 24 bytes of measured overhead (40 - 16)
    assert r["bytes_per_vector"] == pytest.approx(40.0)
    assert r["index_bytes"] == pytest.approx(8e12)
    # 8e12 / (256 GiB x 0.7) = 41.6 -> 42 machines' worth of RAM
    assert r["shards_for_memory"] == 42
    # latency 2 ms x (n / 1e6) ** 0.5 <= 50 ms  <=>  n <= 625e6  ->  200e9 / 625e6 = 320 shards
    assert r["shards_for_latency"] == 320
    assert r["shards"] == 320
    assert r["vectors_per_shard"] == pytest.approx(625e6)
    assert r["latency_ms"] == pytest.approx(50.0)
    # 1000 QPS x 625 ** -0.5 = 40 QPS a core; x 32 cores x 0.5 = 640 a replica; 20000 / 640 = 31.25 -> 32
    assert r["qps_per_core"] == pytest.approx(40.0)
    assert r["qps_per_replica"] == pytest.approx(640.0)
    assert r["replicas"] == 32
    assert r["machines"] == 320 * 32
    # 200e9 / 4000 images/s = 5e7 core-seconds = 578.7 core-days; GPU at the assumed 20k/s: 115.7 days
    assert r["embed_core_days"] == pytest.approx(200e9 / 4000 / 86_400)
    assert r["embed_gpu_days"] == pytest.approx(200e9 / 20_000 / 86_400)
    # 0.5% a day = 1e9 uploads: 1e9 / 4000 / 3600 = 69.4 core-hours, at $0.04 = $2.78
    assert r["uploads_per_day"] == pytest.approx(1e9)
    assert r["upload_core_hours_per_day"] == pytest.approx(1e9 / 4000 / 3600)
    assert r["upload_usd_per_day"] == pytest.approx(1e9 / 4000 / 3600 * 0.04)
    assert r["raw_image_bytes"] == pytest.approx(200e9 * 200e3 * 3)
    assert r["embedding_bytes"] == pytest.approx(200e9 * 64 * 4 * 3)
    assert r["serving_usd_per_day"] == pytest.approx(320 * 32 * 32 * 24 * 0.04)
    assert r["extrapolation"] == pytest.approx(625.0)


def test_when_memory_decides_the_shards():
    """A generous latency budget: RAM sets the shards, and bigger shards need more replicas."""
    r = plan(200e9, 64, "ivfpq:m=16", 20_000, 256, measurements=measured(), latency_ms=1000)
    assert r["shards_for_latency"] == 1 and r["shards"] == 42
    per_shard = 200e9 / 42
    qps_core = 1000 * (per_shard / 1e6) ** -0.5  # 14.49
    assert r["qps_per_core"] == pytest.approx(qps_core)
    assert r["replicas"] == math.ceil(20_000 / (qps_core * 32 * 0.5)) == 87
    assert r["machines"] == 42 * 87


def test_dimension_and_code_size_scale_what_was_measured():
    m = measured()
    # exact at 128-d: 4 x 128 + the 8 bytes of overhead measured at 64-d (264 - 256)
    assert plan(1e9, 128, "exact", 10, 512, measurements=m)["bytes_per_vector"] == pytest.approx(520.0)
    # IVF-PQ with 32 bytes a code: 32 + 24
    assert plan(1e9, 64, "ivfpq:m=32", 10, 512, measurements=m)["bytes_per_vector"] == pytest.approx(56.0)
    # 4-bit codes: 16 x 4 / 8 = 8 bytes + 24
    assert plan(1e9, 64, "ivfpq:m=16,nbits=4", 10, 512, measurements=m)["bytes_per_vector"] == pytest.approx(32.0)
    # HNSW at M=16: the 264 bytes of links (520 - 256) halve
    assert plan(1e9, 64, "hnsw:M=16", 10, 512, measurements=m)["bytes_per_vector"] == pytest.approx(256 + 132)
    # twice the code is twice the work per scanned code: half the QPS at the same shard size
    a = plan(1e9, 64, "ivfpq:m=16", 10, 512, measurements=m, latency_ms=1e6)
    b = plan(1e9, 64, "ivfpq:m=32", 10, 512, measurements=m, latency_ms=1e6)
    assert a["shards"] == b["shards"] == 1  # 40 GB and 56 GB both fit in 512 GiB x 0.7
    assert b["qps_per_core"] == pytest.approx(a["qps_per_core"] / 2) == pytest.approx(1000 * (1e9 / 1e6) ** -0.5 / 2)


def test_min_replicas_holds_at_low_traffic_and_more_qps_means_more_replicas():
    m = measured()
    low = plan(1e9, 64, "hnsw", 1, 512, measurements=m)
    assert low["replicas"] == 2  # availability, not load
    qps = [plan(1e9, 64, "hnsw", q, 512, measurements=m)["replicas"] for q in (1e3, 1e4, 1e5, 1e6)]
    assert qps == sorted(qps) and qps[-1] > qps[0]
    assert plan(1e9, 64, "hnsw", 1, 512, measurements=m, min_replicas=3)["replicas"] == 3


def test_every_row_names_its_basis_and_the_extrapolation_is_flagged():
    r = plan(200e9, 64, "ivfpq:m=16", 20_000, 256, measurements=measured())
    assert all(len(row) == 3 and row[2] for row in r["rows"])
    text = format_plan(r)
    assert "EXTRAPOLATED 625x" in text and "hand-worked" in text and "assumed, not measured" in text
    small = plan(1e6, 64, "exact", 1, 512, measurements=measured())
    assert "inside the measured range" in format_plan(small)
    assert "recall@10" in text and "0.880" in text  # the quality the plan's speed was measured at


@pytest.mark.parametrize("spec, expected", [
    ("exact", ("exact", {})),
    ("ivfpq", ("ivfpq", {"m": 16, "nbits": 8})),
    ("ivfpq:m=8", ("ivfpq", {"m": 8, "nbits": 8})),
    (" ivfpq:m=32,nbits=4 ", ("ivfpq", {"m": 32, "nbits": 4})),
    ("hnsw:M=48", ("hnsw", {"M": 48})),
])
def test_parse_index(spec, expected):
    assert parse_index(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("", "expected a spec"),
    ("annoy", "unknown kind 'annoy'"),
    ("ivfpq:k=3", "takes no parameter 'k'"),
    ("ivfpq:m=0", "m must be a positive integer"),
    ("ivfpq:m=x", "m must be a positive integer"),
    ("ivfpq:nbits=20", "nbits must be in 1..16"),
    ("exact:m=4", "takes no parameter 'm'"),
    (None, "expected a spec"),
])
def test_bad_index_specs_are_named(spec, message):
    with pytest.raises(ScaleError, match=message):
        parse_index(spec)


@pytest.mark.parametrize("args, kwargs, message", [
    ((0, 64, "exact", 1, 1), {}, "images"),
    ((float("nan"), 64, "exact", 1, 1), {}, "images"),
    ((1e9, 0, "exact", 1, 1), {}, "dim"),
    ((1e9, 64, "exact", -5, 1), {}, "qps"),
    ((1e9, 64, "exact", 1, 0), {}, "ram_gb"),
    ((1e9, 64, "exact", 1, 1), {"cores": 0}, "cores"),
    ((1e9, 64, "exact", 1, 1), {"utilisation": 1.5}, "utilisation"),
    ((1e9, 64, "exact", 1, 1), {"bogus": 3}, "unknown option"),
    ((1e9, 64, "scann", 1, 1), {}, "no measurement of 'scann'"),
    ((1e9, 100, "ivfpq:m=16", 1, 1), {}, "must divide dim=100"),
    ((1e9, 64, "ivfpq:m=128", 1, 1), {}, "must divide dim=64"),
    ((1e6, 64, "exact", 1, 512), {"latency_ms": 1e-6}, "less than one vector a shard"),
])
def test_bad_plan_parameters_are_named(args, kwargs, message):
    with pytest.raises(ScaleError, match=message):
        plan(*args, measurements=measured(), **kwargs)


def test_measurements_that_are_not_the_planners_are_refused():
    with pytest.raises(ScaleError, match="measurements: expected"):
        plan(1e9, 64, "exact", 1, 1, measurements={"indexes": {}})


def test_a_shard_smaller_than_the_measured_range_is_flagged_too():
    text = format_plan(plan(1000, 64, "exact", 1, 512, measurements=measured()))
    assert "EXTRAPOLATED 10x below the smallest N measured" in text


def test_a_latency_budget_no_shard_size_meets_is_refused():
    m = measured()
    m["indexes"]["hnsw"]["latency_exponent"] = 0.0
    with pytest.raises(ScaleError, match="raise latency_ms"):
        plan(1e9, 64, "hnsw", 1, 512, measurements=m, latency_ms=0.1)


def test_missing_or_broken_measurements_say_how_to_make_them(tmp_path):
    with pytest.raises(ScaleError, match="bench scale"):
        load_measurements(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ScaleError, match="cannot read"):
        load_measurements(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"growth": {}}))
    with pytest.raises(ScaleError, match="lack"):
        load_measurements(tmp_path / "partial.json")


def test_the_committed_measurements_feed_the_planner():
    """The planner's inputs are the committed benchmark's numbers, never typed-in constants."""
    m = load_measurements()
    result = json.loads((capacity.config.REPO_ROOT / "results" / "bench_scale.json").read_text())
    assert set(m["indexes"]) == set(capacity.KINDS)
    for kind, entry in m["indexes"].items():
        rows = [r for r in result["growth"]["rows"] if r["key"] == kind]
        ref = max(rows, key=lambda r: r["n"])
        assert entry["bytes_per_vector"] == ref["bytes_per_vector"] and entry["qps"] == ref["qps"]
        assert entry["qps_exponent"] == result["growth"]["fits"][kind]["qps"]["exponent"]
    assert m["embed_images_per_s_per_core"] == result["embedding"]["images_per_s_per_core"]
    r = plan(200e9, 64, "ivfpq:m=16", 20_000, 256)
    assert r["index_bytes"] == pytest.approx(200e9 * r["bytes_per_vector"])
    assert r["machines"] == r["shards"] * r["replicas"] >= 2


def test_the_command_line_prints_the_table_and_writes_json(tmp_path, capsys):
    source = tmp_path / "m.json"
    source.write_text(json.dumps(_as_bench_json(measured())))
    out = tmp_path / "plan.json"
    status = main(["plan", "--images", "200e9", "--dim", "64", "--index", "ivfpq:m=16", "--qps", "20000", "--ram-gb", "256",
                   "--results", str(source), "--json", str(out), "--cores", "32"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "machines" in printed and "10,240" in printed
    saved = json.loads(out.read_text())
    assert saved["machines"] == 10_240 and saved["shards"] == 320 and saved["replicas"] == 32


def test_the_command_line_reports_bad_input_in_one_line(capsys, tmp_path):
    source = tmp_path / "m.json"
    source.write_text(json.dumps(_as_bench_json(measured())))
    status = main(["plan", "--images", "-1", "--dim", "64", "--index", "ivfpq", "--qps", "1", "--ram-gb", "1", "--results", str(source)])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: images must be")


def _as_bench_json(m):
    """The hand-worked measurements written in ``bench scale``'s layout, as the CLI reads them."""
    rows, fits = [], {}
    for kind, e in m["indexes"].items():
        rows.append({"key": kind, "n": e["n_ref"], "bytes_per_vector": e["bytes_per_vector"], "qps": e["qps"],
                     "latency_ms": e["latency_ms"], "recall@10": e["recall@10"]})
        fits[kind] = {"qps": {"exponent": e["qps_exponent"], "n_min": e["fit_range"][0], "n_max": e["fit_range"][1]},
                      "latency_ms": {"exponent": e["latency_exponent"]}}
    structure = {k: e["params"] for k, e in m["indexes"].items()}
    return {"growth": {"dim": 64, "rows": rows, "fits": fits, "structure": structure},
            "embedding": {"images_per_s_per_core": m["embed_images_per_s_per_core"], "source": "hand-worked"}}
