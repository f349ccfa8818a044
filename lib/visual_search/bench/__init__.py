"""Benchmarks that write JSON to the results folder and figures to the figures folder.

    python -m visual_search.bench                  # every benchmark (what `make bench` runs)
    python -m visual_search.bench encoders         # one of them (or several: NAME ...)
    python -m visual_search.bench ann --fast       # small data, few steps (what CI runs)
    python -m visual_search.bench --seed 1

``baseline`` (``bench.baseline``): the raw-pixel baseline between a random
ranking (the floor) and the ideal ranking (each metric's ceiling) on the graded
evaluation set, measured side by side in one run: every offline metric, and
nDCG@k for k from 1 to 100.

``encoders`` (``bench.encoders``): raw pixels, a random CNN, the committed
SimCLR CNN, that CNN fine-tuned on simulated clicks, and a supervised CNN (the
ceiling): retrieval on 10,000 test queries against the 60,000 train images, the
graded set, and embedding throughput, all in one run.

``ann`` (``bench.ann``): nearest-neighbour indexes (exact, KD-tree, LSH, IVF, PQ,
IVF-PQ, and Faiss, Annoy and scikit-learn): recall@10, queries/s, build time and
memory per method and sweep point.

``serve`` (``bench.serve``): the serving system of chapter 09 through its HTTP
API on 127.0.0.1: which index the service should use (one-query latency on one
thread and recall@10 of the kinds that support uploads and deletes), search
load from 8 concurrent clients (QPS, p50/p95/p99, time per stage, server
memory, first and later start-up), a mixed load of searches, uploads, deletes
and a model swap (failed requests, stale reads), a SIGKILL during uploads
(consistency after restart), and hostile uploads (each a 4xx that names the
problem). Full mode serves the 70k gallery, fast mode the 2,000-image sample.

``online`` (``bench.online``): chapter 08 on simulated users of the real service,
every ranker served side by side: the examination curve from RandPair swaps and
EM against the truth, SimCLR fine-tuned on clicks with and without inverse-
propensity weights, a six-arm A/B test, offline nDCG@10 against online CTR,
interleaving against A/B in queries to 80% power, and A/A and peeking
false-positive rates.

``scale`` (``bench.scale``): chapter 10, the capacity planner's inputs: growth
curves (build time, memory, QPS at recall 0.9 against N up to 1M for exact, IVF,
IVF-PQ, HNSW and ScaNN, with the fitted exponent), the Ray embedding job with 1
and 2 workers and with a killed worker, sharded search latency against S with a
killed shard, and the capacity plans for 100 and 200 billion images.

Output: ``config.results_dir()`` (``results/``; fast mode ``build/results-fast/``;
``VISUAL_SEARCH_RESULTS`` overrides) gets ``bench_<name>.json``, and
``config.figures_dir()`` the figures, so a fast run never overwrites committed
results. ``--fast`` is the same as ``VISUAL_SEARCH_FAST=1``: the same code on
smaller data (each module's docstring lists its sizes).

This package sits on top of the library, like the notebooks: it may import
anything, and nothing imports it. What the benchmarks measure with lives below
(``evalset`` for the reference rankings and scores, ``index.measure`` for the ANN
harness, ``timing``, ``viz``), so notebooks call the same functions directly.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from visual_search.bench import ablations, ann, baseline, encoders, online, scale, serve

#: ``name -> run(seed=0) -> dict``: what ``main`` can run, in the default order.
BENCHMARKS: dict[str, Callable[..., dict]] = {"baseline": baseline.run, "ablations": ablations.run, "encoders": encoders.run, "ann": ann.run, "serve": serve.run, "online": online.run, "scale": scale.run}


def main(argv: list[str] | None = None) -> None:
    """The command line: ``python -m visual_search.bench [NAME ...] [--fast] [--seed N]``."""
    parser = argparse.ArgumentParser(prog="python -m visual_search.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", help=f"benchmarks to run, from {list(BENCHMARKS)} (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="small data and few steps (what CI runs); outputs go to build/")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.which) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if args.fast:
        os.environ["VISUAL_SEARCH_FAST"] = "1"
    for name in args.which or BENCHMARKS:
        BENCHMARKS[name](seed=args.seed)


__all__ = ["BENCHMARKS", "ablations", "ann", "baseline", "encoders", "main", "online", "scale", "serve"]
