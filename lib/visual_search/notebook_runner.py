"""Execute the course notebooks headless and report how long each took.

    python -m visual_search.notebook_runner --mode full          # what `make course` runs
    python -m visual_search.notebook_runner --mode fast 01 07    # a quick check of two chapters

Executed copies go to the git-ignored ``build/notebooks-<mode>/``; the committed
notebooks stay without outputs. The run-time table is printed and saved as
``build/notebooks-<mode>/runtimes.json``.
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
                client = NotebookClient(
                    nb, timeout=timeout, kernel_name="python3", shutdown_kernel="immediate", resources={"metadata": {"path": str(path.parent)}}
                )
                client.execute()
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
            rows.append((path.name, run_notebook(path, fast=args.mode == "fast", out_dir=out_dir), "ok"))
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
    return 0 if all(status == "ok" for _, _, status in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
