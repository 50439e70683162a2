"""Reading a file the program was pointed at, without being fooled into a device or a FIFO."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def read_capped(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit`` + 1 of them (so a caller can tell it is
    too big): a device or a FIFO given as a file is refused, never read or waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return handle.read(limit + 1)
