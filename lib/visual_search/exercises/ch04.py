"""Checks for chapter 04's exercises (see notebooks/04_*.ipynb and solutions/04_*.py)."""

from __future__ import annotations
