"""cgroup v1: one directory per controller (memory, pids, cpu, cpuacct, freezer).

The job gets a child of the agent's own directory in every controller the agent may
write. Killing freezes the job first (freezer), so nothing forks while the signals go
out; without a freezer the kill is repeated until the cgroup is empty.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from sandbox_agent.limits.cgroup_base import (
    CPU_PERIOD_US,
    PREFIX,
    CgroupError,
    CgroupLimits,
    Hierarchy,
    JobCgroup,
    Mount,
    Usage,
    kill_listed,
    located,
    make_directory,
    read_int,
    read_keyed,
    write,
)

VERSION = "v1"
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
# the file that shows a controller can hold a limit
_LIMIT_FILES = {
    "memory": ("memory", "memory.limit_in_bytes"),
    "swap": ("memory", "memory.memsw.limit_in_bytes"),  # needs swapaccount=1
    "pids": ("pids", "pids.max"),
    "cpu_cores": ("cpu", "cpu.cfs_quota_us"),
}


class V1Hierarchy(Hierarchy):
    version = VERSION

    def __init__(self, directories: dict[str, Path]) -> None:
        self.directories = directories  # controller -> the agent's own directory
        # a limit file is in every child of a controller (the root lacks some, such as
        # pids.max); swap also needs swap accounting, which shows as memsw files
        self.enforceable = frozenset(
            limit
            for limit, (controller, name) in _LIMIT_FILES.items()
            if controller in directories
            and (limit != "swap" or (directories[controller] / name).exists())
        )

    def describe(self) -> str:
        return "cgroup v1, writable: " + ", ".join(
            f"{c} ({d})" for c, d in self.directories.items()
        )

    def roots(self) -> list[Path]:
        return list(dict.fromkeys(self.directories.values()))

    def holder(self, limit: str) -> str:
        controller = _LIMIT_FILES[limit][0]
        return f"cgroup v1 {controller} controller under {self.directories[controller]}"

    def create(self, name: str, limits: CgroupLimits) -> JobCgroup:
        made: dict[str, Path] = {}
        try:
            for controller, parent in self.directories.items():
                existing = next((d for d in made.values() if d.parent == parent), None)
                made[controller] = existing or make_directory(parent, PREFIX + name)
            enforced = {
                limit
                for limit, (controller, file) in _LIMIT_FILES.items()
                if controller in made and (made[controller] / file).exists()
            }
            group = V1Cgroup(made, frozenset(enforced))
            group.limit(limits)
        except CgroupError:
            for directory in set(made.values()):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        return group


class V1Cgroup(JobCgroup):
    version = VERSION

    def __init__(self, directories: dict[str, Path], enforced: frozenset[str]) -> None:
        super().__init__(directories.values(), enforced)
        self.by_controller = directories

    def _file(self, controller: str, name: str) -> Path | None:
        directory = self.by_controller.get(controller)
        return directory / name if directory else None

    def limit(self, limits: CgroupLimits) -> None:
        memory = self.by_controller.get("memory")
        if memory:
            write(memory / "memory.limit_in_bytes", str(limits.memory))
            if "swap" in self.enforced:  # memsw counts memory and swap together
                write(memory / "memory.memsw.limit_in_bytes", str(limits.memory + limits.swap))
        if pids := self.by_controller.get("pids"):
            write(pids / "pids.max", str(limits.pids))
        if cpu := self.by_controller.get("cpu"):
            write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            write(cpu / "cpu.cfs_quota_us", str(limits.cpu_cores * CPU_PERIOD_US))

    def memory_now(self) -> int | None:
        path = self._file("memory", "memory.usage_in_bytes")
        return read_int(path) if path else None

    def usage(self) -> Usage:
        def number(controller: str, name: str) -> int | None:
            path = self._file(controller, name)
            return read_int(path) if path else None

        def keyed(controller: str, name: str, key: str) -> int | None:
            path = self._file(controller, name)
            return read_keyed(path, key) if path else None

        cpu_ns = number("cpuacct", "cpuacct.usage")
        return Usage(
            memory_bytes=number("memory", "memory.usage_in_bytes"),
            memory_peak_bytes=number("memory", "memory.max_usage_in_bytes"),
            cpu_seconds=cpu_ns / 1e9 if cpu_ns is not None else None,
            pids=number("pids", "pids.current"),
            oom_kills=keyed("memory", "memory.oom_control", "oom_kill"),
            forks_refused=keyed("pids", "pids.events", "max"),
        )

    def kill(self) -> None:
        state = self._file("freezer", "freezer.state")
        if state is None:
            kill_listed(self)
            return
        # Frozen processes cannot fork; SIGKILL is delivered when they thaw.
        write(state, "FROZEN")
        deadline = time.monotonic() + 1.0
        while (read_state(state) != "FROZEN") and time.monotonic() < deadline:
            time.sleep(0.005)
        kill_listed(self)
        write(state, "THAWED")


def read_state(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def hierarchy(where: dict[str, str], found: list[Mount]) -> V1Hierarchy:
    """The agent's writable v1 controllers; CgroupError when there are none."""
    directories: dict[str, Path] = {}
    for controller in CONTROLLERS:
        mount = next((m for m in found if m.fstype == "cgroup" and controller in m.controllers),
                     None)  # fmt: skip
        path = next((p for key, p in where.items() if controller in key.split(",")), None)
        if mount is None or path is None:
            continue
        directory = located(mount, path)
        if directory is not None and os.access(directory, os.W_OK):
            directories[controller] = directory
    if not {"memory", "pids", "cpu", "freezer"} & directories.keys():
        raise CgroupError("no v1 controller (memory, pids, cpu, freezer) is writable by the agent")
    return V1Hierarchy(directories)
