"""The package's shape: one error family, and an import graph that runs one way.

Data flows data -> preprocess -> models -> embed -> augment/clicks/contrastive -> train
-> index -> evalset -> service -> online/scale -> exercises (the checks compare answers with
any module below); leaves (errors, config, checks, metrics, timing, viz) may be used
anywhere; ``bench`` sits on top, and nothing imports it, notebooks included.
"""

from __future__ import annotations

import ast
import inspect
import json
import pkgutil
import re

import pytest

from visual_search import config, errors

PACKAGE = config.REPO_ROOT / "lib" / "visual_search"

#: Layers, bottom up. A module may import modules of lower layers, and of its own
#: layer only within its own package (index.* from index.*); leaves import leaves.
LAYERS = [
    {"errors", "_checks", "config", "container", "metrics", "timing", "viz"},
    {"data"},
    {"preprocess"},
    {"models"},
    {"embed"},
    {"augment"},
    {"clicks"},
    {"contrastive"},
    {"train"},
    {"index"},
    {"evalset"},
    {"topics"},
    {"service"},
    {"online", "scale"},
    {"exercises", "interview"},
    {"notebook_runner"},
    {"course_docs"},
    {"bench"},
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(path):
    """The visual_search modules a file imports, as top-level names (``index``, ``models``, ...)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module == "visual_search" else [node.module]
        else:
            continue
        for name in names:
            if name.startswith("visual_search."):
                found.add(name.split(".")[1])
    return found


def test_every_module_sits_in_a_layer():
    tops = {name.split(".")[0] for name, _ in _modules() if name}
    assert tops <= set(LAYER_OF), f"add {sorted(tops - set(LAYER_OF))} to LAYERS"


@pytest.mark.parametrize("name, path", list(_modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_run_one_way(name, path):
    if not name:
        return  # the package's own __init__ imports nothing
    top = name.split(".")[0]
    for imported in _imports(path):
        if imported == top:
            continue  # inside one package (index.* from index.*)
        assert LAYER_OF[imported] < LAYER_OF[top] or LAYER_OF[top] == 0 == LAYER_OF[imported], (
            f"visual_search.{name} imports visual_search.{imported}, which sits to its right (or beside it)"
        )


def test_nothing_imports_bench_not_even_a_notebook():
    for name, path in _modules():
        if not name.startswith("bench"):
            assert "bench" not in _imports(path), f"visual_search.{name} imports bench"
    for notebook in sorted((config.REPO_ROOT / "notebooks").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
        code = re.sub(r"#.*", "", code)  # a comment may name the benchmark that wrote a result
        assert not re.search(r"visual_search(\.| import .*)bench", code), f"{notebook.name} imports bench"


def _library_exceptions():
    import visual_search.bench  # noqa: F401  (import everything, so every class is defined)

    for info in pkgutil.walk_packages(visual_search.__path__, "visual_search."):
        if info.name.endswith("__main__"):
            continue  # running it would run the command line
        module = __import__(info.name, fromlist=["_"])
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("visual_search"):
                yield cls


def test_every_library_exception_is_a_visual_search_error():
    classes = set(_library_exceptions())
    assert classes, "found no exception classes"
    for cls in classes:
        assert issubclass(cls, errors.VisualSearchError) and issubclass(cls, ValueError), cls


def test_the_library_raises_only_its_own_errors():
    """No bare ValueError/TypeError/RuntimeError raised on purpose: the HTTP layer maps one family."""
    offenders = []
    for name, path in _modules():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\braise (ValueError|TypeError|RuntimeError|KeyError|IndexError)\(", line):
                offenders.append(f"{name}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
