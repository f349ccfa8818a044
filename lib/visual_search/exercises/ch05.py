"""Checks for chapter 05's exercises (see notebooks/05_*.ipynb and solutions/05_*.py)."""

from __future__ import annotations
