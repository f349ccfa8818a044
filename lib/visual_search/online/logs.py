"""Online metrics read from the service's own logs: the ``queries`` and ``clicks`` tables of its catalog.

``read_impressions`` opens the catalog's SQLite file read-only (a live service keeps
writing; we never do) and joins the two tables into one ``Impression`` per search:
what was shown, in order, and which ranks were clicked. Every row is checked; a
malformed one raises ``OnlineError`` naming it (its query id or click row id):
``shown`` that is not a JSON list of non-negative integer ids, a click on a query id
that was never logged, a click rank that is not an integer in 1..len(shown), or a
click whose image is not the one shown at that rank.

Metrics (``log_metrics``), over the searches of a log or of one group:

    ctr               clicked results / results shown, pooled over all searches
    ctr_per_query     mean over searches (with at least one result) of clicked / shown
    clicks_per_query  mean number of click rows per search (the engagement proxy)
    click_rate        share of searches with at least one click (1 - abandonment)
    mrr_first_click   mean of 1 / (rank of the first click), 0 for a search without a click

A result clicked twice counts once in ``ctr`` and ``ctr_per_query`` (a result is
clicked or not) and twice in ``clicks_per_query`` (engagement). ``by`` groups the
searches: ``"model_version"``, ``"user"``, ``"variant"`` (the arm an
``online.experiment.Experiment`` logged in the ``experiment`` column; searches outside
an A/B arm are left out), or a function user -> variant (a variant of None leaves the
search out: that user is not in the experiment).

``Impression.experiment`` is that column, parsed: None for an ordinary search, else a
JSON object such as ``{"experiment": "enc", "variant": "b"}``, plus ``"swap"`` and
``"swap_mode"`` for a RandPair intervention, or ``"arms"`` and ``"teams"`` for an
interleaved list. A catalog of schema 1 has no such column: every value is then None.

An empty log (or a group function that keeps no search) raises ``OnlineError``: a
rate of nothing is undefined, and a zero would read as a real, terrible result.

``query_table`` gives the per-search columns as arrays, for tests that need them
(a t-test of clicks per query between variants, say).

Errors: ``visual_search.errors.OnlineError``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visual_search.errors import OnlineError
from visual_search.service.catalog import Catalog

METRICS = ("ctr", "ctr_per_query", "clicks_per_query", "click_rate", "mrr_first_click")


@dataclass(frozen=True)
class Impression:
    """One search as the service logged it: ``shown`` ids top first, ``clicked_ranks`` (1-based) in click order."""

    query_id: str
    time: float
    user: str | None
    model_version: str
    shown: tuple[int, ...]
    clicked_ranks: tuple[int, ...]
    experiment: dict | None = None


def _is_id(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _rows(source: object) -> tuple[list, list]:
    if isinstance(source, Catalog):
        path = source.path
    elif isinstance(source, (str, Path)):
        path = Path(source)
    else:
        raise OnlineError(f"source: expected a catalog file path or a Catalog, got {type(source).__name__}")
    if not path.is_file():
        raise OnlineError(f"{path}: no such catalog file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as err:
        raise OnlineError(f"{path}: cannot open the catalog read-only ({err})") from None
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(queries)")}
        extra = "experiment" if "experiment" in columns else "NULL"  # schema 1 had no experiment column
        queries = conn.execute(f"SELECT query_id, time, user, model_version, shown, {extra} FROM queries ORDER BY time, rowid").fetchall()
        clicks = conn.execute("SELECT id, query_id, image_id, rank FROM clicks ORDER BY id").fetchall()
    except sqlite3.Error as err:
        raise OnlineError(f"{path}: not a service catalog with queries and clicks tables ({err})") from None
    finally:
        conn.close()
    return queries, clicks


def read_impressions(source: str | Path | Catalog) -> list[Impression]:
    """Every logged search with its clicks, oldest first, each row checked (see the module docstring).

    Args:
        source: the catalog's SQLite file, or the service's ``Catalog`` (its file is read).

    Raises:
        OnlineError: a missing or unreadable file, or a malformed row (named).
    """
    queries, clicks = _rows(source)
    shown_of: dict[str, tuple[int, ...]] = {}
    meta = []
    for query_id, t, user, model_version, shown, experiment in queries:
        try:
            ids = json.loads(shown)
        except (TypeError, ValueError):
            raise OnlineError(f"queries row {query_id!r}: shown {shown!r} is not JSON") from None
        if not isinstance(ids, list) or not all(_is_id(i) for i in ids):
            raise OnlineError(f"queries row {query_id!r}: shown must be a JSON list of non-negative integer ids, got {shown!r}")
        if experiment is not None:
            try:
                experiment = json.loads(experiment)
            except (TypeError, ValueError):
                raise OnlineError(f"queries row {query_id!r}: experiment {experiment!r} is not JSON") from None
            if not isinstance(experiment, dict):
                raise OnlineError(f"queries row {query_id!r}: experiment must be a JSON object, got {experiment!r}")
        shown_of[query_id] = tuple(ids)
        meta.append((query_id, float(t), user, model_version, experiment))
    clicked: dict[str, list[int]] = {q: [] for q in shown_of}
    for row_id, query_id, image_id, rank in clicks:
        where = f"clicks row {row_id} (query {query_id!r}, image {image_id!r}, rank {rank!r})"
        if query_id not in shown_of:
            raise OnlineError(f"{where}: no such query in the queries table")
        shown = shown_of[query_id]
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= len(shown):
            raise OnlineError(f"{where}: rank must be an integer in 1..{len(shown)} (the results shown)")
        if not isinstance(image_id, int) or image_id not in shown:
            raise OnlineError(f"{where}: the image was not shown for this query")
        if shown[rank - 1] != image_id:
            raise OnlineError(f"{where}: rank {rank} showed image {shown[rank - 1]}, not {image_id}")
        clicked[query_id].append(rank)
    return [Impression(q, t, user, mv, shown_of[q], tuple(clicked[q]), exp) for q, t, user, mv, exp in meta]


def query_table(impressions: Sequence[Impression]) -> dict[str, np.ndarray]:
    """Per-search columns: ``shown`` (results), ``clicks`` (click rows), ``clicked`` (distinct ranks clicked),
    ``first_rank`` (rank of the first click by rank, 0 if none), all int64 ``[n]``."""
    return {
        "shown": np.array([len(i.shown) for i in impressions], dtype=np.int64),
        "clicks": np.array([len(i.clicked_ranks) for i in impressions], dtype=np.int64),
        "clicked": np.array([len(set(i.clicked_ranks)) for i in impressions], dtype=np.int64),
        "first_rank": np.array([min(i.clicked_ranks, default=0) for i in impressions], dtype=np.int64),
    }


def metrics_of(impressions: Sequence[Impression]) -> dict[str, float]:
    """The metrics of ``METRICS`` over these searches, plus ``queries``, ``results_shown`` and ``clicks`` counts.

    Raises:
        OnlineError: no searches.
    """
    if len(impressions) == 0:
        raise OnlineError("log: no searches, so no online metric is defined")
    t = query_table(impressions)
    has_results = t["shown"] > 0
    first = t["first_rank"]
    return {
        "queries": int(len(impressions)),
        "results_shown": int(t["shown"].sum()),
        "clicks": int(t["clicks"].sum()),
        "ctr": float(t["clicked"].sum() / t["shown"].sum()) if t["shown"].sum() else 0.0,
        "ctr_per_query": float((t["clicked"][has_results] / t["shown"][has_results]).mean()) if has_results.any() else 0.0,
        "clicks_per_query": float(t["clicks"].mean()),
        "click_rate": float((t["clicks"] > 0).mean()),
        "mrr_first_click": float(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0).mean()),
    }


def log_metrics(source: str | Path | Catalog | Sequence[Impression],
                by: str | Callable[[str | None], object] | None = None, experiment: str | None = None) -> dict:
    """Online metrics of a service log, overall or per group.

    Args:
        source: a catalog file, a ``Catalog``, or impressions already read.
        by: None (one dict of metrics), ``"model_version"``, ``"user"``, ``"variant"`` (the logged
            A/B arm), or a function user -> variant (None: leave that search out); then
            ``{group: metrics}``, groups sorted.
        experiment: keep only the searches this experiment logged (None: every search). Two
            experiments may use the same arm labels, so group ``by="variant"`` within one.

    Raises:
        OnlineError: a malformed row, an empty log or no search kept, a bad ``by``.
    """
    impressions = list(source) if isinstance(source, (list, tuple)) else read_impressions(source)
    if experiment is not None:
        impressions = [i for i in impressions if i.experiment is not None and i.experiment.get("experiment") == experiment]
    if by is None:
        return metrics_of(impressions)
    if by == "model_version":
        key = lambda i: i.model_version  # noqa: E731
    elif by == "user":
        key = lambda i: i.user  # noqa: E731
    elif by == "variant":
        def key(i: Impression) -> str | None:
            if i.experiment is None or "teams" in i.experiment or "variant" not in i.experiment:
                return None
            if not isinstance(i.experiment["variant"], str):
                raise OnlineError(f"queries row {i.query_id!r}: variant {i.experiment['variant']!r} must be a string")
            return i.experiment["variant"]
    elif callable(by):
        key = lambda i: by(i.user)  # noqa: E731
    else:
        raise OnlineError(f"by: expected None, 'model_version', 'user', 'variant' or a function user -> variant, got {by!r}")
    groups: dict = {}
    for imp in impressions:
        g = key(imp)
        if g is not None:
            groups.setdefault(g, []).append(imp)
    if not groups:
        raise OnlineError("log: no search falls in any group, so no online metric is defined")
    return {g: metrics_of(groups[g]) for g in sorted(groups, key=str)}


def _of_experiment(impressions: Sequence[Impression], experiment: str | None, key: str) -> list[Impression]:
    """The impressions an experiment logged with ``key`` in their record (of experiment ``experiment``, if given)."""
    return [i for i in impressions if i.experiment is not None and key in i.experiment
            and (experiment is None or i.experiment.get("experiment") == experiment)]


def interleaving_outcomes(source: str | Path | Catalog | Sequence[Impression], experiment: str | None = None) -> list[str]:
    """Per interleaved impression (oldest first), the winner by click credit: ``"a"``, ``"b"`` or ``"tie"``.

    Team ``"a"`` is the experiment's first arm. Impressions without an interleaving record are skipped.

    Raises:
        OnlineError: a malformed record (teams that do not match what was shown), or no interleaved impression.
    """
    from visual_search.online.interleaving import interleaving_winner

    impressions = list(source) if isinstance(source, (list, tuple)) else read_impressions(source)
    out = []
    for imp in _of_experiment(impressions, experiment, "teams"):
        teams = imp.experiment["teams"]
        if not isinstance(teams, str) or len(teams) != len(imp.shown) or set(teams) - {"a", "b"}:
            raise OnlineError(f"queries row {imp.query_id!r}: teams {teams!r} must be one 'a' or 'b' per shown result ({len(imp.shown)})")
        out.append(interleaving_winner(list(teams), sorted({r - 1 for r in imp.clicked_ranks})))  # a double click counts once
    if not out:
        raise OnlineError("log: no interleaved impression" + (f" of experiment {experiment!r}" if experiment else ""))
    return out


@dataclass(frozen=True)
class SwapRows:
    """A log as ``position_bias.estimate_theta_swap`` reads it: one row per (impression, rank 1..n_ranks)."""

    ranks: np.ndarray
    clicked: np.ndarray
    swap: np.ndarray
    mode: str
    impressions: int


def swap_rows(source: str | Path | Catalog | Sequence[Impression], n_ranks: int = 10, experiment: str | None = None) -> SwapRows:
    """The A/B impressions of an experiment with RandPair swaps, as per-rank rows (``swap`` 0 = production order).

    Impressions with fewer than ``n_ranks`` results are left out (their deep ranks were never shown).

    Raises:
        OnlineError: a bad ``n_ranks``, no swapped impression, two swap modes in one log, or a malformed swap.
    """
    impressions = list(source) if isinstance(source, (list, tuple)) else read_impressions(source)
    if isinstance(n_ranks, bool) or not isinstance(n_ranks, (int, np.integer)) or not 2 <= n_ranks <= 100:
        raise OnlineError(f"n_ranks must be an integer in 2..100, got {n_ranks!r}")
    kept = [i for i in _of_experiment(impressions, experiment, "variant") if len(i.shown) >= n_ranks]
    swapped = [i for i in kept if "swap" in i.experiment]
    if not swapped:
        raise OnlineError("log: no impression with a RandPair swap" + (f" in experiment {experiment!r}" if experiment else ""))
    from visual_search.online.position_bias import SWAP_MODES

    for imp in swapped:
        if imp.experiment.get("swap_mode") not in SWAP_MODES:
            raise OnlineError(f"queries row {imp.query_id!r}: swap_mode {imp.experiment.get('swap_mode')!r} must be one of {SWAP_MODES}")
    modes = {i.experiment.get("swap_mode") for i in swapped}
    if len(modes) != 1:
        raise OnlineError(f"log: swaps of several modes {sorted(map(str, modes))}; estimate each experiment separately")
    ranks, clicked, swap = [], [], []
    for imp in kept:
        k = imp.experiment.get("swap", 0)
        if isinstance(k, bool) or not isinstance(k, int) or not (k == 0 or 2 <= k <= len(imp.shown)):
            raise OnlineError(f"queries row {imp.query_id!r}: swap {k!r} must be 0 or a rank in 2..{len(imp.shown)}")
        if k > n_ranks:
            continue  # swapped below the ranks we estimate: its top n_ranks are not the production order
        hit = set(imp.clicked_ranks)
        ranks.extend(range(1, n_ranks + 1))
        clicked.extend(int(r in hit) for r in range(1, n_ranks + 1))
        swap.extend([k] * n_ranks)
    as_int = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return SwapRows(as_int(ranks), as_int(clicked), as_int(swap), modes.pop(), len(ranks) // n_ranks)


__all__ = ["METRICS", "Impression", "SwapRows", "interleaving_outcomes", "log_metrics", "metrics_of", "query_table",
           "read_impressions", "swap_rows"]
