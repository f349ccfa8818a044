"""The capacity planner: from measured bytes per vector and queries/s per core to shards, replicas, machines and cost.

    from visual_search.scale import plan, format_plan
    result = plan(200e9, dim=64, index="ivfpq:m=16", qps=20_000, ram_gb=256)
    print(format_plan(result))

    python -m visual_search.scale plan --images 200e9 --dim 64 --index ivfpq:m=16 --qps 20000 --ram-gb 256

What is measured and what is assumed. The two numbers that decide the plan, the
bytes one vector costs in each index and the queries/s one core gets from it,
are never typed in: ``load_measurements`` reads them from the growth curves in
``results/bench_scale.json`` (``python -m visual_search.bench scale``, one thread,
N = 10k to 1M real-like 64-d vectors), with the fitted exponent of queries/s
against N, and the embedding throughput per core from the Ray embedding job in
the same run. Everything else (cores and RAM per machine, the latency budget,
image size, prices, GPU speed) is an assumption, with a default, printed beside
the result it feeds, and changeable with an option.

The model, step by step (``plan``'s docstring has the formulas):

1. index memory = images x bytes per vector (measured at 64-d, scaled to ``dim``);
2. shards per replica: enough that each fits in a machine's RAM (with headroom),
   and small enough that one query on one core meets the latency budget;
3. replicas: every query visits one copy of every shard, so a replica serves what
   one shard machine serves; enough replicas for the target QPS at a safe
   utilisation, and at least ``min_replicas`` to survive a machine loss;
4. machines = shards x replicas (one shard a machine);
5. storage, embedding compute (CPU core-days, GPU-days) and the daily cost of
   embedding and indexing new uploads, plus serving.

The fit of queries/s against N is trustworthy only inside the range it was
measured in (10k to 1M vectors); a shard of a billion vectors is an
extrapolation over three orders of magnitude, and the table says so.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from visual_search import config
from visual_search._checks import check_int, check_real
from visual_search.errors import ScaleError

#: The index kinds the planner knows, their spec parameters and defaults.
KINDS: dict[str, dict[str, int]] = {"exact": {}, "ivf": {}, "ivfpq": {"m": 16, "nbits": 8}, "hnsw": {"M": 32}, "scann": {}}

#: Assumptions with their defaults: (value, unit, why). Each is an option of ``plan``.
ASSUMPTIONS: dict[str, tuple[float, str, str]] = {
    "cores": (32, "cores/machine", "a common cloud instance size"),
    "memory_fraction": (0.7, "of RAM", "the index may use; the rest is OS, query buffers and a rebuild's second copy"),
    "latency_ms": (50.0, "ms", "budget for one query on one core of one shard (the p50 of the shard stage)"),
    "utilisation": (0.5, "of CPU", "target load at peak QPS, leaving headroom for spikes and a lost replica"),
    "min_replicas": (2, "replicas", "at least two copies of every shard, so one machine can fail"),
    "image_kb": (200.0, "KB/image", "the stored upload (a JPEG of a few hundred pixels a side)"),
    "storage_copies": (3, "copies", "object-store replication of images and embeddings"),
    "uploads_per_day": (float("nan"), "images/day", "new uploads; default 0.5% of the gallery a day"),
    "core_hour_usd": (0.04, "USD/core-hour", "on-demand cloud CPU"),
    "gpu_hour_usd": (2.5, "USD/GPU-hour", "a data-centre GPU"),
    "gpu_images_per_s": (20_000.0, "images/s/GPU", "assumed, not measured (no GPU on the machines this course measures on)"),
}
GIB = 2**30
RECALL_NOTE = "0.9; IVF-PQ's codes stop below it, so its knee is used"
DEFAULT_RESULTS = Path("results") / "bench_scale.json"


def parse_index(spec: str) -> tuple[str, dict[str, int]]:
    """``"ivfpq:m=16,nbits=8"`` -> ``("ivfpq", {"m": 16, "nbits": 8})``, with the kind's defaults filled in.

    Raises:
        ScaleError: an unknown kind or parameter, or a value that is not a positive integer.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ScaleError(f"index: expected a spec such as 'ivfpq:m=16', got {spec!r}")
    kind, _, rest = spec.strip().partition(":")
    if kind not in KINDS:
        raise ScaleError(f"index {spec!r}: unknown kind {kind!r}; choose from {sorted(KINDS)}")
    params = dict(KINDS[kind])
    for item in filter(None, (p.strip() for p in rest.split(","))):
        name, eq, value = item.partition("=")
        if name not in KINDS[kind]:
            raise ScaleError(f"index {spec!r}: {kind!r} takes no parameter {name!r}; it takes {sorted(KINDS[kind]) or 'none'}")
        if not eq or not re.fullmatch(r"[1-9][0-9]{0,5}", value.strip()):
            raise ScaleError(f"index {spec!r}: {name} must be a positive integer, got {value!r}")
        params[name] = int(value)
    if kind == "ivfpq" and not 1 <= params["nbits"] <= 16:
        raise ScaleError(f"index {spec!r}: nbits must be in 1..16, got {params['nbits']}")
    return kind, params


