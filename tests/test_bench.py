"""Every benchmark runs end to end in fast mode and writes its JSON and figures; the CLI keeps its contract.

Fast mode runs the same code as a full run on less data (each bench module's
``sizes``), so these smoke tests take seconds. Output goes to a temporary folder.
"""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from visual_search import bench, config
from visual_search.evalset import ORACLE
from visual_search.timing import limit_threads


@pytest.fixture(autouse=True)
def _one_thread():
    """Run each benchmark on one thread: on a shared 2-core machine (other tests, xdist workers) torch's
    multi-threaded small batches are several times slower than one thread. The test checks the code, not the speed."""
    with limit_threads(1):
        yield


@pytest.fixture
def out_dirs(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """Results and figures in tmp_path: a test never writes into the repository."""
    results, figures = tmp_path / "results", tmp_path / "figures"
    monkeypatch.setenv("VISUAL_SEARCH_RESULTS", str(results))
    monkeypatch.setenv("VISUAL_SEARCH_FIGURES", str(figures))
    return results, figures


def _figure(out_figure: str) -> Path:
    return (config.REPO_ROOT / out_figure).resolve()


def _check_outputs(out: dict, results: Path, figures: Path, name: str) -> None:
    """The benchmark wrote what it returned as JSON, and its figure (or each of its ``figures``), into the test's folders."""
    assert json.loads((results / f"{name}.json").read_text()) == json.loads(json.dumps(out))
    if "figures" in out:  # several, each ``<name>_<what>.png``
        for what, figure in out["figures"].items():
            assert _figure(figure) == (figures / f"{name}_{what}.png").resolve(), what
            assert _figure(figure).stat().st_size > 10_000, what
        return
    assert _figure(out["figure"]) == (figures / f"{name}.png").resolve()
    assert (figures / f"{name}.png").stat().st_size > 10_000


def test_baseline_bench_writes_json_and_figure_and_beats_chance(out_dirs):
    results, figures = out_dirs
    out = bench.baseline.run(seed=0)
    _check_outputs(out, results, figures, "bench_baseline")
    assert out["queries"] == bench.baseline.FAST_QUERIES and out["fast_mode"] is True
    rand, raw, ideal = (out["metrics"][m] for m in ("random", "raw pixels", ORACLE))
    for metric in ("MRR", "P@10", "mAP@100", "nDCG@10"):
        assert 0 <= rand[metric] < raw[metric] < ideal[metric] <= 1, metric


def test_encoder_bench_runs_every_row_in_fast_mode(out_dirs):
    results, figures = out_dirs
    out = bench.encoders.run(seed=0)
    _check_outputs(out, results, figures, "bench_encoders")
    rows = out["metrics"]
    assert list(rows) == list(bench.encoders.ROWS) and len(rows) == 10
    for row in rows.values():
        assert all(0 <= row[m] <= 1 for m in ("P@1", "P@10", "MRR", "mAP@100", "linear probe", "graded mAP@100", "graded nDCG@10")) and row["images/s"] > 0
    assert rows["self-supervised CNN (committed)"]["P@1"] > rows["random-init CNN"]["P@1"]
    assert rows["self-supervised CNN (committed)"]["linear probe"] > 0.5  # ten classes: chance is 0.1
    assert [h["epoch"] for h in out["supervised_history"]] == [1] and 0 < out["supervised_history"][0]["knn_p_at_1"] <= 1
    assert out["vit"]["config"]["encoder"] == "vit" and len(out["vit"]["history"]) == 1
    assert out["targets"]["best_self_supervised"] in bench.encoders.SELF_SUPERVISED
    assert out["committed_model"]["version"].startswith("cnn-")
    assert 0.5 < out["click_log"]["click_precision"] <= 1
    assert out["fast_mode"] is True and out["setting"].startswith("100 queries vs 500 gallery images")


def test_ablation_bench_trains_each_fast_row_from_the_base_recipe(out_dirs):
    results, figures = out_dirs
    out = bench.ablations.run(seed=0)
    _check_outputs(out, results, figures, "bench_ablations")
    rows = {r["name"]: r for r in out["rows"]}
    assert list(rows) == list(bench.ablations.FAST_ROWS) and out["fast_mode"] is True
    base = rows["base recipe"]
    assert base["delta P@1"] == 0 and base["encoder_args"] == json.loads(json.dumps(out["base"]["encoder_args"]))
    for row in rows.values():
        assert all(0 <= row[f"P@1 {layer}"] <= 1 for layer in ("pooled", "embedding", "head")) and row["train_seconds"] > 0
        assert row["delta P@1"] == pytest.approx(row["P@1"] - base["P@1"])
    assert rows["width 24"]["encoder_args"]["width"] == 24 and rows["width 24"]["encoder_args"]["conv_layers"] == base["encoder_args"]["conv_layers"]
    assert rows["crop 0.8-1"]["augment_args"]["crop_scale"] == [0.8, 1.0] and rows["crop 0.8-1"]["augment_args"]["max_rotation"] == base["augment_args"]["max_rotation"]
    assert rows["NNCLR"]["method"] == "nnclr" and rows["MoCo v2, equal time"]["method"] == "moco"
    assert "a step costs" in rows["MoCo v2, equal time"]["note"]
    assert out["best"]["P@1"] == max(r["P@1"] for r in rows.values())


def test_nnclr_search_through_the_course_index_equals_the_default_scan():
    from visual_search.train import nearest_in_support

    rng = np.random.default_rng(0)
    support = rng.standard_normal((300, 16)).astype(np.float32)
    support /= np.linalg.norm(support, axis=1, keepdims=True)
    queries = support[rng.integers(0, 300, 40)] + 0.05 * rng.standard_normal((40, 16)).astype(np.float32)
    np.testing.assert_array_equal(bench.ablations.exact_index_search(queries, support), nearest_in_support(queries, support))


def test_ann_bench_runs_every_method_and_writes_json_and_figures(out_dirs):
    results, figures = out_dirs
    out = bench.ann.run(seed=0)
    assert json.loads((results / "bench_ann.json").read_text()) == json.loads(json.dumps(out))
    assert out["fast_mode"] is True and out["command"].endswith("--fast")
    assert set(out["figures"]) == {"pareto", "memory", "kdtree_dimensions"}
    for name, figure in out["figures"].items():
        assert _figure(figure).parent == figures.resolve() and _figure(figure).stat().st_size > 10_000, name
    for dataset, rows in out["results"].items():
        dim = out["datasets"][dataset]["dim"]
        expected = {m.name for m in bench.ann.methods_for(dim, out["datasets"][dataset]["n_base"], fast=True)}
        assert {r["method"] for r in rows} == expected, dataset
        for r in rows:
            assert 0 <= r["recall@10"] <= 1 and r["qps"] > 0 and r["build_s"] >= 0 and r["bytes_per_vector"] > 0
            if r["kind"] in ("exact", "kdtree", "sklearn-kdtree", "sklearn-balltree") or r["params"].get("factory") == "Flat":
                assert r["recall@10"] == 1.0, r["method"]
        ivf = [r["recall@10"] for r in rows if r["kind"] == "ivf"]
        assert len(ivf) > 1 and ivf == sorted(ivf), "IVF recall must not fall as nprobe grows"
        pq = next(r for r in rows if r["kind"] == "pq")
        assert pq["bytes_per_vector"] < 0.1 * 4 * dim  # PQ compresses
        lsh = [r for r in rows if r["kind"] == "lsh"]
        assert all(r["stats"]["candidates_per_query"] >= r["stats"]["reranked_per_query"] > 0 for r in lsh)  # stats= reached the rows
    dims = out["kdtree_dimensions"]["rows"]
    assert [r["dim"] for r in dims] == [2, 4, 8, 16, 32, 64]
    assert all(1 <= r["leaves_visited"] <= r["leaves"] for r in dims)
    assert out["near_duplicates"]["thresholds"]["0.8"]["original_found"] > 0.5


def test_serve_bench_runs_every_section_against_a_live_server(out_dirs):
    """Fast mode: the sample gallery, a real server subprocess on 127.0.0.1, every section end to end."""
    results, figures = out_dirs
    out = bench.serve.run(seed=0)
    _check_outputs(out, results, figures, "bench_serve")
    assert out["fast_mode"] is True and out["command"] == "python -m visual_search.bench serve --fast" and out["gallery_images"] == 2000
    assert set(out["figures"]) == {"index_choice", "latency", "stages"}
    choice = out["index_choice"]
    best = choice["best"]
    assert set(best) == {"kind", "params", "search"} and best["kind"] in ("exact", "faiss", "ivf")
    assert choice["best_row"]["recall@10"] >= 0.95 and choice["best_row"]["p50_ms"] == min(r["p50_ms"] for r in choice["rows"] if r["recall@10"] >= 0.95)
    assert next(r for r in choice["rows"] if r["kind"] == "exact")["recall@10"] == 1.0
    from visual_search.service import IndexSpec

    IndexSpec(**best)  # the pick is exactly what IndexSpec takes
    load = out["search_load"]
    assert load["starts"]["first"]["first_build"] is True and load["starts"]["second"]["first_build"] is False
    assert load["starts"]["second"]["startup"]["index_loaded"] is True
    assert load["errors"] == 0 and load["requests"] == load["clients"] * load["searches_per_client"] and load["qps"] > 0
    assert set(load["server_timing_ms"]) >= {"embed", "search", "rerank"} and load["single_client"]["errors"] == 0
    mixed = out["mixed_load"]
    assert mixed["failed_requests"] == 0 and mixed["stale_reads"] == 0, mixed["failure_examples"]
    assert mixed["lost_uploads"] == 0 and mixed["resurrected_deletes"] == 0 and mixed["deletes_acknowledged"] > 0
    assert mixed["deleted_ids_shown_by_any_search"] > 0  # the stale-read check had something to catch
    assert mixed["uploads_visible_at_once"]["found"] == mixed["uploads_visible_at_once"]["probes"] == mixed["uploads_acknowledged"] > 0
    assert mixed["swap"]["succeeded"] and mixed["swap"]["model_version_changed"] and mixed["swap"]["old_version_after_swap"] == 0
    crash = out["crash"]
    assert crash["total_inconsistencies"] == 0 and crash["acknowledged"] > 0, crash["inconsistencies"]
    assert crash["restart"]["health_status"] == 200 and crash["restart"]["images_equal_indexed"]
    hostile = out["hostile_uploads"]
    assert hostile["all_4xx"] and hostile["health_ok_after"] and hostile["server_alive_after"], [c for c in hostile["cases"] if not c["is_4xx"]]
    assert hostile["all_name_problem"], [c for c in hostile["cases"] if not c["names_problem"]]


def test_online_bench_runs_every_step_on_the_real_service(out_dirs):
    """Fast mode: the sample gallery, six rankers served side by side, every step read back from the service's log."""
    from visual_search.online.study import N_RANKS, RANKERS

    results, figures = out_dirs
    out = bench.online.run(seed=0)
    _check_outputs(out, results, figures, "bench_online")
    assert out["fast_mode"] is True and set(out["figures"]) == {"position_bias", "power", "peeking", "offline_vs_online"}
    pb = out["position_bias"]
    assert len(pb["true"]) == len(pb["swap"]) == len(pb["em"]) == N_RANKS and pb["swap"][0] == pb["em"][0] == 1.0
    assert pb["swapped_impressions"] > 0 and pb["click_pairs"] > 0 and 1.0 <= pb["ips_weight_mean"] <= pb["ips_weight_max"] <= 10.0
    arms = out["ab"]["arms"]
    assert list(arms) == sorted(RANKERS) and all(arms[a]["queries"] > 0 for a in RANKERS) and 0 <= out["ab"]["srm_p"] <= 1
    assert set(out["offline_vs_online"]["nDCG@10"]) == set(RANKERS) and -1 <= out["offline_vs_online"]["kendall_tau"] <= 1
    sizes = out["sizes"]
    for row in out["power"].values():
        wins = row["interleaving"]
        assert sum(wins.values()) == sizes["interleaving_users"] * sizes["searches_per_user"]  # one outcome per query
        assert set(row["queries_analytic"]) == {"ab_per_user_ctr", "ab_per_user_click_rate", "interleaving"}
        assert sum(row["ab_users_per_arm"].values()) == 2 * sizes["power_users_per_arm"]
    # every search and click went through the service: its own counts hold them all
    sweep = out["power_by_searches_per_user"]["rows"]
    assert list(sweep) == [str(s) for s in bench.online.SEARCHES_SWEEP] and sweep[str(sizes["searches_per_user"])]["queries_analytic"] == out["power"][out["power_by_searches_per_user"]["pair"]]["queries_analytic"]

    def searches(row: dict, per_user: int) -> int:  # A/B users x their searches + interleaved queries
        return sum(row["ab_users_per_arm"].values()) * per_user + sum(row["interleaving"].values())

    expected = (sizes["position_users"] + sizes["ab_users_per_arm"] * len(RANKERS)
                + sum(searches(row, sizes["searches_per_user"]) for row in out["power"].values())
                + sum(searches(row, int(s)) for s, row in sweep.items() if int(s) != sizes["searches_per_user"]))
    assert out["service"]["searches"] == expected and out["service"]["clicks"] > 0
    assert 0.0 <= out["aa"]["per_user_fpr"] <= 0.1 and out["aa"]["per_impression_fpr"] > out["aa"]["per_user_fpr"]
    assert out["peeking"]["peeking_fpr"] > out["peeking"]["fixed_horizon_fpr"]


def test_scale_bench_measures_growth_embedding_and_shards_on_a_real_ray(out_dirs, ray_local):
    """Fast mode: small N, the sample, a local Ray (the test session's); the planner reads what the run wrote."""
    from visual_search.scale import capacity

    results, figures = out_dirs
    out = bench.scale.run(seed=0)
    _check_outputs(out, results, figures, "bench_scale")
    assert set(out["figures"]) == {"growth", "embedding", "shards"}
    sizes = out["sizes"]
    keys = {r["key"] for r in out["growth"]["rows"]}
    assert keys == set(capacity.KINDS) and len(out["growth"]["rows"]) == len(keys) * len(sizes["growth"])
    assert all(r["recall@10"] > 0 and r["qps"] > 0 and r["bytes_per_vector"] > 0 for r in out["growth"]["rows"])
    t = out["targets"]
    assert t["sharded_exact_equals_unsharded"] == 1.0 and t["ivf_sharded_recall_gap"] <= 0.005
    assert t["killed_worker_rows_lost"] == 0 and t["killed_worker_rows_duplicated"] == 0
    assert t["killed_shard_partial"] and t["killed_shard_within_deadline"]
    kill = out["shards"]["killed_shard"]
    assert not kill["before"]["partial"] and kill["before"]["equal_to_unsharded"] == 1.0
    assert kill["killed"] in kill["during"]["missing_shards"] and kill["after"]["equal_to_unsharded"] == 1.0
    assert [r["n_shards"] for r in out["shards"]["rows"]["exact"]] == sizes["shards"]
    # the plans come from this run's measurements, not typed-in constants
    m = capacity.load_measurements(results / "bench_scale.json")
    assert out["plans"][-1]["machines"] == capacity.plan(*bench.scale.PLANS[-1], measurements=m)["machines"]
    assert ray_local.is_initialized()  # the benchmark left the session's Ray running


def test_bench_cli_fast_flag_turns_on_fast_mode(out_dirs, monkeypatch):
    """``python -m visual_search.bench baseline --fast --seed 3`` from a shell where fast mode is off."""
    results, _ = out_dirs
    monkeypatch.delenv("VISUAL_SEARCH_FAST")  # restored after the test, whatever the CLI sets
    assert not config.is_fast()
    monkeypatch.setattr(sys, "argv", ["python -m visual_search.bench", "baseline", "--fast", "--seed", "3"])
    runpy.run_module("visual_search.bench", run_name="__main__")  # the package's __main__, as `python -m` runs it
    assert config.is_fast()
    out = json.loads((results / "bench_baseline.json").read_text())
    assert out["fast_mode"] is True and out["seed"] == 3
    assert out["queries"] == bench.baseline.FAST_QUERIES  # not the full 500: the flag took effect


def test_bench_cli_refuses_unknown_names_before_running_anything(out_dirs, monkeypatch, capsys):
    results, _ = out_dirs
    monkeypatch.delenv("VISUAL_SEARCH_FAST")
    with pytest.raises(SystemExit):
        bench.main(["baseline", "nonsense", "--fast"])
    assert "unknown benchmark" in capsys.readouterr().err
    assert not results.exists() and not config.is_fast()
    assert list(bench.BENCHMARKS) == ["baseline", "ablations", "encoders", "ann", "serve", "online", "scale"]


def test_nothing_imports_bench():
    """``bench`` sits on top: no library module outside it, and no notebook, may import it."""
    # `from visual_search.bench[...] import`, `from visual_search import (..., )bench`, `import visual_search.bench`
    # (and the old bench_ann module)
    pattern = re.compile(r"^\s*(from\s+visual_search(\.bench(_ann)?\b|\s+import\s+.*\bbench(_ann)?\b)|import\s+visual_search\.bench(_ann)?\b)", re.M)
    lib = config.REPO_ROOT / "lib" / "visual_search"
    offenders = [str(p.relative_to(lib)) for p in lib.rglob("*.py") if "bench" not in p.relative_to(lib).parts and pattern.search(p.read_text())]
    for nb in sorted((config.REPO_ROOT / "notebooks").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        if pattern.search(code):
            offenders.append(nb.name)
    assert not offenders, offenders
