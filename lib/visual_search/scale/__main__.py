"""``python -m visual_search.scale plan ...``: the capacity planner's command line.

    python -m visual_search.scale plan --images 200e9 --dim 64 --index ivfpq:m=16 --qps 20000 --ram-gb 256
    python -m visual_search.scale plan --images 100e9 --dim 128 --index hnsw --qps 50000 --ram-gb 512 --cores 64 --json plan.json

Every assumption of ``visual_search.scale.capacity.ASSUMPTIONS`` is an option
(``--latency-ms 20``, ``--core-hour-usd 0.03``, ...); the measured inputs come
from ``results/bench_scale.json`` (``--results`` reads another file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visual_search.errors import VisualSearchError
from visual_search.scale.capacity import ASSUMPTIONS, format_plan, plan, to_json


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m visual_search.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("plan", help="shards, replicas, machines, storage and cost for a gallery")
    p.add_argument("--images", type=float, required=True, help="gallery size, e.g. 200e9")
    p.add_argument("--dim", type=int, required=True, help="embedding dimension")
    p.add_argument("--index", required=True, help="exact | ivf | ivfpq:m=16[,nbits=8] | hnsw[:M=32] | scann")
    p.add_argument("--qps", type=float, required=True, help="peak queries per second")
    p.add_argument("--ram-gb", type=float, required=True, help="RAM of one machine, GiB")
    for name, (default, unit, why) in ASSUMPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, help=f"{unit}: {why} (default {default:g})")
    p.add_argument("--results", type=Path, default=None, help="the measurements (default results/bench_scale.json)")
    p.add_argument("--json", type=Path, default=None, help="also write the plan as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 with a one-line message for bad input)."""
    args = _parser().parse_args(argv)
    options = {name: getattr(args, name) for name in ASSUMPTIONS if getattr(args, name) is not None}
    for name in ("cores", "min_replicas", "storage_copies"):
        if name in options and float(options[name]).is_integer():
            options[name] = int(options[name])
    try:
        result = plan(args.images, args.dim, args.index, args.qps, args.ram_gb, measurements=args.results, **options)
    except VisualSearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_plan(result))
    if args.json is not None:
        args.json.write_text(to_json(result))
        print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
