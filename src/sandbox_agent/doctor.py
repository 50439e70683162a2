"""The host's posture: what this node's kernel and tools give the sandbox, which
attacks therefore matter here, and what a site admin can do about each gap.

Every check reads the host (a /proc or /sys file, the kernel's answer to one harmless
call, the runtime actually run) and answers OK, WEAK (the sandbox still holds, but the
node is more exposed than it needs to be, or a defence in depth is gone) or MISSING
(something is not there; for the policy's requirements, the pilot refuses jobs until it
is). Nothing is assumed from the distribution or the kernel version alone.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sandbox_agent import hostfacts
from sandbox_agent.images import ImageRefused, hostpython, kinds, mount, prepare
from sandbox_agent.limits import rlimits
from sandbox_agent.limits.cgroups import (
    CGROUP_LIMITS,
    CgroupError,
    discover,
    mounts,
    read_text,
)
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.policy.explain import host_rows
from sandbox_agent.runtime import binds
from sandbox_agent.runtime.choose import RUNTIMES, available

OK, WEAK, MISSING = "OK", "WEAK", "MISSING"
LANDLOCK_KERNEL = (5, 13)  # the first kernel with landlock
LANDLOCK_SCOPES = 6  # the ABI that scopes signals and abstract unix sockets
PYTHON = "/usr/bin/python3"  # the sandbox's interpreter (the host's /usr, bound read-only)


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WEAK or MISSING
    found: str  # what the host said
    advice: str = ""  # what a site admin can do (empty when OK)
    blocking: bool = False  # MISSING and the pilot cannot run jobs without it

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def _at_least(minimum: int, advice: str, absent: str) -> Callable[[str | None], tuple[str, str]]:
    """A sysctl that is safe at ``minimum`` or more: (status, advice)."""

    def judge(value: str | None) -> tuple[str, str]:
        if value is None:
            return WEAK, absent
        try:
            return (OK, "") if int(value) >= minimum else (WEAK, advice)
        except ValueError:
            return WEAK, f"unexpected value; {advice}"

    return judge


def _exactly(safe: str, advice: str, absent: str) -> Callable[[str | None], tuple[str, str]]:
    def judge(value: str | None) -> tuple[str, str]:
        if value is None:
            return WEAK, absent
        return (OK, "") if value == safe else (WEAK, advice)

    return judge


# Sysctls that decide whether an attack the sandbox also stops would work on the rest of
# the node (defence in depth), each with the fix.
SYSCTLS: dict[str, Callable[[str | None], tuple[str, str]]] = {
    "kernel.unprivileged_bpf_disabled": _at_least(
        1, "sysctl -w kernel.unprivileged_bpf_disabled=2 (seccomp denies bpf in the sandbox; "
        "this closes it for every other process)",
        "cannot tell whether unprivileged bpf is allowed"),
    "kernel.perf_event_paranoid": _at_least(
        2, "sysctl -w kernel.perf_event_paranoid=2 (or 3 where the kernel has it)",
        "perf events are not configurable here"),
    "vm.unprivileged_userfaultfd": _exactly(
        "0", "sysctl -w vm.unprivileged_userfaultfd=0",
        "a kernel before 5.2, where anyone may use userfaultfd (seccomp "
        "denies it in the sandbox)"),
    "dev.tty.legacy_tiocsti": _exactly(
        "0", "sysctl -w dev.tty.legacy_tiocsti=0",
        "a kernel before 6.2, where TIOCSTI types into any terminal (the "
        "sandbox's new session and seccomp stop it there)"),
    "kernel.yama.ptrace_scope": _at_least(
        1, "sysctl -w kernel.yama.ptrace_scope=1",
        "no Yama; any process may trace another of its uid (the PID "
        "namespace hides host processes from the sandbox)"),
    "fs.protected_symlinks": _exactly(
        "1", "sysctl -w fs.protected_symlinks=1", "symlinks in shared "
        "directories are followed for anyone"),
    "fs.protected_hardlinks": _exactly(
        "1", "sysctl -w fs.protected_hardlinks=1", "anyone may hard-link "
        "files they do not own"),
}  # fmt: skip


def kernel(release: str | None = None) -> Check:
    release = release or platform.release()
    found = re.match(r"(\d+)\.(\d+)", release)
    version = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    if version >= LANDLOCK_KERNEL:
        return Check("kernel", OK, f"Linux {release}")
    return Check("kernel", WEAK, f"Linux {release}",
                 "a kernel of 5.13 or later brings landlock (6.12 or later: ABI 6)")  # fmt: skip


def user_namespaces() -> list[Check]:
    """The sandbox is made unprivileged (as root, the launcher switches to uid 65534
    first), so unprivileged user namespaces are what it needs."""
    fact = hostfacts.unprivileged_user_namespaces()
    checks = [Check("unprivileged user namespaces", OK if fact.available else MISSING,
                    fact.detail, "" if fact.available else fact.detail,
                    blocking=not fact.available)]  # fmt: skip
    if not Path("/proc/self/ns/user").exists():
        checks[0] = Check("unprivileged user namespaces", MISSING, "no user namespaces in "
                          "this kernel", "a kernel with CONFIG_USER_NS", blocking=True)  # fmt: skip
    return checks


def cgroups() -> list[Check]:
    try:
        hierarchy = discover()
    except CgroupError as exc:
        return [Check("cgroup", MISSING, f"no job cgroup here: {exc}", "start the pilot alone "
                      "in a cgroup delegated to it (systemd: a unit with Delegate=yes, or "
                      "systemd-run --scope -p Delegate=yes), or as root on cgroup v1")]  # fmt: skip
    held = sorted(hierarchy.enforceable)
    found = f"{hierarchy.describe()}; holds {', '.join(held) or 'nothing'}"
    lacking = sorted(set(CGROUP_LIMITS) - set(held))
    extra = [nsdelegate()] if hierarchy.version == "v2" else []
    if not lacking:
        return [Check("cgroup", OK, found), *extra]
    return [Check("cgroup", WEAK, found, _cgroup_remedy(hierarchy.version, lacking)), *extra]


# The controller of each limit a cgroup holds, in both versions.
_CONTROLLER_OF = {"memory": "memory", "swap": "memory", "pids": "pids", "cpu_cores": "cpu"}


def _cgroup_remedy(version: str, lacking: list[str]) -> str:
    """What makes the agent's cgroups hold ``lacking``, for this host's cgroup version."""
    controllers = ", ".join(dict.fromkeys(_CONTROLLER_OF[name] for name in lacking))
    if version == "v2":
        return (f"cannot hold {', '.join(lacking)}: delegate the {controllers} controller(s) "
                "to the pilot's cgroup (cgroup.subtree_control)")  # fmt: skip
    return (f"cannot hold {', '.join(lacking)}: this cgroup v1 host has no {controllers} "
            "hierarchy the agent may write; mount it writable for the agent (a kernel built "
            "without it, such as CONFIG_MEMCG_V1 off, has none), or boot with cgroup v2 "
            "(systemd.unified_cgroup_hierarchy=1) and delegate it")  # fmt: skip


def nsdelegate() -> Check:
    """Whether a job's cgroup namespace is a delegation boundary: with nsdelegate, a
    process inside can neither move out of it nor write its root's limits, whatever it
    reaches; without, only the sandbox keeps cgroupfs from the payload."""
    found = mounts(read_text(Path("/proc/self/mountinfo")) or "")
    unified = next((m for m in found if m.fstype == "cgroup2"), None)
    if unified is not None and "nsdelegate" in unified.controllers:
        return Check("nsdelegate", OK, f"{unified.point} is mounted with nsdelegate")
    return Check("nsdelegate", WEAK, "the cgroup v2 hierarchy is mounted without nsdelegate",
                 "a job's cgroup namespace is then no boundary to the kernel: only the sandbox "
                 "keeps the cgroup filesystem from it; mount it with nsdelegate (systemd "
                 "does)")  # fmt: skip


def seccomp() -> Check:
    fact = hostfacts.seccomp()
    return Check("seccomp", OK if fact.available else MISSING, fact.detail,
                 "" if fact.available else "a kernel with CONFIG_SECCOMP_FILTER",
                 blocking=not fact.available)  # fmt: skip


def landlock() -> Check:
    fact = hostfacts.landlock()
    if not fact.available:
        return Check("landlock", WEAK, fact.detail,
                     "without landlock the sandbox loses a layer of filesystem, network "
                     "and signal rules; " + fact.detail)  # fmt: skip
    abi = int(fact.detail.rsplit(" ", 1)[-1])
    if abi >= LANDLOCK_SCOPES:
        return Check("landlock", OK, fact.detail)
    return Check("landlock", WEAK, fact.detail, f"ABI {abi}: no scoping of signals and abstract "
                 "unix sockets (ABI 6, Linux 6.12)" + ("" if abi >= 4 else "; no TCP rules (ABI "
                 "4, Linux 6.7)"))  # fmt: skip


def sysctls(read: Callable[[str], str | None] = _sysctl) -> list[Check]:
    out = []
    for name, judge in SYSCTLS.items():
        value = read(name)
        status, advice = judge(value)
        out.append(Check(name, status, "not present" if value is None else value, advice))
    return out


def runtimes() -> list[Check]:
    out = []
    for runtime in RUNTIMES:
        found = available(runtime)
        if found.ok:
            out.append(Check(f"runtime {runtime}", OK, found.reason))
        elif runtime == "bwrap":  # it runs the pilot's jobs
            out.append(Check("runtime bwrap", MISSING, found.reason,
                             "the pilot runs jobs with bwrap; install it (and see the line "
                             "on user namespaces)", blocking=True))  # fmt: skip
        else:
            out.append(Check(f"runtime {runtime}", MISSING, found.reason, "optional: "
                             "`sandbox exec --runtime` and `policy render` use it"))  # fmt: skip
    return out


def policy_fallbacks(policy_name: str, dirs: list[Path]) -> list[Check]:
    """What the policy needs of the kernel, and what it would run without here."""
    effective = compose(load_policy(policy_name, dirs))
    out = []
    for row in host_rows(effective, hostfacts.facts()):
        name = f"policy {policy_name}: {row['key']}"
        if row["verdict"] == "not used":
            continue
        if row["verdict"] == "available":
            out.append(Check(name, OK, f"{row['needed']}: {row['detail']}"))
        elif row["verdict"] == "runs without it":
            out.append(Check(name, WEAK, f"optional, jobs run without it: {row['detail']}",
                             row["detail"]))  # fmt: skip
        else:
            out.append(Check(name, MISSING, f"required: {row['detail']}", "the pilot "
                             f"refuses jobs until it is there: {row['detail']}",
                             blocking=True))  # fmt: skip
    return out


def python() -> Check:
    """The sandbox's interpreter, which runs the JobWrapper and the landlock step (the
    oldest it may be: images.hostpython.OLDEST)."""
    name = "python3 in the sandbox"
    oldest = ".".join(map(str, hostpython.OLDEST))
    try:
        version = hostpython.version(PYTHON)
    except hostpython.NoHostPython as exc:
        return Check(name, MISSING, str(exc), f"install python3 {oldest} or later: the "
                     "JobWrapper runs on it", blocking=True)  # fmt: skip
    too_old = hostpython.too_old(version, PYTHON)
    if too_old is not None:
        found, fix = too_old.split(": ", 1)
        return Check(name, MISSING, found, fix, blocking=True)
    return Check(name, OK, f"{PYTHON} is Python {version[0]}.{version[1]}")


def images(policy_name: str, dirs: list[Path]) -> list[Check]:
    """Whether single-file images can be mounted here, and whether each image the
    policy names (its default and its platforms) is there and of a usable kind. Their
    digests are not computed here: a large image takes a while (`image inspect`)."""
    why = mount.unusable()
    out = [Check("single-file images", OK, "squashfuse, fusermount and /dev/fuse are here")
           if why is None else Check("single-file images", WEAK, f"directory images only: {why}",
                                     "needed only for squashfs and SIF images")]  # fmt: skip
    policy = load_policy(policy_name, dirs)
    named = [("filesystem.image", str(policy["filesystem.image"].value))]
    named += [(f"images.platforms.{i.value[0]}", str(i.value[1]))
              for i in policy["images.platforms"].value]  # fmt: skip
    pins = {str(i.value[0]) for i in policy["images.pins"].value}
    for key, path in named:
        if not path.startswith("/"):
            continue
        name = f"policy {policy_name}: {key}"
        default = key == "filesystem.image"
        try:
            prepare.check_place(path)
            kind = kinds.of_path(path)
        except (OSError, ImageRefused) as exc:
            said = exc.strerror if isinstance(exc, OSError) else str(exc)
            out.append(Check(name, MISSING, f"{path}: {said}", "every job on it stops the "
                             "pilot: fix the path or the policy", blocking=default))  # fmt: skip
            continue
        if kind.name != "directory" and why is not None:
            out.append(Check(name, MISSING, f"a {kind.name} image, and {why}",
                             "make FUSE usable here, or use a directory image",
                             blocking=default))  # fmt: skip
            continue
        pinned = path in pins or os.path.realpath(path) in pins
        held = "pinned" if pinned else "not pinned (image pin prints a pin)"
        out.append(Check(name, OK if pinned else WEAK, f"{kind.name} {path}, {held}",
                         "" if pinned else "pin the site's images"))  # fmt: skip
    return out


def node_paths(policy_name: str, dirs: list[Path]) -> list[Check]:
    """Each path the policy requires of this node (filesystem.required: missing, the
    pilot hands its jobs back and waits or stops), and each bind it names that this
    node lacks (the sandbox leaves it out)."""
    policy = load_policy(policy_name, dirs)
    out = []
    for item in policy["filesystem.required"].value:
        path, why = str(item.value), binds.answer(str(item.value))
        name = f"policy {policy_name}: required {path}"
        out.append(Check(name, OK, "there") if why is None else
                   Check(name, MISSING, f"{path}: {why} ({item.origin})", "mount it (CVMFS: "
                         "cvmfs_config probe); until then the pilot takes no job",
                         blocking=True))  # fmt: skip
    required = {str(i.value) for i in policy["filesystem.required"].value}
    for key in binds.NAMED_BINDS:
        for item in policy[key].value:
            path = str(item.value)
            if path not in required and not os.path.lexists(path):
                out.append(Check(f"policy {policy_name}: {key} {path}", WEAK,
                                 f"missing ({item.origin}): jobs run without it",
                                 "mount it, or add it to filesystem.required if jobs need "
                                 "it"))  # fmt: skip
    return out


def rlimits_here(policy_name: str, dirs: list[Path]) -> list[Check]:
    """Whether this agent can give the payload the policy's rlimits (a pool account
    cannot raise a hard limit)."""
    view = compose(load_policy(policy_name, dirs)).view
    beyond = rlimits.above(view.process.rlimits.items())
    if not beyond:
        return [Check(f"policy {policy_name}: process.rlimits", OK,
                      "each within what this agent may set")]  # fmt: skip
    return [Check(f"policy {policy_name}: process.rlimits", MISSING, line.split(": ", 1)[0],
                  line.split(": ", 1)[1], blocking=True) for line in beyond]  # fmt: skip


def checks(policy_name: str, dirs: list[Path]) -> list[Check]:
    """Every check, in the order a site admin reads them."""
    found = [kernel(), *user_namespaces(), *cgroups(), seccomp(), landlock(), *sysctls(),
             python(), *runtimes(), *policy_fallbacks(policy_name, dirs),
             *rlimits_here(policy_name, dirs), *node_paths(policy_name, dirs),
             *images(policy_name, dirs)]  # fmt: skip
    return overruled(found)


def overruled(found: list[Check]) -> list[Check]:
    """A kernel switch that says no (AppArmor's restriction on unprivileged user
    namespaces) while bwrap really made its sandbox: a profile lets bwrap through, so
    the line is WEAK, not a reason to refuse jobs."""
    bwrap = next((c for c in found if c.name == "runtime bwrap"), None)
    if bwrap is None or bwrap.status != OK:
        return found
    return [Check(c.name, WEAK, c.found, "bwrap made its test sandbox all the same (a profile "
                  "allows it); other programs may not", blocking=False)
            if c.name == "unprivileged user namespaces" and c.status == MISSING else c
            for c in found]  # fmt: skip
