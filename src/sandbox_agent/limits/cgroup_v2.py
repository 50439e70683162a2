"""cgroup v2: one directory in the unified hierarchy, under the agent's delegated one.

Controllers reach a child only when its parent lists them in cgroup.subtree_control,
and a cgroup with processes of its own may not do that (the "no internal processes"
rule). systemd starts a pilot alone in its delegated cgroup (``Delegate=yes``), so the
agent first moves itself, and anything it started, into a leaf of that same cgroup
(``sandbox-agent-agent``): at the start of every command (``enter_leaf``), before any
child exists, and again should one exist when controllers are enabled. Processes that
are not the agent's are never moved: a delegated cgroup shared with them is refused,
naming them. Nothing outside the agent's own subtree is touched. Killing writes
cgroup.kill (Linux 5.14+), else freezes and kills.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

import psutil

from sandbox_agent.limits.cgroup_base import (
    CPU_PERIOD_US,
    PREFIX,
    CgroupError,
    CgroupLimits,
    Hierarchy,
    JobCgroup,
    Mount,
    Usage,
    comm,
    kill_listed,
    located,
    make_directory,
    membership,
    mounts,
    read_int,
    read_keyed,
    read_text,
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
        # The agent sits in the cgroup itself: it moves (with what it started) to a leaf
        # beside the jobs. Only its own: other processes there are not the agent's to move.
        _move_own_processes(self.directory)
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
                self.memory_kill = ("the kernel ended the whole job (cgroup v2 "
                                    "memory.oom.group), not only the process that allocated")
        if "swap" in self.enforced:
            write(d / "memory.swap.max", str(limits.swap))
        if "pids" in self.enforced:
            write(d / "pids.max", str(limits.pids))
        if "cpu_cores" in self.enforced:
            write(d / "cpu.max", f"{limits.cpu_cores * CPU_PERIOD_US} {CPU_PERIOD_US}")

    def memory_now(self) -> int | None:
        return read_int(self.directory / "memory.current")

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
        if not (self.directory / "cgroup.freeze").exists():  # before Linux 5.2
            kill_listed(self)
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
    directory = _own_directory(where, found)
    if directory.name == AGENT_LEAF:  # moved there already: the delegated one is up
        directory = directory.parent
    for needed in (directory, directory / "cgroup.procs", directory / "cgroup.subtree_control"):
        if not os.access(needed, os.W_OK):
            raise CgroupError(f"{needed} is not writable by the agent: the cgroup is not "
                              "delegated to it (systemd: Delegate=yes)")  # fmt: skip
    undelegated = _undelegated_unit(directory)
    if undelegated:
        raise CgroupError(undelegated)
    try:
        controllers = frozenset((directory / "cgroup.controllers").read_text().split())
        enabled = set((directory / "cgroup.subtree_control").read_text().split())
    except OSError as exc:
        raise CgroupError(f"cannot read {directory}: {exc.strerror}") from None
    if (controllers & set(WANTED)) - enabled and not _is_root(directory):
        strangers = _strangers(directory)
        if strangers:  # controllers can never reach a child: say so now, not at the job
            raise CgroupError(_not_alone(directory, strangers))
    return V2Hierarchy(directory, controllers)


def enter_leaf(*, proc_cgroup: str | None = None, mountinfo: str | None = None) -> Path | None:
    """Move this process into the leaf of its delegated v2 cgroup, before it starts
    anything, so that the cgroup can hand controllers to job cgroups. Only where the
    agent is alone there (with what it started) and may write the cgroup; anything else
    is left as it is, and job cgroups are refused later with the reason. The leaf, or
    None when nothing was moved."""
    proc_cgroup = read_text(Path("/proc/self/cgroup")) if proc_cgroup is None else proc_cgroup
    mountinfo = read_text(Path("/proc/self/mountinfo")) if mountinfo is None else mountinfo
    found = mounts(mountinfo or "")
    if any(m.fstype == "cgroup" for m in found):
        return None  # v1 controllers (hybrid host): jobs are placed per controller there
    try:
        directory = _own_directory(membership(proc_cgroup or ""), found)
    except CgroupError:
        return None
    if directory.name == AGENT_LEAF or _is_root(directory):
        return None  # already in the leaf; the root cgroup may hold processes and children
    if not all(os.access(p, os.W_OK) for p in (directory, directory / "cgroup.procs")):
        return None  # not delegated to the agent: nothing of it is the agent's to change
    if _undelegated_unit(directory):
        return None  # systemd's, not the agent's: job cgroups are refused with the reason
    try:
        if _strangers(directory):
            return None
        return _move_own_processes(directory)
    except (CgroupError, OSError, psutil.Error):  # left as it is: refused later, saying why
        return None


def _own_directory(where: dict[str, str], found: list[Mount]) -> Path:
    mount = next((m for m in found if m.fstype == "cgroup2"), None)
    path = where.get("")
    if mount is None or path is None:
        raise CgroupError("no cgroup2 filesystem holds the agent")
    directory = located(mount, path)
    if directory is None:
        raise CgroupError(f"the agent's cgroup {path} is outside the mounted {mount.point}")
    return directory


def _is_root(directory: Path) -> bool:
    """The hierarchy's real root has no cgroup.type: it may hold processes and children.
    A cgroup namespace's root does have one, and follows the rule like any other."""
    return not os.path.exists(directory / "cgroup.type")


