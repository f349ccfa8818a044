"""Checks for chapter 08's exercises (see notebooks/08_*.ipynb and solutions/08_*.py)."""

from __future__ import annotations
