"""Sizes as JDLs write them (``8GB``, ``11000MB``, ``{"6000MB"}``) and durations."""

from __future__ import annotations

import re

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
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes for a size such as ``8GB``, ``11000 MB`` or ``512`` (megabytes).

    Raises ValueError with a message that shows an accepted form."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f'\'{text}\' is not a size; write it like "8GB" or "11000MB"')
    number, unit = m.group(1), m.group(2).casefold() or "mb"
    if unit not in _UNITS:
        raise ValueError(f"unknown size unit '{m.group(2)}' in '{text}'; use B, KB, MB, GB or TB")
    value = float(number) * _UNITS[unit] if "." in number else int(number) * _UNITS[unit]
    size = int(value)
    if size <= 0:
        raise ValueError(f"size '{text}' must be more than zero")
    return size


def format_size(size: int) -> str:
    """The shortest exact spelling of ``size`` bytes that ``parse_size`` reads back."""
    for unit, factor in (("TB", TIB), ("GB", GIB), ("MB", MIB), ("KB", KIB)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
