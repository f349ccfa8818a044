"""The namespace the notebooks call: ``check.ch04.info_nce(my_loss)``.

Each chapter's checks live in ``visual_search.exercises.chNN``; this module only gathers
them under one name, so a notebook needs one import::

    from visual_search.exercises import check
    check.ch10.merge(merge)
"""

from __future__ import annotations

from visual_search.exercises import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11, ch12

__all__ = ["ch01", "ch02", "ch03", "ch04", "ch05", "ch06", "ch07", "ch08", "ch09", "ch10", "ch11", "ch12"]
