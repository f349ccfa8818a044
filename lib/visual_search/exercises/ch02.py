"""Checks for chapter 02's exercises (see notebooks/02_*.ipynb and solutions/02_*.py)."""

from __future__ import annotations
