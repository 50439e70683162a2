"""Where each key of a TOML file is written, so errors and provenance can say file:line.

tomllib gives values but no positions. This scanner reads the same text line by line
and records the line of every table header and every ``key =`` assignment, by its
dotted path.  It only has to agree with tomllib on files tomllib accepted, which keeps
it small: it tracks strings and brackets so that a multi-line array does not look like
new keys.
"""

from __future__ import annotations

import re

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})(?:\s*\.\s*(?:{_BARE}|{_QUOTED}))*"
_TABLE = re.compile(rf"\s*(\[\[?)\s*({_KEY})\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"\s*({_KEY})\s*=")


def _parts(key: str) -> list[str]:
    out = []
    for match in re.finditer(rf"{_BARE}|{_QUOTED}", key):
        token = match.group()
        out.append(token[1:-1] if token[0] in "\"'" else token)
    return out


def key_lines(text: str) -> dict[str, int]:
    """Map ``table.key`` paths (array-of-table entries as ``table[0].key``) to 1-based
    line numbers."""
    lines: dict[str, int] = {}
    table: list[str] = []
    array_counts: dict[str, int] = {}
    depth = 0  # open [ or { of a value spanning lines
    in_multiline: str | None = None  # the delimiter of an open multi-line string
    for number, line in enumerate(text.splitlines(), 1):
        if in_multiline:
            if in_multiline in line:
                in_multiline = None
            continue
        if depth == 0:
            header = _TABLE.match(line)
            if header:
                path = _parts(header.group(2))
                if header.group(1) == "[[":
                    name = ".".join(path)
                    index = array_counts.get(name, -1) + 1
                    array_counts[name] = index
                    path = [*path[:-1], f"{path[-1]}[{index}]"]
                table = path
                lines[".".join(table)] = number
                continue
            assign = _ASSIGN.match(line)
            if assign:
                lines[".".join(table + _parts(assign.group(1)))] = number
                line = line[assign.end() :]
        depth, in_multiline = _scan(line, depth)
    return lines


def _scan(line: str, depth: int) -> tuple[int, str | None]:
    """Bracket depth after ``line``, skipping strings and comments."""
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "#":
            break
        if line.startswith('"""', i) or line.startswith("'''", i):
            delimiter = line[i : i + 3]
            end = line.find(delimiter, i + 3)
            if end < 0:
                return depth, delimiter
            i = end + 3
            continue
        if ch in "\"'":
            i += 1
            while i < len(line) and line[i] != ch:
                i += 2 if ch == '"' and line[i] == "\\" else 1
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return depth, None
