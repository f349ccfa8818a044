"""Every notebook: committed without outputs, shaped like a chapter, and runs top to bottom in fast mode."""

from __future__ import annotations

import json
import re

import pytest

from visual_search.notebook_runner import find_notebooks, run_notebook

NOTEBOOKS = find_notebooks()


def _load(path):
    return json.loads(path.read_text())


def test_the_course_chapters_exist():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert {"01", "07"} <= set(numbers) and len(numbers) == len(set(numbers)), numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(_load(path)["cells"]) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_structure(path):
    cells = _load(path)["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and re.search(r"objectives", first, re.I), "starts with objectives"
    assert re.search(r"run time", first, re.I), "states its measured run time"
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    for heading in ("Summary", "Exercises", "Interview questions"):
        assert re.search(rf"^#+ .*{heading}", text, re.M | re.I), f"has a '{heading}' section"
    assert text.count("Model answer") >= 5, "at least 5 interview questions with model answers"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_in_fast_mode(path, tmp_path):
    run_notebook(path, fast=True, out_dir=tmp_path)
