"""Generated course documents stay in step with the notebooks and results they come from."""

from __future__ import annotations

import json

import pytest

from visual_search import config, course_docs, notebook_runner
from visual_search.notebook_runner import find_notebooks


def test_the_interview_bank_is_generated_from_the_notebooks_and_up_to_date():
    assert course_docs.BANK.exists(), "docs/interview_questions.md is missing: run python -m visual_search.course_docs"
    assert course_docs.BANK.read_text() == course_docs.interview_bank(), (
        "docs/interview_questions.md is stale: run python -m visual_search.course_docs")
    assert course_docs.main(["--check"]) == 0


@pytest.mark.parametrize("path", find_notebooks(), ids=lambda p: p.name)
def test_every_chapter_feeds_the_bank_at_least_five_questions_with_model_answers(path):
    pairs = course_docs.interview_questions(path)
    assert len(pairs) >= 5, f"{path.name}: {len(pairs)} '**N. question**' + Model answer pairs found in its Interview questions section"
    assert all(q and len(a) > 80 for q, a in pairs), f"{path.name}: an empty question or a one-line model answer"


def test_every_chapter_is_under_a_topic():
    covered = {c for _, chapters in course_docs.TOPICS for c in chapters}
    assert {p.name[:2] for p in find_notebooks()} <= covered


def test_the_bank_parser_reads_a_section_and_stops_at_the_next_heading(tmp_path):
    md = ("## Interview questions\n\n**1. Why?**\n\n<details><summary>Model answer</summary>\n\nBecause.\n</details>\n\n"
          "**2. How?**\n\n<details><summary>Model answer</summary>\nLike this.\n</details>\n\n## References\n\n**3. Not one**")
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": [md]}]}))
    assert course_docs.interview_questions(path) == [("Why?", "Because."), ("How?", "Like this.")]


def test_chapter_run_times_come_from_the_results_json_and_readme_shows_them():
    data = notebook_runner.load_runtimes()
    names = {p.stem for p in find_notebooks()}
    assert names <= set(data["chapters"]), f"no run time for {sorted(names - set(data['chapters']))}"
    for path in find_notebooks():
        line = notebook_runner.runtime_line(path.name[:2])
        assert "full mode" in line and "not measured" not in line, line
        code = "".join(json.loads(path.read_text())["cells"][1]["source"])
        assert f'runtime_line("{path.name[:2]}")' in code, f"{path.name}: the cell after the header should print runtime_line"
    readme = (config.REPO_ROOT / "README.md").read_text()
    block = readme.split(notebook_runner.README_START)[1].split(notebook_runner.README_END)[0].strip()
    assert block == notebook_runner.runtime_table(), "README's run-time table is stale: rerun the runner or update_readme()"


def test_record_runtime_merges_modes_and_marks_a_busy_machine(tmp_path):
    path = tmp_path / "rt.json"
    notebook_runner.record_runtime("05_x", "full", 100.04, 0.1, path)
    notebook_runner.record_runtime("05_x", "fast", 9.0, 0.6, path)
    entry = notebook_runner.load_runtimes(path)["chapters"]["05_x"]
    assert entry["full"]["seconds"] == 100.0 and entry["full"]["idle"] and not entry["fast"]["idle"]
    line = notebook_runner.runtime_line("05", path)
    assert "full mode 1.7 min (100 s)" in line and "busy machine" in line and "†" not in line
    assert "not measured yet" in notebook_runner.runtime_line("06", path)
    assert 0.0 <= notebook_runner.other_cpu_share(0.1) <= 1.0
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{notebook_runner.README_START}\nold\n{notebook_runner.README_END}\nb\n")
    assert notebook_runner.update_readme(readme, path) and "| `05_x` | 1.7 min (100 s) | 9 s (busy machine) |" in readme.read_text()
    assert not notebook_runner.update_readme(readme, path)


def test_the_instructors_guide_exists_and_its_timings_come_from_the_results_json():
    text = course_docs.GUIDE.read_text()
    for heading in ("one-day workshop", "half-day workshop", "no network", "failure modes", "pairs"):
        assert heading in text.lower(), f"docs/instructor_guide.md lacks a section on {heading!r}"
    assert "make wheelhouse" in text
    assert text == course_docs.guide_with_timings(text), "the guide's timings are stale: run python -m visual_search.course_docs"
    for path in find_notebooks():
        assert f"`{path.stem}`" in text, f"the guide's timing table lacks {path.stem}"


def test_make_wheelhouse_downloads_the_lock_builds_sdists_and_install_uses_it_offline():
    makefile = (config.REPO_ROOT / "Makefile").read_text()
    target = makefile.split("\nwheelhouse:", 1)[1].split("\n\n", 1)[0]
    assert "pip download" in target and "-r requirements.lock" in target and "pip wheel" in target and "--copy-to" in target
    assert "--no-index --find-links $(WHEELHOUSE)" in makefile and "$(PIP_OFFLINE) -r requirements.lock" in makefile


def test_the_cheat_sheet_is_generated_from_the_interview_module_and_up_to_date():
    from visual_search import interview

    text = interview.cheatsheet()
    assert course_docs.CHEATSHEET.read_text() == text, "docs/cheatsheet.md is stale: run python -m visual_search.course_docs"
    assert sum(interview.MINUTES.values()) == 45
    for step in interview.steps():
        assert f"{step.title} ({step.minutes} min)" in text
    assert "What interviewers look for" in text and "Common mistakes" in text
