"""Starting a launch plan: the seccomp program on its descriptor, rlimits, nothing else
inherited.

The runtime process (bwrap here) gets exactly: stdin, stdout and stderr, and the
seccomp descriptor the plan names. Every other descriptor of the agent is closed in
the child (``close_fds``), the rlimits of the policy are set before exec (they are
inherited through the sandbox), and the environment is empty: the sandbox's variables
are in the argv (``--setenv``), the agent's are not passed on.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sandbox_agent.policy.compose import EffectivePolicy, within
from sandbox_agent.runtime.plan import LaunchPlan, Unenforceable
from sandbox_agent.seccomp.compile import bpf_fd, compile_profile

_RLIMITS = {
    "core": resource.RLIMIT_CORE,
    "nofile": resource.RLIMIT_NOFILE,
    "stack": resource.RLIMIT_STACK,
    "fsize": resource.RLIMIT_FSIZE,
}


# Who enforces what: the launcher starts the runtime with its flags, rlimits and
# descriptors. The wrapper (landlock, the payload's session) and the agent (cgroups,
# monitors) are not written yet: what they would enforce fails closed unless optional.
IMPLEMENTED_BY = ("runtime", "launcher")
# When the agent is root, the sandbox is started as this host user, never as root: a
# user namespace maps the payload onto the uid that starts it, and host uid 0 may write
# sysctls and device nodes whatever the capabilities.
SANDBOX_HOST_UID = 65534


class RuntimeMissing(RuntimeError):
    """The runtime's binary is not there: one line saying which and how to get it."""


class WorkdirRefused(ValueError):
    """A work directory the sandbox must not get: one line saying why."""


@dataclass(frozen=True)
class Started:
    process: subprocess.Popen[bytes]
    seccomp_sha256: str
    unenforced: tuple[str, ...]  # optional requirements nothing enforces here


def unenforced(plan: LaunchPlan, effective: EffectivePolicy) -> tuple[str, ...]:
    """The optional requirements this launch does not enforce; raises Unenforceable for
    a required one."""
    optional = {i.value for i in effective["optional.requirements"].value}
    skipped = []
    for req in plan.requirements:
        if req.met and req.by in IMPLEMENTED_BY:
            continue
        if req.key in optional or req.key.rsplit(".", 1)[0] in optional:
            skipped.append(req.key)
            continue
        who = "its runtime" if req.by == "runtime" else f"the {req.by}"
        raise Unenforceable(f"{req.key}: {req.how}: enforced by {who}, not implemented yet")
    return tuple(skipped)


def check_workdir(path: Path, effective: EffectivePolicy) -> str:
    """The work directory as the sandbox gets it: an existing directory reached without
    any symlink, away from every denied path (the agent's credentials among them)."""
    absolute = os.path.abspath(path)
    if os.path.realpath(absolute) != absolute:
        raise WorkdirRefused(f"{path}: the work directory's path goes through a symlink")
    if not os.path.isdir(absolute):
        raise WorkdirRefused(f"{path}: the work directory must be an existing directory")
    for item in effective["filesystem.deny"].value:
        denied = os.path.abspath(item.value)
        if within(absolute, denied) or within(denied, absolute):
            raise WorkdirRefused(
                f"{path}: the work directory reaches the denied path {denied} ({item.origin})"
            )
    if os.geteuid() == 0:
        info = os.stat(absolute)
        if info.st_uid != SANDBOX_HOST_UID and not info.st_mode & 0o002:
            raise WorkdirRefused(
                f"{path}: as root the sandbox runs as uid {SANDBOX_HOST_UID}, which cannot "
                f"write here; run: chown {SANDBOX_HOST_UID} {path}"
            )
    return absolute


def rlimits(effective: EffectivePolicy) -> dict[int, int]:
    return {
        number: effective.number(f"process.rlimits.{name}") for name, number in _RLIMITS.items()
    }


def start(
    plan: LaunchPlan,
    effective: EffectivePolicy,
    *,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
) -> Started:
    """Start the plan's argv. The caller waits for the process."""
    skipped = unenforced(plan, effective)
    argv = list(plan.argv)
    binary = shutil.which(argv[0])
    if binary is None:
        raise RuntimeMissing(
            f"{argv[0]} is not installed or not on PATH (Debian/Ubuntu: apt-get install "
            f"{'bubblewrap' if argv[0] == 'bwrap' else argv[0]})"
        )
    compiled = compile_profile(Path(plan.seccomp_profile))
    fds: list[int] = []
    try:
        for number in plan.fds:
            fd = bpf_fd(compiled.bpf)
            fds.append(fd)
            # the plan names a descriptor number; give the runtime the one we have
            position = _fd_argument(argv, number)
            argv[position] = str(fd)
        limits = rlimits(effective)

        drop = os.geteuid() == 0

        def before_exec() -> None:  # runs in the child, between fork and exec
            for which, value in limits.items():
                resource.setrlimit(which, (value, value))
            if drop:
                os.setgroups([])
                os.setresgid(SANDBOX_HOST_UID, SANDBOX_HOST_UID, SANDBOX_HOST_UID)
                os.setresuid(SANDBOX_HOST_UID, SANDBOX_HOST_UID, SANDBOX_HOST_UID)

        process = subprocess.Popen(
            argv,
            executable=binary,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env={},
            close_fds=True,
            pass_fds=tuple(fds),
            preexec_fn=before_exec,
        )
    finally:
        for fd in fds:
            os.close(fd)
    return Started(process, compiled.sha256, skipped)


def _fd_argument(argv: Sequence[str], number: int) -> int:
    for index in range(len(argv) - 1):
        if argv[index] == "--seccomp" and argv[index + 1] == str(number):
            return index + 1
    raise ValueError(f"the plan names fd {number} but its argv does not use it")
