"""Sizes as JDLs write them (``8GB``, ``11000MB``, ``{"6000MB"}``) and durations."""

from __future__ import annotations

import re

from sandbox_agent.printable import clipped

KIB = 1024
MIB = KIB * 1024
GIB = MIB * 1024
TIB = GIB * 1024

# Units are binary, so "8GB" is 8 * 1024**3 bytes; a bare number is megabytes, the
# unit JAliEn sites use for MemorySize and WorkDirectorySize.
_UNITS = {
    "b": 1,
    "k": KIB, "kb": KIB, "kib": KIB,
    "m": MIB, "mb": MIB, "mib": MIB,
    "g": GIB, "gb": GIB, "gib": GIB,
    "t": TIB, "tb": TIB, "tib": TIB,
}  # fmt: skip
_SIZE = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,6})?) ?([A-Za-z]{0,8})")
MAX_SIZE = 1024 * TIB  # a petabyte: beyond any worker node


def parse_size(text: str) -> int:
    """Bytes for a size such as ``8GB``, ``11000 MB`` or ``512`` (megabytes).

    Raises ValueError with a message that shows an accepted form."""
    # Strip, then match a bounded, anchored pattern: no backtracking on hostile input.
    m = _SIZE.fullmatch(text.strip()) if len(text) <= 64 else None
    if not m:
        raise ValueError(f'\'{clipped(text, 40)}\' is not a size; write it like "8GB" or "11000MB"')
    number, unit = m.group(1), m.group(2).casefold() or "mb"
    if unit not in _UNITS:
        raise ValueError(f"unknown size unit '{m.group(2)}'; use B, KB, MB, GB or TB")
    size = int(float(number) * _UNITS[unit]) if "." in number else int(number) * _UNITS[unit]
    if not 0 < size <= MAX_SIZE:
        raise ValueError(f"size '{text.strip()}' must be more than zero and at most 1024TB")
    return size


def format_size(size: int) -> str:
    """The shortest exact spelling of ``size`` bytes that ``parse_size`` reads back."""
    for unit, factor in (("TB", TIB), ("GB", GIB), ("MB", MIB), ("KB", KIB)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
