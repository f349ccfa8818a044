"""``bench scale``: chapter 10's measurements, the inputs of the capacity planner.

    python -m visual_search.bench scale          # full: growth to 1M vectors, 100k-vector shards, 60k-image embedding job
    python -m visual_search.bench scale --fast   # small N, the committed sample, local Ray with 2 workers (CI)

1. **Growth curves** (``scale.growth``): build time, bytes per vector and queries/s
   at recall@10 >= 0.9 of exact (Faiss Flat), IVF, IVF-PQ16, HNSW32 and ScaNN at
   N = 10k, 100k and 1M real-like 64-d vectors (the committed encoder on augmented
   copies of the 70k images), on one thread; the fitted exponent of QPS against N.
2. **Distributed embedding** (``scale.ray_embed``) on a local Ray: images/s with 1
   and 2 workers on the same Parquet input, the single-process ``embed`` beside it,
   and a run with a worker killed mid-job (rows lost, rows duplicated).
3. **Sharded search** (``scale.sharded``, Ray backend): one-query latency (p50,
   p95) and batched QPS against S = 1, 2, 4, 8 for exact and IVF shards, with the
   fraction of queries whose merged ids equal the unsharded index's; a killed shard
   (answer time against its deadline, marked partial, then Ray's restart and reload).
4. **Capacity plans** (``scale.capacity.plan``) for 100 and 200 billion images,
   computed from the numbers this run just wrote, never from typed-in constants.

Sizes: ``sizes``. Writes ``bench_scale.json`` and ``bench_scale_{growth,embedding,shards}.png``.
Everything runs in one process, one step after another, so the ratios compare numbers
measured side by side; Ray is started here and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib.pyplot as plt
import numpy as np

from visual_search import config
from visual_search.bench._common import machine, relative, write_result
from visual_search.timing import timed
from visual_search.viz import save_figure

#: The plans README shows: (images, dim, index, qps, ram_gb).
PLANS = [(100e9, 64, "ivfpq:m=16", 20_000, 256), (200e9, 64, "ivfpq:m=16", 20_000, 256)]
#: Queries searched at once in the killed-shard step.
KILL_QUERIES = 20
#: Every kind at 200B, for the comparison table.
KIND_SPECS = ("exact", "ivf", "ivfpq:m=16", "hnsw", "scann")


def sizes(fast: bool) -> dict:
    """How much data each step uses (fast mode: the same code on less)."""
    if fast:
        return {"growth": (2_000, 5_000, 10_000), "growth_queries": 200, "embed_images": 2_000, "killed_images": 2_000, "shard_n": 5_000,
                "shard_queries": 100, "shard_single": 30, "shards": (1, 2, 4), "deadline_s": 1.0}
    return {"growth": (10_000, 100_000, 1_000_000), "growth_queries": 1_000, "embed_images": 60_000, "killed_images": 20_000, "shard_n": 100_000,
            "shard_queries": 1_000, "shard_single": 200, "shards": (1, 2, 4, 8), "deadline_s": 0.5}


@contextmanager
def _timed(timings: dict, name: str) -> Iterator[None]:
    with timed(name) as timer:
        yield
    timings[name] = timer.seconds


def killed_shard(x: np.ndarray, q: np.ndarray, deadline_s: float, n_shards: int = 4) -> dict:
    """Kill one shard's actor and search at once: the answer time against the deadline, and the recovery.

    ``before`` (all shards up, after a warm-up) must be complete and equal to the unsharded
    index; ``during`` (right after the kill) partial, within the deadline, with the killed shard
    missing; ``after`` (once Ray restarted the actor and it reloaded its file) complete again.
    """
    from visual_search.index import build_index
    from visual_search.scale.sharded import ShardedIndex

    q = q[:KILL_QUERIES]  # a page's worth of queries: their search fits the deadline with every shard up
    reference = build_index("exact", x.shape[1]).add(x).search(q, 10)[1]
    with ShardedIndex("exact", x.shape[1], n_shards, backend="ray") as index:
        index.add(x)
        index.search(q, 10)  # warm-up, no deadline: an actor's first search pays for its imports
        before = index.search_with_info(q, 10, deadline_s=deadline_s)
        victim = 1 % n_shards
        index.kill_shard(victim, reload_delay_s=3 * deadline_s)  # a large shard's slow reload: the outage is seen
        during = index.search_with_info(q, 10, deadline_s=deadline_s)
        recovered_s = index.wait_until_complete(timeout_s=60)
        after = index.search_with_info(q, 10, deadline_s=None)
    return {
        "n_shards": n_shards, "killed": victim, "deadline_ms": 1000 * deadline_s,
        "before": {"partial": before.partial, "elapsed_ms": before.elapsed_ms, "equal_to_unsharded": float(np.mean(np.all(before.I == reference, axis=1)))},
        "during": {"partial": during.partial, "missing_shards": during.missing_shards, "elapsed_ms": during.elapsed_ms,
                   "within_deadline": during.elapsed_ms <= 1000 * deadline_s * 1.05 + 20},
        "restart_and_reload_s": recovered_s, "reload_hold_s": 3 * deadline_s,
        "after": {"partial": after.partial, "equal_to_unsharded": float(np.mean(np.all(after.I == reference, axis=1)))},
    }


def ivf_recall(x: np.ndarray, q: np.ndarray, shard_counts, nlist: int, nprobe: int, k: int = 10) -> list[dict]:
    """Recall@k against exact search of the unsharded IVF index and of the same index in S shards (local backend)."""
    from visual_search.index import build_index
    from visual_search.index.measure import recall_at_k
    from visual_search.scale.sharded import ShardedIndex

    truth = build_index("exact", x.shape[1]).add(x).search(q, k)[1]
    single = recall_at_k(build_index("ivf", x.shape[1], nlist=nlist, nprobe=nprobe).train(x).add(x).search(q, k)[1], truth)
    rows = []
    for s in shard_counts:
        with ShardedIndex("ivf", x.shape[1], s, backend="local", nlist=nlist, nprobe=nprobe) as index:
            got = recall_at_k(index.train(x).add(x).search(q, k)[1], truth)
        rows.append({"n_shards": int(s), "recall@10": got, "unsharded_recall@10": single, "recall_gap": got - single})
    return rows


def run(seed: int = 0) -> dict:
    """Run the four steps (module docstring); write the JSON and the figures. Returns the JSON."""
    from visual_search import data
    from visual_search.scale import capacity, growth, ray_embed, ray_runtime, sharded
    from visual_search.scale.plots import plot_embedding_scaling, plot_growth, plot_shard_latency

    fast = config.is_fast()
    size = sizes(fast)
    timings: dict[str, float] = {}
    out: dict = {"benchmark": "scale", "command": "python -m visual_search.bench scale" + (" --fast" if fast else ""),
                 "fast_mode": fast, "seed": seed, "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()}}

    with _timed(timings, "growth vectors (embed augmented copies)"):
        base, queries = growth.growth_vectors(max(size["growth"]), size["growth_queries"], seed=seed, progress=not fast)
    with _timed(timings, "growth curves"):
        rows = growth.measure_growth(base, queries, size["growth"], progress=not fast)
    fitted = growth.fits(rows)
    out["growth"] = {"dim": int(base.shape[1]), "queries": len(queries), "recall_target": growth.RECALL_TARGET, "threads": 1,
                     "structure": {"ivfpq": {"m": 16, "nbits": 8}, "hnsw": {"M": 32}}, "rows": rows, "fits": fitted}

    work = config.REPO_ROOT / "build" / f"bench-scale-{'fast' if fast else 'full'}"
    shutil.rmtree(work, ignore_errors=True)
    owns_ray = not ray_runtime.ray_module().is_initialized()  # a caller's Ray (a test session's) is reused and left running
    ray_runtime.start(num_cpus=2)
    try:
        images = data.load_sample().gallery_images if fast else data.load_fashion_mnist("train")[0]
        images = images[: size["embed_images"]]
        with _timed(timings, "embedding job: 1 and 2 workers"):
            embed_rows = ray_embed.measure_throughput(images, worker_counts=(1, 2), work_dir=work / "embed")
        with _timed(timings, "embedding job with a killed worker"):
            killed = ray_embed.killed_worker_run(images[: size["killed_images"]], work_dir=work / "killed")
        by_workers = {r["num_workers"]: r for r in embed_rows if r["mode"] == "ray"}
        one, two = by_workers[1], by_workers[2]
        out["embedding"] = {
            "images": len(images), "rows": embed_rows,
            "speedup_2_over_1": two["images_per_s"] / one["images_per_s"],  # end to end, actor start-up included
            "processing_speedup_2_over_1": two["processing_images_per_s"] / one["processing_images_per_s"],  # first to last batch
            # A 200-billion-image job pays its start-up once: its rate is the steady state of one worker.
            "images_per_s_per_core": one["processing_images_per_s"],
            "source": "the Ray embedding job, one worker, first to last batch",
            "killed_worker": killed,
        }

        x, q = base[: size["shard_n"]], queries[: size["shard_queries"]]
        nlist, nprobe = (64, 8) if fast else (256, 16)
        with _timed(timings, "sharded latency against S"):
            shard_rows = {
                "exact": sharded.measure_shard_latency(x, q, size["shards"], kind="exact", backend="ray", n_single=size["shard_single"]),
                "ivf": sharded.measure_shard_latency(x, q, size["shards"], kind="ivf", backend="ray", n_single=size["shard_single"],
                                                     nlist=nlist, nprobe=nprobe),
            }
        with _timed(timings, "sharded IVF recall"):
            recall_rows = ivf_recall(x, q, size["shards"], nlist, nprobe)
        with _timed(timings, "killed shard"):
            kill = killed_shard(x, q, size["deadline_s"])
        out["shards"] = {"n": len(x), "queries": len(q), "rows": shard_rows, "ivf": {"nlist": nlist, "nprobe": nprobe, "recall": recall_rows},
                         "killed_shard": kill}
    finally:
        if owns_ray:
            ray_runtime.stop()
        shutil.rmtree(work, ignore_errors=True)

    out["machine"] = machine(load_average=list(np.round(os.getloadavg(), 2)))
    out["timings_s"] = timings
    path = write_result("bench_scale", out)  # the planner reads the measurements from this file
    m = capacity.load_measurements(path)
    out["plans"] = [capacity.to_json_dict(capacity.plan(*p, measurements=m)) for p in PLANS]
    out["kinds_at_200B"] = {spec: capacity.to_json_dict(capacity.plan(200e9, 64, spec, 20_000, 256, measurements=m)) for spec in KIND_SPECS
                            if capacity.parse_index(spec)[0] in m["indexes"]}
    out["targets"] = {
        "sharded_exact_equals_unsharded": min(r["exact_match"] for r in shard_rows["exact"]),
        "sharded_ivf_equals_unsharded": min(r["exact_match"] for r in shard_rows["ivf"]),
        "ivf_sharded_recall_gap": max(abs(r["recall_gap"]) for r in recall_rows),
        "embedding_speedup_2_over_1": out["embedding"]["speedup_2_over_1"],
        "embedding_processing_speedup_2_over_1": out["embedding"]["processing_speedup_2_over_1"],
        "killed_worker_rows_lost": killed["lost"], "killed_worker_rows_duplicated": killed["duplicated"],
        "killed_shard_partial": kill["during"]["partial"], "killed_shard_within_deadline": kill["during"]["within_deadline"],
    }
    figures = {
        "growth": save_figure(plot_growth(rows, fitted), "bench_scale_growth"),
        "embedding": save_figure(plot_embedding_scaling([r for r in embed_rows if r["mode"] == "ray"]), "bench_scale_embedding"),
        "shards": save_figure(plot_shard_latency(shard_rows["exact"]), "bench_scale_shards"),
    }
    plt.close("all")
    out["figures"] = {name: relative(p) for name, p in figures.items()}
    write_result("bench_scale", out)
    print(capacity.format_plan(capacity.plan(*PLANS[-1], measurements=m)))
    print(f"wrote {relative(path)} in {sum(timings.values()) / 60:.1f} min; {time.strftime('%H:%M')}")
    return out
