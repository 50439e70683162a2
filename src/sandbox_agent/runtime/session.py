"""One sandboxed run from start to teardown: the job's cgroup, the launch, the monitor,
and the report of what was left.

This is the agent's side of a job, shared by ``sandbox exec`` and the pilot: the
cgroup is made (and limited) before the runtime starts, the runtime is placed in it
before exec, the monitor holds what the cgroup does not, and teardown always runs,
even when the agent is interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sandbox_agent.limits import readback
from sandbox_agent.limits.cgroups import (
    CgroupError,
    CgroupLimits,
    JobCgroup,
    Teardown,
    Usage,
    discover,
)
from sandbox_agent.limits.enforcement import (
    LimitPlan,
    decide,
    held_by_slot,
    wants_cgroup,
)
from sandbox_agent.limits.monitor import KILL_REASONS, Monitor, Outcome, StopRequest
from sandbox_agent.policy import gate
from sandbox_agent.runtime import containers
from sandbox_agent.runtime.agentproc import reap
from sandbox_agent.runtime.egress import Egress, EgressError, Rules, Tally, open_egress, rules_for
from sandbox_agent.runtime.launch import Started, start, unenforced
from sandbox_agent.runtime.plan import LaunchPlan

_serial = itertools.count(1)


@dataclass(frozen=True)
class SessionResult:
    outcome: Outcome
    teardown: Teardown | None
    limits: LimitPlan
    unenforced: tuple[str, ...]  # optional requirements nothing enforced
    seccomp_sha256: str
    cgroup: str  # where the job ran, or why it had no cgroup
    # the landlock step's word ("confined: landlock ABI 7"); "" when the plan ran the step and it
    # never said so (the payload did not run); None when the plan has no such step
    landlock: str | None = None
    # egress: what the agent's relay let through and refused; None in other modes
    egress: Tally | None = None
    # Docker and Podman: why the job's container could not be removed ("" once it is)
    container_left: str = ""

    @property
    def payload_ran(self) -> bool:
        return self.landlock != ""


def job_cgroup(
    name: str, plan: LaunchPlan, *, prefer: str | None = None
) -> tuple[JobCgroup | None, str]:
    """The job's cgroup (made and limited), or None and why there is none."""
    try:
        hierarchy = discover(prefer=prefer)
        group = hierarchy.create(name, CgroupLimits.of(plan.limit_values))
    except CgroupError as exc:
        return None, f"no job cgroup ({exc})"
    return group, f"the job's cgroup ({hierarchy.describe()})"


