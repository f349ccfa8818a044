"""Scaling to 100-200 billion images: a measured capacity plan, distributed embedding and sharded search on Ray.

    from visual_search.scale import plan, ShardedIndex
    plan(200e9, dim=64, index="ivfpq:m=16", qps=20_000, ram_gb=256)    # shards, replicas, machines, ...
    index = ShardedIndex("ivf", 64, n_shards=4, backend="ray", nlist=256)  # the index interface, fanned out

    python -m visual_search.scale plan --images 200e9 --dim 64 --index ivfpq:m=16 --qps 20000 --ram-gb 256

The package, by job:

    capacity     plan(): index memory, shards, replicas, machines, storage, embedding compute, daily cost,
                 from the measured results/*.json (never typed-in constants)
    growth       build time, memory and QPS against N, and the fitted QPS-vs-N exponent the planner uses
    ray_runtime  start a local Ray, or join a cluster with address=...
    ray_embed    the distributed embedding job on Ray Data: Parquet in, Parquet shards of embeddings out
    sharded      ShardedIndex: S shards (in-process, or one Ray actor each), exact top-k merge, deadlines

Ray is imported only by the parts that need it, when they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it (imported on first use, so the planner never pays for Ray or torch)
_EXPORTS = {
    "plan": "capacity",
    "format_plan": "capacity",
    "load_measurements": "capacity",
    "ShardedIndex": "sharded",
    "shard_of": "sharded",
    "run_embedding_job": "ray_embed",
    "write_image_shards": "ray_embed",
    "read_embeddings": "ray_embed",
    "measure_throughput": "ray_embed",
    "killed_worker_run": "ray_embed",
    "measure_shard_latency": "sharded",
    "measure_growth": "growth",
    "fit_exponent": "growth",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"visual_search.scale.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'visual_search.scale' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
