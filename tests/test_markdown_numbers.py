"""Numbers in the notebooks' prose come from somewhere: a result, the code, or an honest "about".

A number typed into a markdown cell drifts from the run that produced it. Each number in a
chapter's markdown must therefore be one of:

* a value in a results JSON the chapter reads (``results/<name>.json`` named anywhere in the
  notebook), at the precision quoted (a fraction may be quoted as a percentage);
* a literal in the chapter's own code cells (a parameter, a size, a seed);
* marked as approximate just before it (about, around, roughly, nearly, ~, ≈, ``\\approx``);
* a small count (0 to 12), a section number of the chapter, or a year in a citation;
* in the global allow-list below (constants of the data and the problem), or in the chapter's
  own allow-list ``tests/markdown_numbers/NN.txt`` (one number a line, ``# why`` after it).

Numbers computed at run time go through ``viz.show_markdown(f"...")`` in a code cell instead,
and displayed math (``$$ ... $$``, a worked derivation) is exempt.
"""

from __future__ import annotations

import json
import re
from functools import cache

import pytest

from visual_search import config
from visual_search.notebook_runner import find_notebooks

RESULTS = config.REPO_ROOT / "results"
ALLOW_DIR = config.REPO_ROOT / "tests" / "markdown_numbers"

#: Constants of the data and the problem, true in every chapter.
GLOBAL_ALLOW = {
    "28", "784", "60000", "10000", "70000", "2000", "500", "6000", "1000",  # Fashion-MNIST and the committed sample
    "100", "200",  # the design notes' 100-200 billion images
    "16", "32", "64", "128", "256", "512", "1024", "2048", "4096",  # powers of two: dims, bytes, batch sizes
    "224",  # ImageNet's input size
}

NUMBER = re.compile(r"(?<![\w.\\^_])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w])")
APPROX = re.compile(r"(about|around|roughly|approximately|nearly|almost|~|≈|\\approx|\\sim)\s*[$(]?\s*[-+−]?\s*$", re.I)
CITATION = re.compile(r"^(19[5-9]\d|20[0-2]\d)$")


def _strip(text: str) -> str:
    """Markdown with what is not a quoted number removed: links, code, display math, tags, list markers."""
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)  # worked derivations
    text = re.sub(r"https?://\S+", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"^#+\s*[\d.]+", " ", text, flags=re.M)  # "## 4.2 ..."
    text = re.sub(r"^\s*\d+\.\s", " ", text, flags=re.M)  # "1. ..." list items
    text = re.sub(r"\*\*\d+\.", " ", text)  # "**3. Question**"
    text = re.sub(r"\b(chapters?|sections?|§|steps?|exercises?|questions?|cells?|figures?|ch)\s*\d+(\.\d+)*"
                  r"((–|-|, | and | to | or )\d+(\.\d+)*)*", " ", text, flags=re.I)
    text = re.sub(r"\b(SHA|P|R|MRR|nDCG|mAP|AP)@?-?\d+", " ", text)  # metric names: P@10, nDCG@5, SHA-256
    text = re.sub(r"@\d+", " ", text)
    return text


def _leaves(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v)
    elif isinstance(obj, bool):
        return
    elif isinstance(obj, int | float):
        yield float(obj)
    elif isinstance(obj, str):
        for m in re.findall(r"\d[\d,]*(?:\.\d+)?", obj):
            yield float(m.replace(",", ""))


@cache
def _result_values(stem: str) -> tuple[float, ...]:
    return tuple(_leaves(json.loads((RESULTS / f"{stem}.json").read_text())))


def _chapter_allow(number: str) -> set[str]:
    path = ALLOW_DIR / f"{number}.txt"
    if not path.exists():
        return set()
    return {line.split("#")[0].strip().replace(",", "") for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def unexplained_numbers(path) -> list[tuple[str, str]]:
    """The numbers of a notebook's markdown with no source, as (number, context)."""
    cells = json.loads(path.read_text())["cells"]
    every = "\n".join("".join(c["source"]) for c in cells)
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    code_numbers = {m.replace("_", "").replace(",", "") for m in re.findall(r"\d[\d_]*(?:\.\d+)?", code)}
    sections = set(re.findall(r"^#+\s*(\d+(?:\.\d+)+)", every, flags=re.M))
    # The run-times file is named in every header; its seconds are not content, and matching them would pass
    # typed-in numbers by chance.
    values = [v for p in sorted(RESULTS.glob("*.json")) if p.stem in every and p.stem != "notebook_runtimes"
              for v in _result_values(p.stem)]
    allow = GLOBAL_ALLOW | _chapter_allow(path.name[:2])
    found = []
    for cell in cells:
        if cell["cell_type"] != "markdown":
            continue
        text = _strip("".join(cell["source"]))
        for m in NUMBER.finditer(text):
            quoted, plain = m.group(0), m.group(0).replace(",", "")
            x = float(plain)
            if (m.group(2) is None and x <= 12) or plain in code_numbers or plain in allow or plain in sections:
                continue
            if CITATION.match(plain) or APPROX.search(text[max(0, m.start() - 24): m.start()]):
                continue
            decimals = len(m.group(2)) - 1 if m.group(2) else 0
            tol = 0.5 * 10.0**-decimals + 1e-9
            if any(abs(v - x) <= tol or abs(100 * v - x) <= tol for v in values):
                continue
            found.append((quoted, " ".join(text[max(0, m.start() - 50): m.end() + 25].split())))
    return found


@pytest.mark.parametrize("path", find_notebooks(), ids=lambda p: p.name)
def test_numbers_in_markdown_come_from_results_code_or_say_approximately(path):
    found = unexplained_numbers(path)
    assert not found, (
        f"{path.name}: {len(found)} number(s) in markdown with no source. Quote them from a results JSON or the code "
        "(viz.show_markdown), mark them approximate with where they come from, or add a constant to "
        f"tests/markdown_numbers/{path.name[:2]}.txt:\n" + "\n".join(f"  {n!r}: ...{ctx}..." for n, ctx in found))


def test_the_checker_flags_a_typed_in_number(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": ["P@1 rose to 0.8123 after 37 epochs, about 45 minutes."]},
                    {"cell_type": "code", "source": ["epochs = 37"]}]}
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps(nb))
    assert [n for n, _ in unexplained_numbers(path)] == ["0.8123"]
