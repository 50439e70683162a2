"""One sandboxed run from start to teardown: the job's cgroup, the launch, the monitor,
and the report of what was left.

This is the agent's side of a job, shared by ``sandbox exec`` and the pilot: the
cgroup is made (and limited) before the runtime starts, the runtime is placed in it
before exec, the monitor holds what the cgroup does not, and teardown always runs,
even when the agent is interrupted.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sandbox_agent.limits.cgroups import CgroupError, CgroupLimits, JobCgroup, Teardown, discover
from sandbox_agent.limits.enforcement import LimitPlan, decide, wants_cgroup
from sandbox_agent.limits.monitor import Monitor, Outcome
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.runtime.launch import start, unenforced
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


def job_cgroup(
    name: str, effective: EffectivePolicy, *, prefer: str | None = None
) -> tuple[JobCgroup | None, str]:
    """The job's cgroup (made and limited), or None and why there is none."""
    try:
        hierarchy = discover(prefer=prefer)
        group = hierarchy.create(name, CgroupLimits.of(effective))
    except CgroupError as exc:
        return None, f"no job cgroup ({exc})"
    return group, f"the job's cgroup ({hierarchy.describe()})"


def run(
    plan: LaunchPlan,
    effective: EffectivePolicy,
    *,
    workdir: Path,
    name: str | None = None,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    interval: float = 1.0,
    prefer_cgroup: str | None = None,
) -> SessionResult:
    """Run ``plan`` to the end. Raises Unenforceable (nothing started) when a required
    requirement cannot be held here."""
    skipped = unenforced(plan, effective)  # fail before making anything
    name = name or f"exec-{os.getpid()}-{next(_serial)}"
    group, where = None, "no limit asked for the kernel"
    if wants_cgroup(plan, effective):
        group, where = job_cgroup(name, effective, prefer=prefer_cgroup)
    teardown = None
    try:
        held = group.enforced if group else frozenset()
        limits = decide(plan, effective, held, where)
        started = start(plan, effective, stdin=stdin, stdout=stdout, stderr=stderr,
                        cgroup=group)  # fmt: skip
        watched = {limit: effective.limit(limit) for limit in limits.monitored}
        monitor = Monitor(started.process, watched, workdir=workdir, cgroup=group,
                          interval=interval)  # fmt: skip
        try:
            outcome = monitor.run()
        finally:
            if started.process.returncode is None:  # interrupted: the job must not outlive us
                monitor.kill()
                started.process.wait()
    finally:
        if group is not None:
            teardown = group.teardown()
    return SessionResult(
        outcome, teardown, limits, skipped + limits.unenforced, started.seccomp_sha256, where
    )