def read_report(fd: int, timeout: float = 10.0, cap: int = 65536) -> dict[str, object]:
    """bwrap's --info-fd report: written once the sandbox is set up, then closed. Empty
    when bwrap failed first, or when the report is not what bwrap writes."""
    data = b""
    try:
        while len(data) < cap:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                break
            chunk = os.read(fd, cap - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        report = json.loads(data or b"{}")
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def read_confirmation(fd: int) -> str:
    """What the landlock step wrote before the payload ran: one short line, or ""."""
    try:
        ready, _, _ = select.select([fd], [], [], 1.0)
        data = os.read(fd, 64) if ready else b""
    finally:
        os.close(fd)
    line = data.decode("ascii", "replace").strip()
    return line if line.startswith("confined: ") else ""


def namespaces_made(report: dict[str, object]) -> dict[str, int]:
    """The namespaces the sandbox has that the agent does not share: name -> inode."""
    made = {}
    for key, value in report.items():
        if key.endswith("-namespace") and isinstance(value, int):
            name = key.removesuffix("-namespace").replace("mnt", "mount")
            if value != _own_namespace("mnt" if name == "mount" else name):
                made[name] = value
    child = report.get("child-pid")
    if isinstance(child, int):  # bwrap does not report the user namespace: read it
        try:
            inode = os.stat(f"/proc/{child}/ns/user").st_ino
        except OSError:
            inode = None
        if inode is not None and inode != _own_namespace("user"):
            made["user"] = inode
    return made


def _own_namespace(name: str) -> int | None:
    try:
        return os.stat(f"/proc/self/ns/{name}").st_ino
    except OSError:
        return None


def slot_holds(plan: LaunchPlan) -> dict[str, str]:
    """The limits the cgroup this agent runs in holds at or below the plan's values
    (enforcement.held_by_slot), read back now; none when it cannot be read."""
    try:
        found = readback.held(os.getpid())
    except (ProcessLookupError, OSError):
        return {}
    return held_by_slot(plan.limit_values, found)


def run(
    plan: LaunchPlan,
    *,
    workdir: Path,
    name: str | None = None,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    interval: float = 1.0,
    prefer_cgroup: str | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    stop: StopRequest | None = None,
    held: frozenset[str] = frozenset(),
    count: ContainerCount | None = None,
) -> SessionResult:
    """Run ``plan`` to the end (or until ``stop`` is requested). Raises Unenforceable
    (nothing started) when a required requirement cannot be held here. ``held``: limits
    the caller holds already (workdir_size, by the work directory's own filesystem).
    ``on_start`` sees the runtime's process once it is in the job's cgroup;
    ``on_ready`` is called once the job may be given its work: at once for bwrap (it
    waits on its own pipe); for a plan that waits for the agent (a container's
    JobWrapper), once its container is found, its limits read back and its network
    plumbed, and never when that fails (the container is removed). ``count``: where
    the container's own cgroup is found, for its usage (ContainerCount)."""
    skipped = unenforced(plan)  # fail before making anything
    # names resolved, the node's addresses read: before anything is made (EgressError)
    rules = rules_for(plan.egress.allow, plan.egress.deny, plan.egress.proxy) \
        if plan.egress is not None else None  # fmt: skip
    # unique across agents, pid namespaces included: two jobs never share a cgroup
    name = name or f"exec-{os.getpid()}-{next(_serial)}-{secrets.token_hex(4)}"
    group, where = None, "no limit asked for the kernel"
    slot: dict[str, str] = {}
    if wants_cgroup(plan):
        group, where = job_cgroup(name, plan, prefer=prefer_cgroup)
        if group is None:  # a batch slot delegates nothing: what does its cgroup hold?
            slot = slot_holds(plan)
    teardown = None
    left = ""
    report: dict[str, object] = {}
    confirmed = None
    started = None
    relay: Egress | None = None
    released = False  # the pipe the sandbox waits on (egress) is closed
    try:
        limits = decide(plan, (group.enforced if group else frozenset()) | held, where, slot)
        started = start(plan, stdin=stdin, stdout=stdout, stderr=stderr, cgroup=group)
        if on_start is not None:  # placed in its cgroup already: the job may be told now
            on_start(started.process)
        report = read_report(started.info) if started.info is not None else {}
        if started.block is not None:
            released = True  # plumb closes the pipe, whatever happens in it
            relay = plumb(started, report, rules)
        container_pid = None
        if plan.container:
            container_pid, relay = hold(plan, started, rules, limits)
            if count is not None and container_pid is not None:
                count.group = readback.cgroup_of(container_pid)
        if on_ready is not None and (container_pid is not None or not plan.waits_for_agent):
            on_ready()
        made = namespaces_made(report)
        # an optional namespace asked for with -try counts only once bwrap says it made it
        skipped = tuple(k for k in skipped if k.removeprefix("namespaces.") not in made)
        # a work directory of its own size still has the monitor watch it: the kernel
        # stops the disk from filling, the monitor ends a job that outgrew its size
        watched = {limit: plan.limit(limit) for limit in limits.monitored | held}
        monitor = Monitor(started.process, watched, workdir=workdir, cgroup=group,
                          interval=interval, stop=stop)  # fmt: skip
        if isinstance(report.get("child-pid"), int):  # the sandbox's pid 1, bwrap's own
            monitor.runtime_pids.add(report["child-pid"])  # type: ignore[arg-type]
        if container_pid is not None:  # the engine's, not under its client: the job's own
            monitor.roots.add(container_pid)
        try:
            outcome = monitor.run()
        finally:
            if started.process.returncode is None:  # interrupted: the job must not outlive us
                monitor.kill()
                started.process.wait()
        if started.confirm is not None:  # every writer has exited with the job
            confirmed = read_confirmation(started.confirm)
        if count is not None:  # what the kernel counted is the container's, not its client's
            outcome = count.applied(outcome)
    finally:
        if started is not None and started.block is not None and not released:
            # the agent failed between start and plumbing: the payload must never run
            _kill_waiting(started, report.get("child-pid"))
        if relay is not None:  # every connection of the job's ends with it
            relay.close()
        if plan.container and started is not None:  # the engine's: it outlives its client
            left = remove_container(plan, started)
        if group is not None:
            teardown = group.teardown()
        if started is not None and started.files:
            shutil.rmtree(started.files, ignore_errors=True)
        survivors = [s.pid for s in teardown.survivors] if teardown else []
        orphans = [report.get("child-pid"), *survivors]
        reap(pid for pid in orphans if isinstance(pid, int))
    return SessionResult(
        outcome, teardown, limits, skipped + limits.unenforced, started.seccomp_sha256, where,
        landlock=confirmed if started.confirm is not None else None,
        egress=relay.tally if relay is not None else None, container_left=left,
    )  # fmt: skip


class ContainerCount:
    """What a container's own cgroup (its engine's, not the job's) counted for the job.
    Its engine removes the cgroup with the container, so it is read while the container
    still lives: once the JobWrapper has reported its final state, it waits for the
    agent's word (the end of its lifeline) before it exits (take, then the agent lets
    it go)."""

    def __init__(self) -> None:
        self.group: JobCgroup | None = None
        self.usage: Usage | None = None
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.group is not None and self.usage is None:
                self.usage = self.group.usage()

    def applied(self, outcome: Outcome) -> Outcome:
        """``outcome`` with the container's usage, if it was taken; a kill by the kernel
        there at the memory limit said as the monitor says it for the job's cgroup."""
        usage, group = self.usage, self.group
        if usage is None or group is None:
            return outcome
        if outcome.reason is None and usage.oom_kills:
            detail = f"killed: {KILL_REASONS['memory']}; {group.memory_kill}"
            return dataclasses.replace(outcome, usage=usage, reason="memory", detail=detail)
        return dataclasses.replace(outcome, usage=usage)


def hold(
    plan: LaunchPlan, started: Started, rules: Rules | None, limits: LimitPlan
) -> tuple[int | None, Egress | None]:
    """A container found (its first process's host pid), the limits its cgroups hold
    read back against the plan's, and its network plumbed for egress: then its
    JobWrapper may be given the job. (None, None) when the engine ended without
    running it (its own words, on its stderr, say why). The gate refuses a container
    that a limit the plan counts on does not hold; EgressError when the network
    cannot be plumbed; ContainerError when the engine does not answer."""
    try:
        pidfile = os.path.join(started.files, containers.PIDFILE) if started.files and \
            plan.runtime == "podman" else None  # fmt: skip
        pid = containers.locate(plan.argv[0], plan.container, started.process,
                                environ=os.environ, pidfile=pidfile)  # fmt: skip
    except containers.ContainerError:
        if started.process.poll() is not None:
            return None, None
        raise
    counted = {r.key.removeprefix("limits.") for r in plan.requirements
               if r.key.startswith("limits.") and r.met and r.by == "runtime"}  # fmt: skip
    counted |= set(limits.kernel) | set(limits.by_slot)  # the container must be in the slot
    asked = {name: plan.limit(name) for name in ("memory", "pids", "cpu_cores")
             if name in counted}  # fmt: skip
    try:
        found = readback.held(pid) if asked else None
    except ProcessLookupError:  # it ended: a payload that started with it (sandbox exec)
        if plan.waits_for_agent:  # the JobWrapper never got its job: nothing of it ran
            return None, None
        found = None
    if found is not None:
        short = found.short_of(asked.get("memory", 1 << 62), asked.get("pids", 1 << 30),
                               float(asked.get("cpu_cores", 1 << 20)))  # fmt: skip
        if short:
            gate.refuse(f"limits.{short[0].split()[0]}", "the container's cgroups do not hold "
                        f"{'; '.join(short)}: the engine ignored the limit (rootless Podman "
                        "does on cgroup v1 and without a delegated cgroup)")  # fmt: skip
    relay = None
    if rules is not None:
        try:
            netns = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError as error:
            raise EgressError(f"the container's network namespace: {error.strerror}") from None
        relay = open_egress(pid, rules, user=os.geteuid() != 0, netns=netns)
    return pid, relay


def remove_container(plan: LaunchPlan, started: Started) -> str:
    """The container removed, its client ended: "" once it is gone, else why not."""
    try:
        problem = containers.remove(plan.argv[0], plan.container, environ=os.environ)
    except containers.ContainerError as error:
        problem = str(error)
    if started.process.poll() is None:  # its container is gone: nothing left to attach to
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.process.wait(timeout=10)
        if started.process.poll() is None:
            started.process.kill()
            started.process.wait()
    return problem or ""


def plumb(started: Started, report: dict[str, object], rules: Rules | None) -> Egress | None:
    """The job's network namespace plumbed for egress and its relay started, then the
    sandbox let go (a byte on the pipe bwrap waits on). On failure the sandbox is killed
    before it is let go, so the payload never runs, and EgressError says why; or None
    when bwrap had failed by itself first (its own words, on its stderr, say why)."""
    assert started.block is not None
    child, netns = report.get("child-pid"), report.get("net-namespace")
    try:
        if not isinstance(child, int) or not isinstance(netns, int) or rules is None:
            raise EgressError("bwrap reported no sandbox whose network to plumb")
        relay = open_egress(child, rules, user=os.geteuid() != 0, netns=netns)
    except EgressError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            started.process.wait(timeout=0.5)
        failed_first = started.process.returncode is not None
        _kill_waiting(started, child)  # its sandbox too, should one outlive it
        if not failed_first:
            raise
        return None
    except BaseException:
        _kill_waiting(started, child)
        raise
    try:
        os.write(started.block, b"1")
    except OSError as error:  # bwrap is gone: the relay has no job to serve
        relay.close()
        _kill_waiting(started, child)
        raise EgressError(f"the sandbox ended before its network was handed over: {error}") \
            from None  # fmt: skip
    os.close(started.block)
    return relay


def _kill_waiting(started: Started, child: object) -> None:
    """Kill the sandbox while it waits on its pipe, then close the pipe: nothing is left
    to read it, so the payload never runs."""
    assert started.block is not None
    for pid in (child, started.process.pid):
        if isinstance(pid, int):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    started.process.wait()
    os.close(started.block)
