"""Auto-checked exercises for every chapter: ``check.<chapter>.<name>(answer)``.

In a notebook, an exercise is a stub that raises ``NotImplementedError`` and a check call::

    from visual_search.exercises import check

    def merge(parts, k):
        raise NotImplementedError  # your code here

    check.ch10.merge(merge)

The check runs the answer on randomised cases against the library's own implementation
and prints either a pass or the first case it gets wrong, with what was expected, what
came back and a hint; it never just says "wrong", and it never raises for a wrong answer,
so a notebook with open exercises still runs top to bottom. Worked solutions live in
``solutions/NN_topic.py``; ``tests/test_exercises.py`` feeds every solution and every
notebook stub to its check, so a check that cannot fail is caught.
"""

from __future__ import annotations

from visual_search.exercises import check
from visual_search.exercises._core import EXERCISES, CheckResult, ExerciseError, checker

__all__ = ["EXERCISES", "CheckResult", "ExerciseError", "check", "checker"]
