"""Checks for chapter 07's exercises (see notebooks/07_*.ipynb and solutions/07_*.py)."""

from __future__ import annotations
