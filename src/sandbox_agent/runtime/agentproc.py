"""The agent's own process: hardened before it starts any job.

PR_SET_DUMPABLE 0: processes of the same uid can no longer read the agent's memory or
/proc/<pid>/environ, nor ptrace it. PR_SET_CHILD_SUBREAPER: a job's orphaned processes
come back to the agent rather than to init, so it can find and kill them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import NoReturn

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


class Terminated(Exception):
    """The agent was asked to stop (SIGTERM, SIGHUP) while a job ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_handled(
    stops: tuple[signal.Signals, ...], handler: Callable[[int, object], None]
) -> Iterator[None]:
    """``handler`` for ``stops`` inside the block; the previous actions restored after."""
    previous = {stop: signal.signal(stop, handler) for stop in stops}
    try:
        yield
    finally:
        for stop, action in previous.items():
            signal.signal(stop, action)


def raise_terminated(stops: tuple[signal.Signals, ...], signum: int) -> NoReturn:
    """Ignore further stop signals (they must not interrupt the teardown), then raise."""
    for stop in stops:
        signal.signal(stop, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated inside the block, so the job's teardown (a
    finally) runs: their default action ends the agent at once, its job's cgroup left
    behind. Batch systems send SIGTERM as a matter of course."""
    stops = (signal.SIGTERM, signal.SIGHUP)
    with signals_handled(stops, lambda signum, _frame: raise_terminated(stops, signum)):
        yield


def reap(pids: Iterable[int]) -> None:
    """Collect the exit status of those of ``pids`` that are our finished children: as a
    subreaper the agent inherits a job's orphans (bwrap's first process among them),
    and nobody else waits for them."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
