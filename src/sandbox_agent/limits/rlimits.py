"""The payload's rlimits against what this agent may set on this node.

The launcher sets each of the policy's rlimits (soft = hard) between fork and exec.
An agent without CAP_SYS_RESOURCE (a pool account under a batch system or systemd)
cannot raise a hard limit above its own; root may, up to the kernel's ceiling for open
files (fs.nr_open). Past either, setrlimit fails in the child, where Python can say no
more than "Exception occurred in preexec_fn": so the launcher, the preflight (which
launches) and doctor ask here first and say which limit, which ceiling and the fix.
"""

from __future__ import annotations

import resource
from collections.abc import Iterable

RLIMITS = {
    "core": resource.RLIMIT_CORE,
    "nofile": resource.RLIMIT_NOFILE,
    "stack": resource.RLIMIT_STACK,
    "fsize": resource.RLIMIT_FSIZE,
}
NR_OPEN = "/proc/sys/fs/nr_open"
CAP_SYS_RESOURCE = 24
# How a site raises the pilot's hard limit, per rlimit (systemd's unit keys).
_SYSTEMD = {"core": "LimitCORE", "nofile": "LimitNOFILE", "stack": "LimitSTACK",
            "fsize": "LimitFSIZE"}  # fmt: skip


def _capable() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE where it counts for a hard limit: in
    the initial user namespace (root, normally; a namespace's root cannot raise one)."""
    if not _initial_user_namespace():
        return False
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _initial_user_namespace() -> bool:
    """Whether this process's uid map is the whole identity map (the initial user
    namespace's); unknown counts as not."""
    try:
        with open("/proc/self/uid_map") as file:
            return file.read(256).split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def _nr_open() -> int | None:
    try:
        with open(NR_OPEN) as file:
            return int(file.read(64).strip())
    except (OSError, ValueError):
        return None


def ceiling(name: str) -> tuple[int, str] | None:
    """The highest value this agent can give rlimit ``name`` here, and what sets it;
    None when nothing but the schema's maximum does."""
    hard = resource.getrlimit(RLIMITS[name])[1]
    if not _capable():
        if hard == resource.RLIM_INFINITY:
            return None
        return hard, "this agent's hard limit"
    if name == "nofile":
        most = _nr_open()
        return (most, f"the kernel's {NR_OPEN}") if most is not None else None
    return None


def above(rlimits: Iterable[tuple[str, int]]) -> list[str]:
    """One clause for each rlimit this agent cannot set here ("" when all fit)."""
    out = []
    for name, value in rlimits:
        top = ceiling(name)
        if top is None or value <= top[0]:
            continue
        limit, what = top
        out.append(f"process.rlimits.{name} = {value} is above {what} ({limit}): lower it in "
                   f"the policy, or raise the pilot's hard limit ({_SYSTEMD[name]}= in its "
                   "systemd unit, ulimit -H in its batch job)")  # fmt: skip
    return out
