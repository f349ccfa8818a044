"""Checks for chapter 06's exercises (see notebooks/06_*.ipynb and solutions/06_*.py)."""

from __future__ import annotations
