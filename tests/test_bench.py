"""The baseline benchmark runs end to end (fast mode) and writes its JSON and figure."""

from __future__ import annotations

import json

from visual_search import bench, config


def test_baseline_bench_writes_json_and_figure_and_beats_chance(tmp_path):
    out = bench.baseline(seed=0)
    path = config.REPO_ROOT / "build" / "results-fast" / "bench_baseline.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(out))
    assert (config.REPO_ROOT / out["figure"]).resolve() == (config.figures_dir() / "bench_baseline.png").resolve()
    assert (config.figures_dir() / "bench_baseline.png").stat().st_size > 10_000
    assert out["queries"] == 100 and out["fast_mode"] is True
    rand, raw, ideal = (out["metrics"][m] for m in ("random", "raw pixels", bench.ORACLE))
    for metric in ("MRR", "P@10", "mAP@100", "nDCG@10"):
        assert 0 <= rand[metric] < raw[metric] < ideal[metric] <= 1, metric


def test_encoder_bench_runs_every_row_in_fast_mode():
    out = bench.encoders(seed=0)
    path = config.REPO_ROOT / "build" / "results-fast" / "bench_encoders.json"
    assert json.loads(path.read_text())["metrics"].keys() == out["metrics"].keys()
    rows = out["metrics"]
    assert list(rows) == ["raw pixels", "random-init CNN", "SimCLR CNN (committed)", "SimCLR CNN, embedding layer", "SimCLR CNN, head", "SimCLR CNN + clicks", "supervised CNN (ceiling)"]
    for row in rows.values():
        assert all(0 <= row[m] <= 1 for m in ("P@1", "P@10", "MRR", "mAP@100", "graded mAP@100", "graded nDCG@10")) and row["images/s"] > 0
    assert rows["SimCLR CNN (committed)"]["P@1"] > rows["random-init CNN"]["P@1"]
    assert 0.5 < out["click_log"]["click_precision"] <= 1


def test_ann_bench_runs_every_method_and_writes_json_and_figures():
    from visual_search import bench_ann

    out = bench.ann(seed=0)
    path = config.REPO_ROOT / "build" / "results-fast" / "bench_ann.json"
    assert json.loads(path.read_text())["targets"] == json.loads(json.dumps(out["targets"]))
    assert out["fast_mode"] is True and out["command"].endswith("--fast")
    for name, figure in out["figures"].items():
        assert (config.REPO_ROOT / figure).stat().st_size > 10_000, name
    for dataset, rows in out["results"].items():
        dim = out["datasets"][dataset]["dim"]
        expected = {m.name for m in bench_ann.methods_for(dim, out["datasets"][dataset]["n_base"], fast=True)}
        assert {r["method"] for r in rows} == expected, dataset
        for r in rows:
            assert 0 <= r["recall@10"] <= 1 and r["qps"] > 0 and r["build_s"] >= 0 and r["bytes_per_vector"] > 0
            if r["kind"] in ("exact", "kdtree", "sklearn-kdtree", "sklearn-balltree") or r["params"].get("factory") == "Flat":
                assert r["recall@10"] == 1.0, r["method"]
        ivf = [r["recall@10"] for r in rows if r["kind"] == "ivf"]
        assert ivf == sorted(ivf), "IVF recall must not fall as nprobe grows"
        pq = next(r for r in rows if r["kind"] == "pq")
        assert pq["bytes_per_vector"] < 0.1 * 4 * dim  # PQ compresses
    assert [r["dim"] for r in out["kdtree_dimensions"]["rows"]] == [2, 4, 8, 16, 32, 64]
    assert out["near_duplicates"]["thresholds"]["0.8"]["original_found"] > 0.5


def test_bench_cli_fast_flag_and_unknown_names(monkeypatch, capsys):
    import pytest

    with pytest.raises(SystemExit):
        bench.main(["nonsense"])
    assert "unknown benchmark" in capsys.readouterr().err
