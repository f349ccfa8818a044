"""Every chapter's checked exercises: a stub in the notebook, a check, and a solution that passes it.

For each ``check.chNN.<name>(<fn>)`` call in a notebook:

* the check is registered in ``visual_search.exercises.chNN``, and every registered check is called
  from its notebook (no orphan checks, no calls to checks that do not exist);
* ``solutions/NN_topic.py`` has a function of that name, and it passes on 20 seeds;
* the notebook's own stub (the function definition that raises ``NotImplementedError``) fails
  the check, which says it is not answered yet;
* a wrong answer (one returning ``None``) and a crashing one fail with a hint naming the case,
  what was expected and what came back. So a check that cannot fail is caught.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re

import pytest

from visual_search import config
from visual_search.exercises import EXERCISES, CheckResult, check
from visual_search.notebook_runner import find_notebooks

SOLUTIONS = config.REPO_ROOT / "solutions"
CALL = re.compile(r"\bcheck\.(ch\d\d)\.(\w+)\((\w+)")


def _code(path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _calls():
    """(notebook, chapter, exercise, the name of the function passed, the cell's source)."""
    for path in find_notebooks():
        for source in _code(path):
            for chapter, name, arg in CALL.findall(source):
                yield path, chapter, name, arg, source


CALLS = list(_calls())


def _solutions(path):
    file = SOLUTIONS / (path.stem + ".py")
    spec = importlib.util.spec_from_file_location(f"solutions_{path.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stub(source: str, name: str):
    """The stub ``def name(...)`` of a notebook cell, defined on its own (its body must raise NotImplementedError)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            assert any(isinstance(n, ast.Raise) and "NotImplementedError" in ast.unparse(n) for n in ast.walk(node)), (
                f"the notebook's {name} is not a stub raising NotImplementedError")
            namespace: dict = {}
            exec(compile(ast.Module([node], []), "<stub>", "exec"), namespace)  # noqa: S102 - our own notebook's stub
            return namespace[name]
    raise AssertionError(f"no stub `def {name}` in the cell that calls its check")


@pytest.mark.parametrize("path", find_notebooks(), ids=lambda p: p.name)
def test_every_chapter_has_checked_exercises_and_a_solutions_file(path):
    chapter = "ch" + path.name[:2]
    called = {name for p, ch, name, _, _ in CALLS if p == path and ch == chapter}
    assert called, f"{path.name} calls no check.{chapter}.<name>(...)"
    assert called == set(EXERCISES.get(chapter, {})), (
        f"{path.name}: calls {sorted(called)} but {chapter} registers {sorted(EXERCISES.get(chapter, {}))}")
    assert (SOLUTIONS / (path.stem + ".py")).is_file(), f"solutions/{path.stem}.py is missing"
    assert hasattr(check, chapter), f"check.{chapter} is not in the check namespace"


@pytest.mark.parametrize("path, chapter, name, arg, source", CALLS, ids=[f"{c}.{n}" for _, c, n, _, _ in CALLS])
def test_solution_passes_and_stub_and_wrong_answers_fail_with_a_hint(path, chapter, name, arg, source):
    fn = getattr(check, chapter).__dict__[name]
    solution = getattr(_solutions(path), name, None)
    assert callable(solution), f"solutions/{path.stem}.py has no {name}"
    for seed in range(20):  # many seeds: a check that fails a right answer on a near-tie is caught here, not by a student
        result = fn(solution, seed=seed, quiet=True)
        assert isinstance(result, CheckResult) and result.passed, result.message

    stub = _stub(source, arg)
    result = fn(stub, seed=0, quiet=True)
    assert not result.passed and "NotImplementedError" in result.message, result.message

    def returns_none(*args, **kwargs):
        return None

    result = fn(returns_none, seed=0, quiet=True)
    assert not result.passed and "expected" in result.message and "got" in result.message, result.message
    assert "case" in result.message, f"the hint should name the case: {result.message}"

    def crashes(*args, **kwargs):
        raise ZeroDivisionError("boom")

    result = fn(crashes, seed=0, quiet=True)
    assert not result.passed and "ZeroDivisionError" in result.message and "case" in result.message, result.message


def test_a_check_prints_its_verdict_and_reports_a_random_seed(capsys):
    from importlib import import_module

    sol = _solutions(next(p for p in find_notebooks() if p.name.startswith("10")))
    result = check.ch10.merge(sol.merge)
    assert result.passed and result.seed is not None and "✓ ch10.merge" in capsys.readouterr().out
    result = check.ch10.merge(None)
    assert not result.passed and "no answer yet" in capsys.readouterr().out
    assert import_module("visual_search.exercises.check").ch10 is check.ch10
