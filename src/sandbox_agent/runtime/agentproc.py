"""The agent's own process: hardened before it starts any job.

PR_SET_DUMPABLE 0: processes of the same uid can no longer read the agent's memory or
/proc/<pid>/environ, nor ptrace it. PR_SET_CHILD_SUBREAPER: a job's orphaned processes
come back to the agent rather than to init, so it can find and kill them.
"""

from __future__ import annotations

import ctypes
import os

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def _prctl(option: int, value: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result = int(libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0))
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl({option}): {os.strerror(error)}")
    return result


def harden() -> None:
    """Make this process undumpable and a subreaper for everything it starts."""
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def state() -> tuple[bool, bool]:
    """(dumpable, subreaper) of this process, as the kernel reports them."""
    dumpable = _prctl(PR_GET_DUMPABLE, 0) == 1
    flag = ctypes.c_int(0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
    return dumpable, flag.value == 1
