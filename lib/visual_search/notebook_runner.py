"""Execute the course notebooks headless and report how long each took.

    python -m visual_search.notebook_runner --mode full          # what `make course` runs
    python -m visual_search.notebook_runner --mode fast 01 07    # a quick check of two chapters

Executed copies go to the git-ignored ``build/notebooks-<mode>/``; the committed
notebooks stay without outputs. The run-time table is printed and saved as
``build/notebooks-<mode>/runtimes.json``, and each chapter's time (with the share of the
CPUs other programs used just before and after it) is merged into the committed
``results/notebook_runtimes.json``,
which the chapter headers (:func:`runtime_line`) and README's table
(:func:`runtime_table`, between ``<!-- runtimes:start -->`` and ``<!-- runtimes:end -->``)
read. A time measured while the cores were busy is marked so, as it overstates the idle time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from visual_search.config import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RUNTIMES = REPO_ROOT / "results" / "notebook_runtimes.json"
README_START, README_END = "<!-- runtimes:start -->", "<!-- runtimes:end -->"
#: A chapter counts as timed on an idle machine when other programs used less than this share of the
#: CPUs just before it started and just after it ended (no kernel of ours runs in either window).
IDLE_OTHER_SHARE = 0.25


def other_cpu_share(seconds: float = 2.0) -> float:
    """The share of all CPUs busy over ``seconds`` (0..1); called between chapters, it is other programs' use."""
    import psutil

    return psutil.cpu_percent(interval=seconds) / 100.0


def load_runtimes(path: str | Path | None = None) -> dict:
    """``results/notebook_runtimes.json`` as a dict (``{"chapters": {}}`` when it does not exist yet)."""
    path = Path(path) if path is not None else RUNTIMES
    if not path.exists():
        return {"chapters": {}}
    return json.loads(path.read_text())


