"""What both cgroup versions build on: the limits a job cgroup holds, what it reports,
the ``Hierarchy`` and ``JobCgroup`` each version implements, and reading the kernel's
cgroup and mount tables. ``limits.cgroups`` is where callers find all of it, with
``discover``; the versions import this module, never that one, so nothing imports its
own importers.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_agent.printable import clipped

# The limits a cgroup can hold; wall time and disk are the monitor's.
CGROUP_LIMITS = ("cpu_cores", "memory", "swap", "pids")
CPU_PERIOD_US = 100_000
PREFIX = "sandbox-agent-"
EXIT_GRACE = 0.2  # seconds teardown waits for exiting processes before it kills


class CgroupError(RuntimeError):
    """The job's cgroup cannot be made or configured: one line saying where and why."""


@dataclass(frozen=True)
class CgroupLimits:
    memory: int  # bytes
    swap: int  # bytes of swap beyond memory
    pids: int
    cpu_cores: int

    @classmethod
    def of(cls, values: Mapping[str, int]) -> CgroupLimits:
        """From the job's limits by name (LaunchPlan.limit_values)."""
        return cls(
            memory=values["memory"],
            swap=values["swap"],
            pids=values["pids"],
            cpu_cores=values["cpu_cores"],
        )


@dataclass(frozen=True)
class Usage:
    """What the kernel counted for the job; None where this host does not count it."""

    memory_bytes: int | None = None
    memory_peak_bytes: int | None = None
    cpu_seconds: float | None = None
    pids: int | None = None
    oom_kills: int | None = None
    forks_refused: int | None = None  # forks that hit pids.max
    # memory_peak_bytes is the highest memory.current the monitor read (once a second),
    # not the kernel's own peak: cgroup v2 has memory.peak only from Linux 5.19
    memory_peak_sampled: bool = False


@dataclass(frozen=True)
class Survivor:
    pid: int
    name: str


@dataclass
class Teardown:
    """What teardown found and did: a reviewer reads this in the audit record."""

    cgroup: str
    survivors: list[Survivor] = field(default_factory=list)  # alive when the job ended
    emptied: bool = True
    removed: bool = False
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.survivors:
            names = ", ".join(f"{s.name}[{s.pid}]" for s in self.survivors[:5])
            more = f" and {len(self.survivors) - 5} more" if len(self.survivors) > 5 else ""
            parts.append(f"killed {len(self.survivors)} leftover process(es): {names}{more}")
        if not self.emptied:
            parts.append("processes survived the kill")
        parts.append("cgroup removed" if self.removed else "cgroup NOT removed")
        return "; ".join(parts + self.problems)


class JobCgroup(abc.ABC):
    """One job's cgroup, in every hierarchy directory the version needs."""

    version: str
    # What the kernel kills when the job reaches its memory limit, for the report: the
    # job's processes share one limit, and the versions differ in what they end.
    memory_kill = "the kernel killed the process that allocated; the rest of the job went on"

    def __init__(self, directories: Iterable[Path], enforced: Iterable[str]) -> None:
        self.directories = tuple(dict.fromkeys(directories))  # co-mounted: once each
        self.enforced = frozenset(enforced)  # the limits the kernel holds for this job

    @property
    def name(self) -> str:
        return str(self.directories[0])

    def procs_files(self) -> tuple[str, ...]:
        """The files the launched process writes its pid to, before exec."""
        return tuple(str(d / "cgroup.procs") for d in self.directories)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.directories:
            text = read_text(directory / "cgroup.procs")
            found.update(int(p) for p in (text or "").split())
        return found

    @abc.abstractmethod
    def usage(self) -> Usage: ...

    @abc.abstractmethod
    def memory_now(self) -> int | None:
        """The job's memory use this moment (the monitor samples it for a peak)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL every process in the cgroup, without letting one fork away."""

    def teardown(self, timeout: float = 5.0) -> Teardown:
        """Kill whatever of the job is left, wait until the cgroup is empty, remove it."""
        report = Teardown(self.name)
        # The runtime's own processes may still be exiting (bwrap's pid 1 after its
        # child): give them a moment, so only real leftovers are reported.
        grace = time.monotonic() + EXIT_GRACE
        while self.pids() and time.monotonic() < grace:
            time.sleep(0.005)
        left = self.pids()
        report.survivors = [Survivor(pid, comm(pid)) for pid in sorted(left)]
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() > deadline:
                report.emptied = False
                report.problems.append(f"still running after {timeout:g}s: {sorted(self.pids())}")
                return report
            try:
                self.kill()
            except CgroupError as exc:  # reported, never raised from a teardown
                report.problems.append(str(exc))
            time.sleep(0.01)
        report.removed = self.remove(report.problems)
        return report

    def remove(self, problems: list[str]) -> bool:
        removed = True
        for directory in reversed(self.directories):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                removed = False
                problems.append(f"cannot remove {directory}: {exc.strerror}")
        return removed


