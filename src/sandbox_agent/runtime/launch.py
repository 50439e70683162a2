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

from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.runtime.plan import LaunchPlan
from sandbox_agent.seccomp.compile import bpf_fd, compile_profile

_RLIMITS = {
    "core": resource.RLIMIT_CORE,
    "nofile": resource.RLIMIT_NOFILE,
    "stack": resource.RLIMIT_STACK,
    "fsize": resource.RLIMIT_FSIZE,
}


class RuntimeMissing(RuntimeError):
    """The runtime's binary is not there: one line saying which and how to get it."""


@dataclass(frozen=True)
class Started:
    process: subprocess.Popen[bytes]
    seccomp_sha256: str


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

        def before_exec() -> None:  # runs in the child, between fork and exec
            for which, value in limits.items():
                resource.setrlimit(which, (value, value))

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
    return Started(process, compiled.sha256)


def _fd_argument(argv: Sequence[str], number: int) -> int:
    for index in range(len(argv) - 1):
        if argv[index] == "--seccomp" and argv[index + 1] == str(number):
            return index + 1
    raise ValueError(f"the plan names fd {number} but its argv does not use it")
