"""The job's cgroup: where the agent may make one, and what both cgroup versions offer.

One cgroup per job, always a child of the cgroup the agent itself was given (a
delegated v2 subtree, or the agent's own directory in each v1 controller): nothing is
created elsewhere and no parent's limits are touched. The launcher writes the runtime's
pid into it between fork and exec, so every process of the job is inside before any
payload code runs. Teardown kills through it and reports what was still alive.

The versions differ in files, not in shape: ``cgroup_v1`` and ``cgroup_v2`` implement
``JobCgroup``; ``discover`` finds which one this host gives the agent.
"""

from __future__ import annotations

from pathlib import Path

from sandbox_agent.limits import cgroup_v1, cgroup_v2
from sandbox_agent.limits.cgroup_base import (
    CGROUP_LIMITS,
    CPU_PERIOD_US,
    PREFIX,
    CgroupError,
    CgroupLimits,
    Hierarchy,
    JobCgroup,
    Mount,
    Teardown,
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


def discover(
    *, prefer: str | None = None, proc_cgroup: str | None = None, mountinfo: str | None = None
) -> Hierarchy:
    """Where this agent may make job cgroups: raises CgroupError saying why not."""
    proc_cgroup = proc_cgroup if proc_cgroup is not None else read_text(Path("/proc/self/cgroup"))
    mountinfo = mountinfo if mountinfo is not None else read_text(Path("/proc/self/mountinfo"))
    where = membership(proc_cgroup or "")
    found = mounts(mountinfo or "")
    candidates: list[Hierarchy] = []
    reasons = []
    present = {m.fstype for m in found}
    for module, fstype in ((cgroup_v2, "cgroup2"), (cgroup_v1, "cgroup")):
        if prefer and prefer != module.VERSION:
            continue
        if not prefer and fstype not in present:
            continue  # a pure v2 host has no v1 to explain, and the reverse
        try:
            candidates.append(module.hierarchy(where, found))
        except CgroupError as exc:
            reasons.append(f"{module.VERSION}: {exc}")
    if not candidates:
        raise CgroupError("; ".join(reasons) or "no cgroup filesystem is mounted")
    # the one that can hold the most limits; v2 on a tie
    return max(candidates, key=lambda h: len(h.enforceable))


__all__ = [  # what callers import from here: the base both versions share, and discover
    "CGROUP_LIMITS",
    "CPU_PERIOD_US",
    "PREFIX",
    "CgroupError",
    "CgroupLimits",
    "Hierarchy",
    "JobCgroup",
    "Mount",
    "Teardown",
    "Usage",
    "comm",
    "discover",
    "kill_listed",
    "located",
    "make_directory",
    "membership",
    "mounts",
    "read_int",
    "read_keyed",
    "read_text",
    "write",
]
