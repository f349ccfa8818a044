"""Documents generated from the notebooks, so they cannot drift from them.

    python -m visual_search.course_docs            # rewrite the interview bank, the cheat sheet and the guide's timings
    python -m visual_search.course_docs --check    # exit 1 if either is out of date (what the test runs)

``docs/cheatsheet.md`` is chapter 12's mock interview on one page, from ``visual_search.interview``
(the same functions the chapter calls). The interview bank gathers every chapter's "Interview questions" section, question and model
answer, grouped by the stage of the system design they belong to. Edit the notebooks, then
regenerate; ``tests/test_course_docs.py`` fails while the bank is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from visual_search.config import REPO_ROOT
from visual_search.notebook_runner import load_runtimes

NOTEBOOKS = REPO_ROOT / "notebooks"
BANK = REPO_ROOT / "docs" / "interview_questions.md"
CHEATSHEET = REPO_ROOT / "docs" / "cheatsheet.md"
GUIDE = REPO_ROOT / "docs" / "instructor_guide.md"
TIMINGS_START, TIMINGS_END = "<!-- timings:start -->", "<!-- timings:end -->"
#: A chapter whose full-mode run takes longer than this is pre-run before a workshop, not run live.
PRE_RUN_SECONDS = 180

#: The design's stages, in the order an interview walks through them, and the chapters behind each.
TOPICS: list[tuple[str, tuple[str, ...]]] = [
    ("Framing the problem and preparing the data", ("01",)),
    ("The model: encoders and embeddings", ("02",)),
    ("Training: contrastive data and the loss", ("03", "04")),
    ("Search: exact, approximate and quantised indexes", ("05", "06")),
    ("Evaluation: offline and online", ("07", "08")),
    ("Serving", ("09",)),
    ("Scale: 100-200 billion images", ("10",)),
    ("Senior talking points", ("11",)),
    ("The whole design in one interview", ("12",)),
]




def interview_questions(path: str | Path) -> list[tuple[str, str]]:
    """The (question, model answer) pairs of a notebook's "Interview questions" section, in order."""
    cells = json.loads(Path(path).read_text())["cells"]
    text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    start = re.search(r"^##\s+Interview questions.*$", text, re.M)
    if start is None:
        return []
    section = text[start.end():]
    end = re.search(r"^##\s", section, re.M)
    section = section[: end.start()] if end else section
    pairs = []
    heads = list(re.finditer(r"^\*\*(\d+)\.\s*(.+?)\*\*\s*$", section, re.M | re.S))
    for i, head in enumerate(heads):
        body = section[head.end(): heads[i + 1].start() if i + 1 < len(heads) else len(section)]
        answer = re.search(r"<details>\s*<summary>\s*Model answer\s*</summary>(.*?)</details>", body, re.S)
        if answer is None:
            continue
        question = " ".join(head.group(2).split())
        pairs.append((question, answer.group(1).strip()))
    return pairs


def interview_bank(notebooks_dir: str | Path | None = None) -> str:
    """The whole bank as markdown."""
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS
    paths = {p.name[:2]: p for p in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))}
    covered = {c for _, chapters in TOPICS for c in chapters}
    topics = TOPICS + [("Further topics", tuple(sorted(set(paths) - covered)))] if set(paths) - covered else TOPICS
    out = ["# Interview questions, by topic", "",
           "Every interview question of the course with its model answer, grouped by the stage of the design it",
           "belongs to. Generated from the notebooks by `python -m visual_search.course_docs`; do not edit by hand.",
           "Answer aloud first, then open the model answer.", ""]
    counts = []
    for topic, chapters in topics:
        rows = [(c, q, a) for c in chapters if c in paths for q, a in interview_questions(paths[c])]
        if not rows:
            continue
        counts.append((topic, len(rows)))
        out += [f"## {topic}", ""]
        for chapter, question, answer in rows:
            link = f"../notebooks/{paths[chapter].name}"
            out += [f"**{question}** ([chapter {chapter}]({link}))", "", "<details><summary>Model answer</summary>", "", answer, "", "</details>", ""]
    total = sum(n for _, n in counts)
    out[5:5] = [f"{total} questions: " + "; ".join(f"{t.split(':')[0].lower()} {n}" for t, n in counts) + ".", ""]
    return "\n".join(out).rstrip() + "\n"


def timings_table(runtimes: dict | None = None) -> str:
    """The guide's table: each chapter's measured full- and fast-mode run time, and whether to pre-run it."""
    chapters = (runtimes if runtimes is not None else load_runtimes()).get("chapters", {})
    rows = ["| chapter | full mode | fast mode | in the room |", "|---|---|---|---|"]
    for name in sorted(chapters):
        full, fast = chapters[name].get("full", {}), chapters[name].get("fast", {})
        f, q = full.get("seconds"), fast.get("seconds")
        advice = ("pre-run in full mode the day before; run fast mode live" if f is not None and f > PRE_RUN_SECONDS
                  else "run live in full mode")
        rows.append(f"| `{name}` | {_minutes(f)} | {_minutes(q)} | {advice} |")
    return "\n".join(rows)


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def guide_with_timings(text: str, runtimes: dict | None = None) -> str:
    """``text`` (the guide) with its block between the timing markers regenerated."""
    if TIMINGS_START not in text or TIMINGS_END not in text:
        return text
    head, rest = text.split(TIMINGS_START, 1)
    _, tail = rest.split(TIMINGS_END, 1)
    return f"{head}{TIMINGS_START}\n{timings_table(runtimes)}\n{TIMINGS_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/interview_questions.md is out of date")
    args = parser.parse_args(argv)
    from visual_search.interview import cheatsheet

    wanted = {BANK: interview_bank(), CHEATSHEET: cheatsheet()}
    if GUIDE.exists():
        wanted[GUIDE] = guide_with_timings(GUIDE.read_text())
    stale = [p for p, text in wanted.items() if (p.read_text() if p.exists() else "") != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(REPO_ROOT)} is out of date: run python -m visual_search.course_docs", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(wanted[p])
        print(f"wrote {p.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
