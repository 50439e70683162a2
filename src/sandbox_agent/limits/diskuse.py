"""How much disk a job's work directory holds, measured without trusting it.

The payload owns the work directory and changes it while the agent measures, so the
walk never resolves a path: every directory is opened relative to its parent's
descriptor with O_NOFOLLOW, entries are stat'ed relative to that descriptor, and the
walk stays on the work directory's filesystem. Anything that stops a full measurement
(a directory the agent may not open, a swap of a directory for a symlink, too many
entries, too deep, too long) gives None: the caller counts that as over the limit,
since a payload could otherwise hide data there.

Files the payload deleted but still holds open take space no walk can see; they are
found through /proc/<pid>/fd of the job's processes.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path

MAX_ENTRIES = 1_000_000  # more than this counts as over any limit
MAX_DEPTH = 256  # directories nested deeper count as over too: one descriptor per level
WALK_BUDGET = 2.0  # seconds: a walk slower than this must not stall the agent's checks
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Unmeasurable(Exception):
    pass


def directory_size(
    path: Path,
    limit_entries: int = MAX_ENTRIES,
    budget: float = WALK_BUDGET,
    max_depth: int = MAX_DEPTH,
) -> int | None:
    """Bytes allocated under ``path`` (sparse files at their real size, hard links per
    name), or None when it cannot be measured fully."""
    try:
        root = os.open(path, _DIRECTORY)
    except OSError:
        return None
    device = os.fstat(root).st_dev
    deadline = time.monotonic() + budget
    seen = 0
    total = 0
    # one frame per open level: (descriptor, the subdirectory names still to visit)
    frames: list[tuple[int, list[str]]] = []
    try:
        fd = root
        while True:
            subdirectories: list[str] = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    seen += 1
                    if seen > limit_entries or time.monotonic() > deadline:
                        raise _Unmeasurable
                    info = entry.stat(follow_symlinks=False)  # fstatat on fd: no path
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                        subdirectories.append(entry.name)
            frames.append((fd, subdirectories))
            fd = -1
            while frames and not frames[-1][1]:
                os.close(frames.pop()[0])
            if not frames:
                return total
            if len(frames) > max_depth:
                raise _Unmeasurable
            parent, names = frames[-1]
            fd = os.open(names.pop(), _DIRECTORY, dir_fd=parent)
    except (OSError, _Unmeasurable):
        if fd >= 0 and all(fd != f for f, _ in frames):
            os.close(fd)
        return None
    finally:
        for open_fd, _ in frames:
            os.close(open_fd)


def deleted_but_open(pids: Iterable[int], device: int) -> int:
    """Bytes of regular files on ``device`` that processes in ``pids`` hold open after
    removing them (each inode once)."""
    counted: set[int] = set()
    total = 0
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to read
        for name in descriptors:
            try:
                info = os.stat(f"/proc/{pid}/fd/{name}")  # the open file itself
            except OSError:
                continue
            if (info.st_dev == device and info.st_nlink == 0 and stat.S_ISREG(info.st_mode)
                    and info.st_ino not in counted):  # fmt: skip
                counted.add(info.st_ino)
                total += info.st_blocks * 512
    return total
