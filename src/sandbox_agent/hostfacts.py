"""What this host's kernel provides for the sandbox: read, never assumed.

Each fact is probed the cheap way (a /proc or /sys file, one harmless system call) and
says what it found, so ``policy explain`` can tell a reviewer which requirements this
node can enforce and which would fail closed (or run unenforced, if optional). It asks
the sandbox layer where job cgroups go (limits.discover), so it sits beside it: policy
is handed these facts, it does not import them.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox_agent.limits import workdisk
from sandbox_agent.limits.cgroups import CGROUP_LIMITS, CgroupError, discover
from sandbox_agent.runtime import egressns

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
    return unprivileged_user_namespaces()


def unprivileged_user_namespaces() -> Fact:
    """Whether a user other than root may make user namespaces (the sandbox's own uid,
    when root runs the agent, is one)."""
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


def egress() -> Fact:
    """Whether the agent can plumb a job's network namespace for egress (docs/network.md)."""
    lacking = egressns.lacking()
    if lacking is not None:
        return Fact(False, lacking)
    return Fact(True, "ip and nft are here: the agent can plumb a job's network for egress")


def cgroup_limits() -> dict[str, Fact]:
    """For each limit a cgroup can hold: whether the agent can make a job cgroup here
    that holds it (the launcher's own discovery, so explain and launch agree)."""
    try:
        hierarchy = discover()
    except CgroupError as exc:
        return {name: Fact(False, f"no job cgroup: {exc}") for name in CGROUP_LIMITS}
    return {
        name: Fact(True, hierarchy.holder(name))
        if name in hierarchy.enforceable
        else Fact(False, f"{hierarchy.describe()}: cannot hold {name}")
        for name in CGROUP_LIMITS
    }


def cgroup_where() -> str:
    """Where a job's cgroup would be made here, or why there would be none, as the
    session says it (runtime/session.job_cgroup)."""
    try:
        return f"the job's cgroup ({discover().describe()})"
    except CgroupError as exc:
        return f"no job cgroup ({exc})"


def held_limits(found: Mapping[str, Fact]) -> frozenset[str]:
    """The limits a job's cgroup would hold here (``found``: facts()), and workdir_size
    where the pilot can make the work directory a filesystem of its size."""
    held = {key.removeprefix("limits.") for key, fact in found.items()
            if key.startswith("limits.") and fact.available}  # fmt: skip
    if workdisk.mechanism()[0] is not None:
        held.add("workdir_size")
    return frozenset(held)


@functools.cache
def facts() -> dict[str, Fact]:
    """The host's answer for each policy requirement that depends on the kernel."""
    out = {
        "namespaces.user": user_namespaces(),
        "namespaces.cgroup": cgroup_namespace(),
        "process.landlock": landlock(),
        "process.seccomp": seccomp(),
        "network.mode": egress(),
    }
    for name, fact in cgroup_limits().items():
        out[f"limits.{name}"] = fact
    return out
