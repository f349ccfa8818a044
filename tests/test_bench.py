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
