"""The baseline benchmark runs end to end (fast mode) and writes its JSON."""

from __future__ import annotations

import json

from visual_search import bench, config


def test_baseline_bench_writes_json_and_beats_chance():
    out = bench.baseline(seed=0)
    path = config.REPO_ROOT / "build" / "results-fast" / "bench_baseline.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(out))
    assert out["queries"] == 100 and out["fast_mode"] is True
    methods = out["methods"]
    rand, raw, ideal = (methods[m]["metrics"] for m in ("random", "raw pixels (cosine)", "ideal (oracle)"))
    for metric in ("MRR", "P@10", "mAP@100", "nDCG@10"):
        assert 0 <= rand[metric] < raw[metric] < ideal[metric] <= 1, metric
