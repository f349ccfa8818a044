"""Checks for chapter 11's exercises (see notebooks/11_*.ipynb and solutions/11_*.py)."""

from __future__ import annotations
