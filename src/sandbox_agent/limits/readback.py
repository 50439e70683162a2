"""The limits the kernel holds a running process to, read back from its cgroups.

A container engine makes the container's cgroup itself, out of the agent's hands, and
some engines ignore a limit they were asked for and say so only in a warning (rootless
Podman on cgroup v1 exits 0 with none of --memory, --cpus or --pids-limit set). The
agent therefore reads what holds the process before the job is let go: for each limit,
the tightest value on its cgroup and every ancestor the agent can see, in the hierarchy
that has the controller (a v1 controller's own mount, or the unified v2 one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sandbox_agent.limits.cgroup_base import (
    JobCgroup,
    Mount,
    located,
    membership,
    mounts,
    read_text,
)
from sandbox_agent.limits.cgroup_v1 import V1Cgroup
from sandbox_agent.limits.cgroup_v2 import V2Cgroup

_Value = TypeVar("_Value", int, float)
# v1 reports "no limit" as a page-rounded huge number rather than "max"
_UNLIMITED_V1 = 1 << 62


@dataclass(frozen=True)
class Held:
    """What holds a process: None where nothing the agent can see limits it."""

    memory: int | None  # bytes
    pids: int | None
    cpu_cores: float | None  # quota / period
    swap: int | None = None  # bytes of swap (v2 memory.swap.max; v1 memsw less memory)

    def short_of(self, memory: int, pids: int, cpu_cores: float) -> list[str]:
        """The limits not held at (or below) the values asked, each in words."""
        out = []
        if self.memory is None or self.memory > memory:
            out.append(f"memory {_said(self.memory)} (asked {memory})")
        if self.pids is None or self.pids > pids:
            out.append(f"pids {_said(self.pids)} (asked {pids})")
        if self.cpu_cores is None or self.cpu_cores > cpu_cores + 1e-6:
            out.append(f"cpu_cores {_said(self.cpu_cores)} (asked {cpu_cores:g})")
        return out


def _said(value: int | float | None) -> str:
    if value is None:
        return "unlimited"
    return f"{value:g}" if isinstance(value, float) else str(value)


def held(pid: int, *, proc: Path = Path("/proc")) -> Held:
    """The memory, pids and CPU limits on ``pid``'s cgroups, tightest first.
    ProcessLookupError when the process is gone (nothing of it can be read)."""
    text = read_text(proc / str(pid) / "cgroup")
    if text is None:
        raise ProcessLookupError(pid)
    where = membership(text)
    found = mounts(read_text(proc / "self" / "mountinfo") or "")
    memory = _tightest(where, found, "memory", _memory)
    pids = _tightest(where, found, "pids", _pids)
    cores = _tightest(where, found, "cpu", _cpu)
    swap = _tightest(where, found, "memory", _swap)
    return Held(memory, pids, cores, swap)


def cgroup_of(pid: int, *, proc: Path = Path("/proc")) -> JobCgroup | None:
    """A view of the cgroup ``pid`` is in (a container's, made by its engine), to read
    what the kernel counted for it (usage()) once it ended: the memory, cpuacct and
    pids directories on v1, the unified directory on v2. None when it cannot be seen.
    Nothing is written through it."""
    text = read_text(proc / str(pid) / "cgroup")
    if text is None:
        return None
    where = membership(text)
    found = mounts(read_text(proc / "self" / "mountinfo") or "")
    if "" in where and all(m.fstype == "cgroup2" for m in found):  # a pure v2 host
        mount = next((m for m in found if m.fstype == "cgroup2"), None)
        directory = located(mount, where[""]) if mount else None
        return V2Cgroup(directory, set()) if directory else None
    directories = {}
    for controller in ("memory", "cpuacct", "pids"):
        mount = next((m for m in found if m.fstype == "cgroup" and controller in m.controllers),
                     None)  # fmt: skip
        key = next((k for k in where if controller in k.split(",")), None)
        if mount is not None and key is not None:
            directory = located(mount, where[key])
            if directory is not None:
                directories[controller] = directory
    return V1Cgroup(directories, frozenset()) if directories else None


def _tightest(
    where: dict[str, str], found: list[Mount], controller: str,
    read: Callable[[Path, int], _Value | None],
) -> _Value | None:  # fmt: skip
    for mount in found:
        if mount.fstype == "cgroup" and controller in mount.controllers:
            key = next((k for k in where if controller in k.split(",")), None)
            version = 1
        elif mount.fstype == "cgroup2" and controller in _v2_controllers(mount):
            key, version = "", 2
        else:
            continue
        if key is None or key not in where:
            continue
        directory = located(mount, where[key])
        if directory is None:
            continue
        values = []
        while True:
            value = read(directory, version)
            if value is not None:
                values.append(value)
            if directory == mount.point:
                break
            directory = directory.parent
        return min(values) if values else None
    return None


def _v2_controllers(mount: Mount) -> set[str]:
    return set((read_text(mount.point / "cgroup.controllers") or "").split())


def _memory(directory: Path, version: int) -> int | None:
    name = "memory.limit_in_bytes" if version == 1 else "memory.max"
    value = _number(read_text(directory / name))
    return None if value is None or value >= _UNLIMITED_V1 else value


def _swap(directory: Path, version: int) -> int | None:
    if version == 2:
        return _number(read_text(directory / "memory.swap.max"))
    both = _number(read_text(directory / "memory.memsw.limit_in_bytes"))
    memory = _memory(directory, 1)
    if both is None or both >= _UNLIMITED_V1 or memory is None:
        return None
    return max(0, both - memory)


def _pids(directory: Path, version: int) -> int | None:
    return _number(read_text(directory / "pids.max"))


def _cpu(directory: Path, version: int) -> float | None:
    if version == 1:
        quota = _number(read_text(directory / "cpu.cfs_quota_us"))
        period = _number(read_text(directory / "cpu.cfs_period_us"))
    else:
        words = (read_text(directory / "cpu.max") or "").split()
        quota = _number(words[0]) if words else None
        period = _number(words[1]) if len(words) > 1 else None
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    return quota / period


def _number(text: str | None) -> int | None:
    """An integer file's value; None for "max", -1 (v1's none) or nothing."""
    if text is None:
        return None
    word = text.split()[0] if text.split() else ""
    if not word.lstrip("-").isdigit():
        return None
    value = int(word)
    return value if value >= 0 else None
