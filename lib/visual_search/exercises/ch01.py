"""Checks for chapter 01's exercises (see notebooks/01_*.ipynb and solutions/01_*.py)."""

from __future__ import annotations
