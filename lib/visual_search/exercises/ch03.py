"""Checks for chapter 03's exercises (see notebooks/03_*.ipynb and solutions/03_*.py)."""

from __future__ import annotations
