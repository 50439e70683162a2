"""What this host's kernel provides for the sandbox: read, never assumed.

Each fact is probed the cheap way (a /proc or /sys file, one harmless system call) and
says what it found, so ``policy explain`` can tell a reviewer which requirements this
node can enforce and which would fail closed (or run unenforced, if optional).
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path

_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture (new syscall table)
_LANDLOCK_CREATE_RULESET_VERSION = 1


@dataclass(frozen=True)
class Fact:
    available: bool
    detail: str


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def user_namespaces() -> Fact:
    if os.geteuid() == 0:
        return Fact(True, "root may make user namespaces")
    limit = _read("/proc/sys/user/max_user_namespaces")
    if limit is not None and limit == "0":
        return Fact(False, "user.max_user_namespaces is 0; raise it (sysctl)")
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return Fact(False, "kernel.unprivileged_userns_clone is 0; set it to 1 (sysctl)")
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return Fact(
            False, "AppArmor restricts unprivileged user namespaces; allow bwrap in a profile"
        )
    return Fact(True, "unprivileged user namespaces are allowed")


def cgroup_namespace() -> Fact:
    if Path("/proc/self/ns/cgroup").exists():
        return Fact(True, "the kernel has cgroup namespaces")
    return Fact(False, "no cgroup namespaces in this kernel (older than 4.6)")


def landlock() -> Fact:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return Fact(False, "cannot ask the kernel (no syscall() in libc)")
    if abi >= 1:
        return Fact(True, f"landlock ABI {abi}")
    error = ctypes.get_errno()
    if error == 38:  # ENOSYS
        return Fact(False, "the kernel has no landlock (5.13 or later, CONFIG_SECURITY_LANDLOCK)")
    return Fact(False, f"landlock is disabled ({os.strerror(error)}); add it to the lsm= boot list")


def seccomp() -> Fact:
    status = _read("/proc/self/status") or ""
    if "Seccomp:" in status:
        return Fact(True, "the kernel filters system calls (seccomp)")
    return Fact(False, "no seccomp in this kernel (CONFIG_SECCOMP_FILTER)")


def cgroups() -> Fact:
    """Whether the agent can make a child cgroup for the job where it stands."""
    own = _read("/proc/self/cgroup") or ""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        path = next(
            (line.split("::", 1)[1] for line in own.splitlines() if line.startswith("0::")), "/"
        )
        directory = Path("/sys/fs/cgroup") / path.lstrip("/")
        if os.access(directory, os.W_OK):
            return Fact(True, f"cgroup v2, {directory} is writable")
        return Fact(False, f"cgroup v2, but {directory} is not writable; delegate it to the agent")
    writable = []
    for controller in ("memory", "pids", "cpu"):
        line = next((entry for entry in own.splitlines()
                     if controller in entry.split(":")[1].split(",")), None)  # fmt: skip
        if line is None:
            continue
        directory = Path("/sys/fs/cgroup") / controller / line.split(":", 2)[2].lstrip("/")
        if os.access(directory, os.W_OK):
            writable.append(controller)
    if {"memory", "pids", "cpu"} <= set(writable):
        return Fact(True, "cgroup v1, memory, pids and cpu writable")
    return Fact(False, f"cgroup v1, writable controllers: {', '.join(writable) or 'none'}")


@functools.cache
def facts() -> dict[str, Fact]:
    """The host's answer for each policy requirement that depends on the kernel."""
    cgroup = cgroups()
    out = {
        "namespaces.user": user_namespaces(),
        "namespaces.cgroup": cgroup_namespace(),
        "process.landlock": landlock(),
        "process.seccomp": seccomp(),
    }
    for name in ("cpu_cores", "memory", "swap", "pids"):
        out[f"limits.{name}"] = cgroup
    return out
