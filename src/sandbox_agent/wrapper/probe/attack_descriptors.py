"""Descriptors: the payload uses a descriptor the agent held open (a token file, a
socket) and passed down by mistake. Every descriptor the probe started with beyond 0-2
is one, and so is the canary descriptor the test left open in front of the agent.

Defence: the launcher starts the runtime with close_fds, passing only the seccomp
program.

The runner calls ``record_start`` before anything else opens a descriptor, and runs
this attack first, so that nothing the probe opens itself is taken for inherited.
"""

import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the package; the sandbox imports plain names (run.py)
    from sandbox_agent.wrapper.probe import attack_common as common
    from sandbox_agent.wrapper.probe.attack_common import Config, Result
else:
    import attack_common as common

MECHANISM = "descriptors"
_AT_START: "list[int]" = []  # the descriptors the probe was started with


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def record_start() -> None:
    """Note the descriptors open now. The listing's own directory descriptor is closed
    once it returns: keep only the descriptors still open."""
    _AT_START[:] = sorted(int(fd) for fd in os.listdir("/proc/self/fd") if _open(int(fd)))


def inherited_fds(config: "Config") -> "Result":
    """Use a descriptor the agent left open (a token file, a socket): every descriptor
    the probe started with beyond 0-2 is one, and is read."""
    extra = [fd for fd in _AT_START if fd > 2]
    canary = config.get("canary_fd")
    if canary is not None and canary not in extra:
        try:
            os.fstat(canary)
            extra.append(canary)  # open now though not at start: still not ours to have
        except OSError as exc:
            canary_note = common.oserror(f"fstat({canary})", exc)
        else:
            canary_note = ""
    else:
        canary_note = "" if canary is None else f"fd {canary} was open at start"
    if not extra:
        return common.blocked(f"only 0-2 at start; {canary_note}".rstrip("; "))
    seen = []
    for fd in extra:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = "?"
        try:
            os.set_blocking(fd, False)  # a pipe or socket must not hang the probe
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            data = os.pread(fd, 4096, 0) if regular else os.read(fd, 4096)
            what = "the secret" if common.found(data, config) else f"{len(data)} bytes"
        except OSError as exc:
            what = common.oserror("read", exc)
        seen.append(f"fd {fd} -> {target}: {what}")
    return common.leaked("; ".join(seen))


ATTACKS = {
    "inherited_fds": common.Attack(MECHANISM, "the payload uses a descriptor the agent held "
                                   "(a token file, a socket)", "the launcher starts the "
                                   "runtime with close_fds, passing only the seccomp program",
                                   inherited_fds),
}  # fmt: skip