# systemd marks the cgroups it delegates (Delegate=yes) with this extended attribute
# (trusted.* by the system manager, user.* by a user's)
DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")


def _undelegated_unit(directory: Path) -> str | None:
    """Why a systemd unit's cgroup is not the agent's, or None. systemd rewrites the
    cgroup.subtree_control of a unit it did not delegate whenever it applies the unit's
    settings: the controllers, and with them every job's limits, would go mid-job.
    A cgroup made by hand (no unit suffix) is the site's word that it is delegated."""
    if not directory.name.endswith((".service", ".scope")):
        return None
    for name in DELEGATE_XATTRS:
        with contextlib.suppress(OSError):
            if os.getxattr(directory, name) == b"1":
                return None
    return (f"{directory} is the cgroup of a systemd unit not delegated to the agent: systemd "
            "would take its controllers back mid-job; add Delegate=yes to the unit (or start "
            "the pilot with systemd-run --scope -p Delegate=yes)")  # fmt: skip


def _members(directory: Path) -> set[int]:
    text = read_text(directory / "cgroup.procs")
    if text is None:
        raise CgroupError(f"cannot read {directory}/cgroup.procs")
    return {int(p) for p in text.split()}


def _own_family() -> dict[int, psutil.Process | None]:
    """This process and everything it started that is still alive (as psutil saw it,
    so that a pid reused meanwhile is told apart by its start time)."""
    family: dict[int, psutil.Process | None] = {os.getpid(): None}
    with contextlib.suppress(psutil.Error, OSError):  # OSError: hidepid /proc, old psutil
        family.update({child.pid: child for child in psutil.Process().children(recursive=True)})
    return family


def _strangers(directory: Path) -> set[int]:
    """Processes in ``directory`` that are neither the agent nor started by it."""
    return _members(directory) - _own_family().keys()


def _not_alone(directory: Path, strangers: set[int]) -> str:
    shown = ", ".join(f"{comm(pid)}[{pid}]" for pid in sorted(strangers)[:5])
    return (f"{directory} holds {len(strangers)} process(es) that are not the agent's "
            f"({shown}), so its controllers cannot reach job cgroups; start the pilot alone "
            "in its delegated cgroup (systemd: a unit with Delegate=yes, or systemd-run "
            "--scope -p Delegate=yes)")  # fmt: skip


def _move_own_processes(directory: Path) -> Path:
    """Move the agent and what it started from ``directory`` into its leaf; refuse,
    naming them, when others are there. Repeated, since a child may fork meanwhile."""
    strangers = _strangers(directory)
    if strangers:
        raise CgroupError(_not_alone(directory, strangers))
    leaf = directory / AGENT_LEAF
    try:
        leaf.mkdir(exist_ok=True)  # another agent of this cgroup may have made it
    except OSError as exc:
        raise CgroupError(f"cannot create {leaf}: {exc.strerror}") from None
    for _ in range(10):
        family = _own_family()
        left = _members(directory) & family.keys()
        if not left:
            return leaf
        for pid in sorted(left, key=lambda p: p != os.getpid()):  # the agent first
            process = family[pid]
            with contextlib.suppress(psutil.Error):
                if process is not None and not process.is_running():
                    continue  # it ended, and its pid may be another's now: never moved
            try:
                (leaf / "cgroup.procs").write_text(str(pid))
            except ProcessLookupError:
                continue  # it ended meanwhile
            except OSError as exc:
                raise CgroupError(f"cannot move process {pid} into {leaf}: "
                                  f"{exc.strerror}") from None  # fmt: skip
    raise CgroupError(f"processes kept appearing in {directory} while the agent moved them")
