"""The mount table (/proc/self/mountinfo), read for two questions: is something mounted
at this point (a FUSE mount whose daemon died is still listed, where stat fails), and
what filesystem holds this path (one nobody can change needs no owner checks).

Paths are compared as bytes, escapes undone (space, tab, newline and backslash are
written in octal), and a mount is believed to hold a path only if its device number is
the path's own: a mount hidden under a later one over a parent is not it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    point: bytes
    device: tuple[int, int]  # major, minor
    fstype: str
    source: str
    options: tuple[str, ...]  # the superblock's options (user_id=... for FUSE)


def read_table() -> bytes:
    try:
        with open("/proc/self/mountinfo", "rb") as file:
            return file.read()
    except OSError:
        return b""


def mounts(table: bytes) -> list[Mount]:
    out = []
    for line in table.splitlines():
        before, separator, after = line.partition(b" - ")
        fields, tail = before.split(b" "), after.split(b" ")
        if not separator or len(fields) < 5 or len(tail) < 3:
            continue
        major, _, minor = fields[2].partition(b":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        out.append(Mount(unescape(fields[4]), (int(major), int(minor)),
                         tail[0].decode(errors="replace"), tail[1].decode(errors="replace"),
                         tuple(tail[2].decode(errors="replace").split(","))))  # fmt: skip
    return out


def unescape(field: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field)


def mounted_at(point: str, table: bytes | None = None) -> bool:
    """Whether something is mounted at ``point``."""
    wanted = os.fsencode(point)
    return any(m.point == wanted for m in mounts(read_table() if table is None else table))


def holding(path: str, table: bytes | None = None) -> Mount | None:
    """The mount that holds ``path`` (resolved): the deepest one over it whose device is
    the path's own; None when that cannot be told."""
    real = os.fsencode(os.path.realpath(path))
    try:
        device = os.stat(real).st_dev
    except OSError:
        return None
    best: Mount | None = None
    for mount in mounts(read_table() if table is None else table):
        point = mount.point
        inside = point == b"/" or real == point or real.startswith(point.rstrip(b"/") + b"/")
        if inside and (best is None or len(point) >= len(best.point)):
            best = mount
    if best is None or best.device != (os.major(device), os.minor(device)):
        return None
    return best
