"""Which cgroup hierarchy this host gives the agent for its jobs' cgroups: v2 or v1,
whichever can hold the most limits (v2 on a tie), or why neither can.

Its own module because it knows both versions, and each version builds on the base
types of ``limits.cgroups``: kept there, it would import its own importers.
"""

from __future__ import annotations

from pathlib import Path

from sandbox_agent.limits import cgroup_v1, cgroup_v2
from sandbox_agent.limits.cgroups import CgroupError, Hierarchy, membership, mounts, read_text


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
