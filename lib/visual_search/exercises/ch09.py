"""Checks for chapter 09's exercises (see notebooks/09_*.ipynb and solutions/09_*.py)."""

from __future__ import annotations