@dataclass(frozen=True)
class Mount:
    point: Path
    root: str  # the part of the hierarchy this mount shows ("/" unless namespaced)
    fstype: str
    controllers: frozenset[str]


def mounts(mountinfo: str) -> list[Mount]:
    """The cgroup filesystems in /proc/self/mountinfo."""
    out = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = set(tail[2].split(","))
        point = fields[4].replace("\\040", " ")
        out.append(Mount(Path(point), fields[3], tail[0], frozenset(options)))
    return out


def membership(proc_cgroup: str) -> dict[str, str]:
    """Hierarchy -> the agent's path in it: '' is v2, else the v1 controllers joined."""
    out = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def located(mount: Mount, path: str) -> Path | None:
    """The agent's directory in this mount, or None when the mount does not show it."""
    if path != mount.root and not path.startswith(mount.root.rstrip("/") + "/"):
        return None
    if ".." in path.split("/"):  # a cgroup outside the agent's namespace shows as /../x
        return None
    relative = path[len(mount.root.rstrip("/")) :].lstrip("/")
    return mount.point / relative if relative else mount.point


def read_text(path: Path) -> str | None:
    """A kernel file's text, or None. Bytes that are not UTF-8 (a mount point a user
    named, a process name a payload chose) are kept as surrogates, never an error:
    every command reads /proc/self/mountinfo first."""
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError:
        return None


def read_int(path: Path) -> int | None:
    text = read_text(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None  # "max" and the like


def read_keyed(path: Path, key: str) -> int | None:
    """A value from a flat keyed file such as memory.events ('oom_kill 3')."""
    for line in (read_text(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def make_directory(parent: Path, name: str) -> Path:
    """A fresh child directory, never one that exists: two jobs must not share one."""
    directory = parent / name
    try:
        directory.mkdir()
    except FileExistsError:
        raise CgroupError(f"{directory} exists already; another job has that name") from None
    except OSError as exc:
        raise CgroupError(f"cannot create {directory}: {exc.strerror}") from None
    return directory


def kill_listed(group: JobCgroup) -> None:
    for pid in group.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def comm(pid: int) -> str:
    """A process's name as a person may see it: the payload chose it, so no control
    characters (a newline would forge a line of the agent's output)."""
    text = (read_text(Path(f"/proc/{pid}/comm")) or "?").strip()
    return clipped(text, 16) or "?"


class Hierarchy(abc.ABC):
    """Where the agent makes job cgroups in one cgroup version."""

    version: str
    enforceable: frozenset[str]

    @abc.abstractmethod
    def describe(self) -> str: ...

    @abc.abstractmethod
    def roots(self) -> list[Path]:
        """The agent's own directories, under which job cgroups are made."""

    @abc.abstractmethod
    def holder(self, limit: str) -> str:
        """Where ``limit`` is held, for a person (the controller and its directory)."""

    @abc.abstractmethod
    def create(self, name: str, limits: CgroupLimits) -> JobCgroup:
        """The job's cgroup, made and limited; raises CgroupError."""

    def sweep(self, stale: Callable[[str], bool], *, older_than: float = 2.0) -> list[str]:
        """Remove the empty job cgroups ``stale`` says nobody owns any more (an agent
        killed by SIGKILL could not remove its job's); their names, as create() was
        given them. One with a process in it is never touched, nor one made in the last
        ``older_than`` seconds (a live launch places its process a moment after)."""
        removed: set[str] = set()
        now = time.time()
        for root in self.roots():
            try:
                children = sorted(p for p in root.iterdir() if p.is_dir()
                                  and p.name.startswith(PREFIX)
                                  and stale(p.name.removeprefix(PREFIX)))  # fmt: skip
            except OSError:
                continue
            for child in children:
                try:
                    young = now - child.stat().st_mtime < older_than
                except OSError:
                    continue
                if young or (read_text(child / "cgroup.procs") or "").strip():
                    continue
                with contextlib.suppress(OSError):  # busy, or gone: the next sweep sees it
                    child.rmdir()
                    removed.add(child.name.removeprefix(PREFIX))
        return sorted(removed)