def load_measurements(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The planner's measured inputs, from ``bench scale``'s JSON.

    Args:
        path: the JSON file (default ``results/bench_scale.json`` in the repository).

    Returns:
        ``{"source", "dim", "indexes": {kind: {...}}, "embed_images_per_s_per_core", "embed_source"}``, where each
        index entry has ``n_ref`` (the largest N measured), ``bytes_per_vector``, ``qps`` and ``latency_ms`` there,
        ``qps_exponent`` and ``latency_exponent`` (fits against N), ``fit_range`` and ``params`` (the measured
        structure: ``m``, ``nbits`` or ``M``).

    Raises:
        ScaleError: the file is missing or lacks a part the planner needs (run ``python -m visual_search.bench scale``).
    """
    path = Path(path) if path is not None else config.REPO_ROOT / DEFAULT_RESULTS
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise ScaleError(f"{path}: no measurements; run `python -m visual_search.bench scale` first") from None
    except (OSError, ValueError) as err:
        raise ScaleError(f"{path}: cannot read the measurements ({err})") from None
    try:
        growth, embedding = result["growth"], result["embedding"]
        rows, fitted, dim = growth["rows"], growth["fits"], int(growth["dim"])
        indexes = {}
        for kind in KINDS:
            mine = [r for r in rows if r["key"] == kind]
            if not mine:
                continue
            ref = max(mine, key=lambda r: r["n"])
            indexes[kind] = {
                "n_ref": float(ref["n"]), "bytes_per_vector": float(ref["bytes_per_vector"]), "qps": float(ref["qps"]),
                "latency_ms": float(ref["latency_ms"]), "recall@10": float(ref["recall@10"]),
                "qps_exponent": float(fitted[kind]["qps"]["exponent"]), "latency_exponent": float(fitted[kind]["latency_ms"]["exponent"]),
                "fit_range": (float(fitted[kind]["qps"]["n_min"]), float(fitted[kind]["qps"]["n_max"])),
                "params": dict(growth.get("structure", {}).get(kind, {})),
            }
        per_core = float(embedding["images_per_s_per_core"])
    except (KeyError, TypeError, ValueError) as err:
        raise ScaleError(f"{path}: the measurements lack {err}; rerun `python -m visual_search.bench scale`") from None
    if not indexes:
        raise ScaleError(f"{path}: no growth measurements of any index kind {sorted(KINDS)}")
    return {"source": str(path), "dim": dim, "indexes": indexes, "embed_images_per_s_per_core": per_core,
            "embed_source": embedding.get("source", "the Ray embedding job with one worker")}


def _bytes_per_vector(kind: str, params: dict, dim: int, m: dict, d0: int) -> tuple[float, str]:
    """Bytes one vector costs at ``dim`` and ``params``, from the measurement at ``d0``, and how it was scaled."""
    measured = m["bytes_per_vector"]
    if kind in ("exact", "ivf"):
        overhead = measured - 4 * d0  # the float32 vector, plus the id (and list slot) overhead measured
        return 4 * dim + overhead, f"4 x {dim} float32 + {overhead:.1f} B measured overhead (id, list slot)"
    if kind == "hnsw":
        links = (measured - 4 * d0) * params["M"] / m["params"].get("M", params["M"])
        return 4 * dim + links, f"4 x {dim} float32 + {links:.1f} B of graph links (measured at M={m['params'].get('M', params['M'])}, scaled to M={params['M']})"
    if kind == "ivfpq":
        m0, b0 = m["params"].get("m", params["m"]), m["params"].get("nbits", params["nbits"])
        overhead = measured - m0 * b0 / 8
        code = math.ceil(params["m"] * params["nbits"] / 8)  # whole bytes, as Faiss stores a code
        return code + overhead, f"{params['m']} x {params['nbits']} bits code + {overhead:.1f} B measured overhead (id, list slot)"
    return measured * dim / d0, f"measured {measured:.1f} B at {d0}-d, scaled in proportion to {dim}-d"


def _work_ratio(kind: str, params: dict, dim: int, m: dict, d0: int) -> tuple[float, str]:
    """How much more work a query does per scanned vector than in the measurement: cost grows with what is read."""
    if kind == "ivfpq":
        m0 = m["params"].get("m", params["m"])
        return params["m"] / m0, f"cost per scanned code in proportion to m ({params['m']} vs measured {m0})"
    return dim / d0, f"cost per scanned vector in proportion to dim ({dim} vs measured {d0})"


def _positive(value: Any, name: str, *, integer: bool = False, high: float = 1e18) -> float:
    if integer:
        return check_int(value, name, low=1, high=int(high), error=ScaleError)
    value = check_real(value, name, low=0, high=high, low_open=True, error=ScaleError)
    return float(value)


def plan(images: float, dim: int, index: str, qps: float, ram_gb: float, **options: Any) -> dict[str, Any]:
    """A capacity plan for serving ``images`` embeddings of ``dim`` numbers at ``qps`` queries/s.

    Args:
        images: gallery size (e.g. ``200e9``).
        dim: embedding dimension.
        index: ``"exact"``, ``"ivf"``, ``"ivfpq:m=16[,nbits=8]"``, ``"hnsw[:M=32]"`` or ``"scann"``.
        qps: peak queries per second to serve.
        ram_gb: RAM of one machine, GiB.
        **options: any name in ``ASSUMPTIONS`` (``cores=64``, ``latency_ms=20``, ...) to replace its default, and
            ``measurements=`` (a ``load_measurements`` dict, or a path to a JSON) to plan from other measurements.

    Returns:
        A dict with ``index_bytes``, ``bytes_per_vector``, ``shards`` (per replica), ``replicas``, ``machines``, and
        ``shards_for_memory``, ``shards_for_latency``, ``vectors_per_shard``, ``qps_per_core`` and ``latency_ms``
        (one query, one core, one shard), ``qps_per_replica``, ``raw_image_bytes``, ``embedding_bytes``,
        ``embed_core_days``, ``embed_gpu_days``, ``uploads_per_day``, ``upload_core_hours_per_day``,
        ``upload_usd_per_day``, ``serving_usd_per_day``, ``extrapolation`` (shard size over the largest measured N),
        ``assumptions`` (name -> value used) and ``rows`` (the table ``format_plan`` prints: quantity, value, basis).

    The formulas (``m`` is the measurement at ``d0`` = 64 dimensions and ``N_ref`` = 1M vectors):

    * ``bytes_per_vector``: the kind's code or vector at ``dim``, plus the measured per-vector overhead;
    * ``shards_for_memory = ceil(index_bytes / (ram_gb GiB x memory_fraction))``;
    * ``qps_per_core(n) = m.qps x (n / N_ref) ** m.qps_exponent / work_ratio`` and
      ``latency(n) = m.latency_ms x (n / N_ref) ** m.latency_exponent x work_ratio``;
    * ``shards_for_latency``: the fewest shards whose ``latency(images / shards)`` is within ``latency_ms``;
    * ``shards = max(shards_for_memory, shards_for_latency)``;
    * ``replicas = max(min_replicas, ceil(qps / (qps_per_core x cores x utilisation)))``;
    * ``machines = shards x replicas``.

    Raises:
        ScaleError: a parameter that is not positive, an unknown index spec or option, or no measurement of the kind.
    """
    images = _positive(images, "images", high=1e14)
    dim = check_int(dim, "dim", low=1, high=65_536, error=ScaleError)
    qps = _positive(qps, "qps", high=1e12)
    ram_gb = _positive(ram_gb, "ram_gb", high=1e7)
    kind, params = parse_index(index)
    if kind == "ivfpq" and (params["m"] > dim or dim % params["m"]):
        raise ScaleError(f"index {index!r}: m={params['m']} sub-quantizers must divide dim={dim} (each codes dim / m numbers)")
    measurements = options.pop("measurements", None)
    unknown = sorted(set(options) - set(ASSUMPTIONS))
    if unknown:
        raise ScaleError(f"plan: unknown option(s) {unknown}; the assumptions are {sorted(ASSUMPTIONS)} (and measurements=)")
    a = {name: value for name, (value, _, _) in ASSUMPTIONS.items()} | options
    for name in ("cores", "min_replicas", "storage_copies"):
        a[name] = _positive(a[name], name, integer=True, high=1e6)
    for name in ("latency_ms", "image_kb", "core_hour_usd", "gpu_hour_usd", "gpu_images_per_s"):
        a[name] = _positive(a[name], name)
    for name in ("memory_fraction", "utilisation"):
        a[name] = check_real(a[name], name, low=0, high=1, low_open=True, error=ScaleError)
    if not (isinstance(a["uploads_per_day"], float) and math.isnan(a["uploads_per_day"])):
        a["uploads_per_day"] = check_real(a["uploads_per_day"], "uploads_per_day", low=0, high=1e14, error=ScaleError)
    else:
        a["uploads_per_day"] = 0.005 * images
    if measurements is None or isinstance(measurements, (str, os.PathLike)):
        measurements = load_measurements(measurements)
    if not isinstance(measurements, dict) or not {"dim", "indexes", "embed_images_per_s_per_core"} <= set(measurements):
        raise ScaleError("measurements: expected a path or what load_measurements returns (dim, indexes, embed_images_per_s_per_core)")
    if kind not in measurements.get("indexes", {}):
        raise ScaleError(f"index {index!r}: no measurement of {kind!r} in {measurements.get('source', 'the measurements')}; "
                         f"measured: {sorted(measurements.get('indexes', {}))}")
    m = measurements["indexes"][kind]
    d0 = int(measurements["dim"])

    bpv, bpv_basis = _bytes_per_vector(kind, params, dim, m, d0)
    index_bytes = images * bpv
    shards_for_memory = max(1, math.ceil(index_bytes / (ram_gb * GIB * a["memory_fraction"])))
    work, work_basis = _work_ratio(kind, params, dim, m, d0)
    qps_at = lambda n: m["qps"] * (n / m["n_ref"]) ** m["qps_exponent"] / work
    latency_at = lambda n: m["latency_ms"] * (n / m["n_ref"]) ** m["latency_exponent"] * work
    shards_for_latency = 1
    if latency_at(images) > a["latency_ms"]:
        if m["latency_exponent"] > 0:  # latency(n) <= budget  <=>  n <= N_ref (budget / (lat_ref work)) ** (1 / b)
            n_max = m["n_ref"] * (a["latency_ms"] / (m["latency_ms"] * work)) ** (1 / m["latency_exponent"])
            shards_for_latency = max(1, math.ceil(images / n_max))
            while latency_at(images / shards_for_latency) > a["latency_ms"] * (1 + 1e-9):
                shards_for_latency += 1  # float rounding at the boundary
        else:
            raise ScaleError(f"index {index!r}: one query takes {latency_at(images):.1f} ms at any shard size by the fit, over the "
                             f"{a['latency_ms']} ms budget; raise latency_ms")
    shards = max(shards_for_memory, shards_for_latency)
    if shards > images:
        raise ScaleError(f"index {index!r}: meeting latency_ms={a['latency_ms']:g} would need {shards:,} shards for {images:,.0f} images "
                         "(less than one vector a shard); raise latency_ms")
    per_shard = images / shards
    qps_core = qps_at(per_shard)
    qps_replica = qps_core * a["cores"] * a["utilisation"]
    replicas = max(a["min_replicas"], math.ceil(qps / qps_replica))
    machines = shards * replicas

    copies = a["storage_copies"]
    raw_bytes = images * a["image_kb"] * 1000 * copies
    embedding_bytes = images * dim * 4 * copies
    per_core = measurements["embed_images_per_s_per_core"]
    embed_core_days = images / per_core / 86_400
    embed_gpu_days = images / a["gpu_images_per_s"] / 86_400
    uploads = a["uploads_per_day"]
    upload_core_hours = uploads / per_core / 3600
    upload_usd = upload_core_hours * a["core_hour_usd"]
    serving_usd = machines * a["cores"] * 24 * a["core_hour_usd"]
    extrapolation = per_shard / m["fit_range"][1]  # > 1: beyond the largest N measured
    below = m["fit_range"][0] / per_shard  # > 1: below the smallest

    out: dict[str, Any] = {
        "images": images, "dim": dim, "index": index, "kind": kind, "index_params": params, "qps_target": qps, "ram_gb": ram_gb,
        "bytes_per_vector": bpv, "index_bytes": index_bytes, "shards": shards, "shards_for_memory": shards_for_memory,
        "shards_for_latency": shards_for_latency, "vectors_per_shard": per_shard, "qps_per_core": qps_core,
        "latency_ms": latency_at(per_shard), "qps_per_replica": qps_replica, "replicas": replicas, "machines": machines,
        "raw_image_bytes": raw_bytes, "embedding_bytes": embedding_bytes, "embed_core_days": embed_core_days,
        "embed_gpu_days": embed_gpu_days, "uploads_per_day": uploads, "upload_core_hours_per_day": upload_core_hours,
        "upload_usd_per_day": upload_usd, "upload_index_bytes_per_day": uploads * bpv * replicas,
        "serving_usd_per_day": serving_usd, "extrapolation": extrapolation, "assumptions": a,
        "measured": {"source": measurements.get("source"), "kind": kind, **{k: v for k, v in m.items() if k != "params"},
                     "params": m["params"], "dim": d0, "embed_images_per_s_per_core": per_core},
    }
    src = Path(str(measurements.get("source", "measurements"))).name
    fit = f"fit qps ~ N^{m['qps_exponent']:.2f} over {m['fit_range'][0]:,.0f}-{m['fit_range'][1]:,.0f} ({src})"
    if extrapolation > 1:
        trust = f"EXTRAPOLATED {extrapolation:,.0f}x beyond the largest N measured"
    elif below > 1:
        trust = f"EXTRAPOLATED {below:,.0f}x below the smallest N measured (fixed costs dominate there)"
    else:
        trust = "inside the measured range"
    out["rows"] = [
        ("images", f"{images:,.0f}", "input"),
        ("index", f"{index} at {dim}-d", "input"),
        ("bytes per vector", f"{bpv:.1f} B", f"{bpv_basis} ({src})"),
        ("index memory", _bytes(index_bytes), "images x bytes per vector"),
        ("shards for memory", f"{shards_for_memory:,}", f"{ram_gb:g} GiB RAM x {a['memory_fraction']:g} usable"),
        ("shards for latency", f"{shards_for_latency:,}", f"one query <= {a['latency_ms']:g} ms on one core; latency ~ N^{m['latency_exponent']:.2f}"),
        ("shards per replica", f"{shards:,}", "the larger of the two"),
        ("vectors per shard", f"{per_shard:,.0f}", trust),
        ("recall@10", f"{m['recall@10']:.3f}", f"of the measured operating point (target {RECALL_NOTE}), against exact search"),
        ("queries/s per core", f"{qps_core:,.1f}", f"{m['qps']:,.0f} measured at N={m['n_ref']:,.0f} (batched queries), {fit}; {work_basis}"),
        ("one-query latency", f"{out['latency_ms']:,.2f} ms", f"{m['latency_ms']:.2f} ms measured at N={m['n_ref']:,.0f}, scaled"),
        ("queries/s per replica", f"{qps_replica:,.0f}", f"{a['cores']} cores x {a['utilisation']:g} utilisation; every query visits every shard"),
        ("replicas", f"{replicas:,}", f"for {qps:,.0f} QPS, at least {a['min_replicas']}"),
        ("machines", f"{machines:,}", "shards x replicas, one shard a machine"),
        ("raw image storage", _bytes(raw_bytes), f"{a['image_kb']:g} KB an image x {copies} copies"),
        ("embedding storage", _bytes(embedding_bytes), f"float32 x {dim} x {copies} copies (kept to rebuild indexes)"),
        ("embed the gallery", f"{embed_core_days:,.0f} CPU core-days",
         f"{per_core:,.0f} images/s per core measured ({measurements.get('embed_source', '')}) on 28x28 images with the course's small CNN: "
         "a production encoder on real photos costs far more per image"),
        ("  or", f"{embed_gpu_days:,.1f} GPU-days", f"{a['gpu_images_per_s']:,.0f} images/s per GPU, {ASSUMPTIONS['gpu_images_per_s'][2]}"),
        ("new uploads", f"{uploads:,.0f} a day", ASSUMPTIONS["uploads_per_day"][2] if "uploads_per_day" not in options else "input"),
        ("  embedding them", f"{upload_core_hours:,.0f} core-hours = ${upload_usd:,.0f} a day", f"${a['core_hour_usd']:g} a core-hour"),
        ("  index growth", f"{_bytes(out['upload_index_bytes_per_day'])} a day", "across all replicas"),
        ("serving", f"${serving_usd:,.0f} a day", f"{machines:,} machines x {a['cores']} cores x ${a['core_hour_usd']:g} a core-hour"),
    ]
    return out


def _bytes(n: float) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def format_plan(result: dict[str, Any]) -> str:
    """The plan as a plain-text table: each quantity, its value, and what it rests on (measured or assumed)."""
    rows = [("quantity", "value", "basis")] + [tuple(r) for r in result["rows"]]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{q:<{w0}}  {v:>{w1}}  {b}" for q, v, b in rows]
    lines.insert(1, "-" * (w0 + w1 + 4 + max(len(r[2]) for r in rows)))
    return "\n".join(lines)


def plan_markdown(result: dict[str, Any]) -> str:
    """The plan as a Markdown table (for README and the notebooks)."""
    lines = ["| quantity | value | basis |", "|---|---:|---|"]
    lines += [f"| {q.strip()} | {v} | {b} |" for q, v, b in result["rows"]]
    return "\n".join(lines)


def to_json_dict(result: dict[str, Any]) -> dict[str, Any]:
    """The plan as plain JSON types (rows and ranges as lists), for results files."""
    return json.loads(to_json(result))


def to_json(result: dict[str, Any]) -> str:
    """The plan as JSON (the rows as lists)."""
    return json.dumps({**result, "rows": [list(r) for r in result["rows"]]}, indent=2, default=float) + "\n"


__all__ = ["ASSUMPTIONS", "KINDS", "format_plan", "load_measurements", "parse_index", "plan", "plan_markdown", "to_json", "to_json_dict"]
