"""cgroup v2: one directory in the unified hierarchy, under the agent's delegated one.

Controllers reach a child only when its parent lists them in cgroup.subtree_control,
and a cgroup with processes of its own may not do that (the "no internal processes"
rule). When the agent sits in its delegated cgroup itself, it first moves the processes
there into a leaf of that same cgroup, as systemd-style delegation expects; nothing
outside the agent's own subtree is touched. Killing writes cgroup.kill (Linux 5.14+),
else freezes and kills.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from sandbox_agent.limits.cgroups import (
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

VERSION = "v2"
WANTED = ("memory", "pids", "cpu")
AGENT_LEAF = PREFIX + "agent"
_LIMIT_FILES = {"memory": "memory.max", "swap": "memory.swap.max", "pids": "pids.max",
                "cpu_cores": "cpu.max"}  # fmt: skip
_CONTROLLER_OF = {"memory": "memory", "swap": "memory", "pids": "pids", "cpu_cores": "cpu"}


class V2Hierarchy(Hierarchy):
    version = VERSION

    def __init__(self, directory: Path, controllers: frozenset[str]) -> None:
        self.directory = directory
        self.controllers = controllers
        self.enforceable = frozenset(
            limit for limit, needs in _CONTROLLER_OF.items() if needs in controllers
        )

    def describe(self) -> str:
        shown = ", ".join(sorted(self.controllers & set(WANTED))) or "no limit controllers"
        return f"cgroup v2 at {self.directory} ({shown})"

    def roots(self) -> list[Path]:
        return [self.directory]

    def holder(self, limit: str) -> str:
        return f"cgroup v2 {_CONTROLLER_OF[limit]} controller under {self.directory}"

    def _enable_controllers(self) -> None:
        wanted = [c for c in WANTED if c in self.controllers]
        enabled = set((self.directory / "cgroup.subtree_control").read_text().split())
        missing = [c for c in wanted if c not in enabled]
        if not missing:
            return
        request = " ".join("+" + c for c in missing)
        try:
            (self.directory / "cgroup.subtree_control").write_text(request)
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise CgroupError(
                    f"cannot enable {request} in {self.directory}: {exc.strerror}"
                ) from None
        # The agent sits in the cgroup itself: it moves to a leaf beside the jobs. Only
        # itself: other processes there are not the agent's to move.
        others = set((self.directory / "cgroup.procs").read_text().split()) - {str(os.getpid())}
        if others:
            raise CgroupError(
                f"{self.directory} holds {len(others)} process(es) besides the agent, so its "
                "controllers cannot reach job cgroups; start the pilot alone in its delegated "
                "cgroup"
            )
        leaf = make_directory(self.directory, AGENT_LEAF)
        write(leaf / "cgroup.procs", str(os.getpid()))
        write(self.directory / "cgroup.subtree_control", request)

    def create(self, name: str, limits: CgroupLimits) -> JobCgroup:
        try:
            self._enable_controllers()
        except OSError as exc:
            raise CgroupError(f"cannot read {self.directory}: {exc.strerror}") from None
        directory = make_directory(self.directory, PREFIX + name)
        enforced = {limit for limit, file in _LIMIT_FILES.items() if (directory / file).exists()}
        group = V2Cgroup(directory, enforced)
        try:
            group.limit(limits)
        except CgroupError:
            directory.rmdir()
            raise
        return group


class V2Cgroup(JobCgroup):
    version = VERSION

    def __init__(self, directory: Path, enforced: set[str]) -> None:
        super().__init__([directory], enforced)
        self.directory = directory

    def limit(self, limits: CgroupLimits) -> None:
        d = self.directory
        if "memory" in self.enforced:
            write(d / "memory.max", str(limits.memory))
            if (d / "memory.oom.group").exists():  # an OOM kills the whole job, not a part
                write(d / "memory.oom.group", "1")
        if "swap" in self.enforced:
            write(d / "memory.swap.max", str(limits.swap))
        if "pids" in self.enforced:
            write(d / "pids.max", str(limits.pids))
        if "cpu_cores" in self.enforced:
            write(d / "cpu.max", f"{limits.cpu_cores * CPU_PERIOD_US} {CPU_PERIOD_US}")

    def usage(self) -> Usage:
        d = self.directory
        cpu_us = read_keyed(d / "cpu.stat", "usage_usec")
        return Usage(
            memory_bytes=read_int(d / "memory.current"),
            memory_peak_bytes=read_int(d / "memory.peak"),
            cpu_seconds=cpu_us / 1e6 if cpu_us is not None else None,
            pids=read_int(d / "pids.current"),
            oom_kills=read_keyed(d / "memory.events", "oom_kill"),
            forks_refused=read_keyed(d / "pids.events", "max"),
        )

    def kill(self) -> None:
        if (self.directory / "cgroup.kill").exists():
            write(self.directory / "cgroup.kill", "1")
            return
        write(self.directory / "cgroup.freeze", "1")
        deadline = time.monotonic() + 1.0
        while read_keyed(self.directory / "cgroup.events", "frozen") != 1:
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        kill_listed(self)
        write(self.directory / "cgroup.freeze", "0")


def hierarchy(where: dict[str, str], found: list[Mount]) -> V2Hierarchy:
    """The agent's own v2 cgroup, if it may make children there."""
    mount = next((m for m in found if m.fstype == "cgroup2"), None)
    path = where.get("")
    if mount is None or path is None:
        raise CgroupError("no cgroup2 filesystem holds the agent")
    directory = located(mount, path)
    if directory is None:
        raise CgroupError(f"the agent's cgroup {path} is outside the mounted {mount.point}")
    if directory.name == AGENT_LEAF:  # moved there by an earlier job: the delegated one is up
        directory = directory.parent
    if not os.access(directory, os.W_OK):
        raise CgroupError(f"{directory} is not writable by the agent; delegate it")
    try:
        controllers = frozenset((directory / "cgroup.controllers").read_text().split())
    except OSError as exc:
        raise CgroupError(f"cannot read {directory}/cgroup.controllers: {exc.strerror}") from None
    return V2Hierarchy(directory, controllers)
