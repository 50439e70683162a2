"""Fixtures the pilot's tests share with the engines' (tests/pilot_support.py)."""

from pilot_support import home, world  # noqa: F401
