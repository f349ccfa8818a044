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


def _section(text: str, heading: str) -> str:
    """The markdown from ``## heading`` to the next ``## `` heading."""
    match = re.search(rf"^##\s+{heading}\b.*$", text, re.M)
    assert match, f"no '## {heading}' section"
    rest = text[match.end():]
    end = re.search(r"^##\s", rest, re.M)
    return rest[: end.start()] if end else rest


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_closes_with_exercises_questionnaire_references_and_interview_questions_in_order(path):
    text = "\n".join("".join(c["source"]) for c in _load(path)["cells"] if c["cell_type"] == "markdown")
    order = [re.search(rf"^##\s+{h}\b", text, re.M) for h in ("Summary", "Exercises", "Questionnaire", "References", "Interview questions")]
    assert all(order), "each of Summary, Exercises, Questionnaire, References, Interview questions needs a ## heading"
    assert [m.start() for m in order] == sorted(m.start() for m in order), "closing sections out of order"
    questionnaire = _section(text, "Questionnaire")
    questions = re.findall(r"^\d+\.\s", questionnaire, re.M)
    answers = questionnaire.count("<summary>Answer</summary>")
    assert 10 <= len(questions) <= 15 and answers == len(questions), f"{len(questions)} questions, {answers} answers"
    links = re.findall(r"\]\((https?://[^)\s]+)\)", _section(text, "References"))
    assert len(links) >= 3, f"the References section links {len(links)} sources"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_in_fast_mode(path, tmp_path):
    run_notebook(path, fast=True, out_dir=tmp_path)