def record_runtime(name: str, mode: str, seconds: float, other_share: float, path: str | Path | None = None) -> None:
    """Merge one chapter's measured time into the run-times JSON (atomically), keeping the other mode's entry."""
    path = Path(path) if path is not None else RUNTIMES
    data = load_runtimes(path)
    entry = data.setdefault("chapters", {}).setdefault(name, {})
    entry[mode] = {"seconds": round(float(seconds), 1), "other_cpu_share": round(float(other_share), 2),
                   "idle": bool(other_share < IDLE_OTHER_SHARE), "date": time.strftime("%Y-%m-%d"),
                   "cores": os.cpu_count(), "source": "python -m visual_search.notebook_runner --mode " + mode}
    data["note"] = ("Wall-clock seconds per chapter, written by the notebook runner (make course = full mode). "
                    f"'other_cpu_share' is the larger share of all CPUs that other programs used in the 2 s just before "
                    f"the chapter started and just after it ended; 'idle' means it was below {IDLE_OTHER_SHARE}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def runtime_line(chapter: str, path: str | Path | None = None) -> str:
    """The measured run time of the chapter whose file name starts with ``chapter`` ("05"), as one sentence.

    Chapter headers print it with ``viz.show_markdown(runtime_line("05"))``, so the header
    cannot drift from the last ``make course``.
    """
    chapters = load_runtimes(path).get("chapters", {})
    name = next((n for n in sorted(chapters) if n.startswith(chapter)), None)
    if name is None:
        return f"*Run time of chapter {chapter}: not measured yet (`make course` measures it).*"
    parts, earlier = [], False
    for mode in ("full", "fast"):
        e = chapters[name].get(mode)
        if e:
            parts.append(f"{mode} mode {_fmt_seconds(e['seconds'])}{_qualifier(e)}")
            earlier |= not _measured_by_runner(e)
    note = " A time marked † comes from an earlier session's chapter header; `make course` remeasures it." if earlier else ""
    return (f"*Measured run time ({chapters[name].get('full', chapters[name].get('fast', {})).get('cores', 2)}-core CPU, no GPU): "
            + ", ".join(parts) + f" (`results/notebook_runtimes.json`, written by the notebook runner).{note}*")


def _measured_by_runner(entry: dict) -> bool:
    return str(entry.get("source", "")).startswith("python -m visual_search.notebook_runner")


def _qualifier(entry: dict) -> str:
    """What a reader must know about a time: not measured by the runner, or measured on a busy machine."""
    if not _measured_by_runner(entry):
        return "†"
    if not entry.get("idle"):
        return f", on a busy machine (other programs used {entry['other_cpu_share']:.0%} of the CPUs)"
    return ""


def runtime_table(path: str | Path | None = None) -> str:
    """README's table of chapter run times, from the run-times JSON."""
    chapters = load_runtimes(path).get("chapters", {})
    rows = ["| chapter | full mode | fast mode |", "|---|---|---|"]
    total = {"full": 0.0, "fast": 0.0}
    for name in sorted(chapters):
        cells = []
        for mode in ("full", "fast"):
            e = chapters[name].get(mode)
            if e:
                total[mode] += e["seconds"]
                note = "" if e.get("idle") else " (busy machine)"
                cells.append(_fmt_seconds(e["seconds"]) + (note if _measured_by_runner(e) else "† (earlier session, not remeasured)"))
            else:
                cells.append("not measured")
        rows.append(f"| `{name}` | {cells[0]} | {cells[1]} |")
    rows.append(f"| **all chapters** | {_fmt_seconds(total['full'])} | {_fmt_seconds(total['fast'])} |")
    return "\n".join(rows)


def update_readme(readme: str | Path | None = None, path: str | Path | None = None) -> bool:
    """Rewrite README's run-time table from the JSON. Returns whether README changed."""
    readme = Path(readme) if readme is not None else REPO_ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{runtime_table(path)}\n{README_END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


@contextmanager
def _environment(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_notebook(path: str | Path, fast: bool, out_dir: str | Path | None = None, timeout: int = 1800) -> float:
    """Execute one notebook top to bottom in a fresh kernel, in its own folder.

    Args:
        path: the ``.ipynb`` file.
        fast: sets ``VISUAL_SEARCH_FAST=1`` for the kernel (small data, few steps).
        out_dir: if given, the executed copy (also of a failed run) is written there under the same name.
        timeout: seconds any one cell may take.

    Returns:
        Wall-clock seconds the whole notebook took.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed; the message shows the traceback.
    """
    import nbformat
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as jupyter_path:
        # A "python3" kernel spec that runs *this* interpreter, found first on JUPYTER_PATH, so a
        # user-level python3 kernel pointing at another Python can never run the course.
        write_kernel_spec(os.path.join(jupyter_path, "kernels", "python3"))
        env = {
            "JUPYTER_PATH": jupyter_path,
            "VISUAL_SEARCH_FAST": "1" if fast else "0",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
        }
        try:
            with _environment(**env):
                # shutdown_kernel="immediate": the outputs are complete once the last cell has run, so the
                # kernel is stopped at once instead of waiting ~1 s per notebook for a graceful exit.
                # IPC transport (Unix sockets in the private temporary folder) instead of TCP on loopback:
                # nothing else on the machine can reach the kernel, and ipykernel's "running over TCP
                # without encryption" warning does not fire.
                km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(jupyter_path, "kernel-ipc"))
                client = NotebookClient(
                    nb, km=km, timeout=timeout, kernel_name="python3", shutdown_kernel="immediate",
                    resources={"metadata": {"path": str(path.parent)}},
                )
                try:
                    client.execute()
                finally:  # a client given its own km leaves the kernel running: stop it here
                    if km.has_kernel:
                        km.shutdown_kernel(now=True)
        finally:  # keep the executed copy, failed cells included, for debugging
            if out_dir is not None:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, Path(out_dir) / path.name)
    return time.perf_counter() - start


def find_notebooks(selectors: list[str] | None = None) -> list[Path]:
    """All ``notebooks/NN_*.ipynb`` in order, or only those whose name starts with a selector."""
    paths = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if selectors:
        paths = [p for p in paths if any(p.name.startswith(s) for s in selectors)]
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("full", "fast"), default="full")
    parser.add_argument("selectors", nargs="*", help="notebook name prefixes, e.g. 01 07 (default: all)")
    parser.add_argument("--no-record", dest="record", action="store_false",
                        help="do not write the times to results/notebook_runtimes.json and README")
    args = parser.parse_args(argv)

    out_dir = REPO_ROOT / "build" / f"notebooks-{args.mode}"
    paths = find_notebooks(args.selectors)
    if not paths:
        print(f"no notebooks match {args.selectors}", file=sys.stderr)
        return 1
    rows: list[tuple[str, float | None, str]] = []
    for path in paths:
        print(f"running {path.name} ({args.mode} mode) ...", flush=True)
        try:
            before = other_cpu_share() if args.record else 0.0
            seconds = run_notebook(path, fast=args.mode == "fast", out_dir=out_dir)
            rows.append((path.name, seconds, "ok"))
            if args.record:
                record_runtime(path.stem, args.mode, seconds, max(before, other_cpu_share()))
        except Exception as e:  # report every notebook, then fail
            rows.append((path.name, None, f"FAILED: {type(e).__name__}"))
            print(str(e)[-3000:], file=sys.stderr)
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'notebook':<{width}}  {'seconds':>8}  status")
    for name, seconds, status in rows:
        print(f"{name:<{width}}  {seconds if seconds is not None else float('nan'):>8.1f}  {status}")
    total = sum(s for _, s, _ in rows if s is not None)
    print(f"{'total':<{width}}  {total:>8.1f}")
    (out_dir / "runtimes.json").parent.mkdir(parents=True, exist_ok=True)
    (out_dir / "runtimes.json").write_text(json.dumps({"mode": args.mode, "seconds": {n: s for n, s, _ in rows}}, indent=2) + "\n")
    if args.record and update_readme():
        print("README.md: run-time table updated from results/notebook_runtimes.json")
    return 0 if all(status == "ok" for _, _, status in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
