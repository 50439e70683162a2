"""Writes outside the work directory: files planted in /, /etc, the host's /usr, /dev
and /var (for the next job or the host), kernel settings in /proc/sys and /sys
(core_pattern and uevent_helper run a command as host root), the cgroup tree (to leave
the job's cgroup), the runtime's binaries through /proc/*/exe (CVE-2019-5736), and any
host path a site names.

Defences: the root and /dev remounted read-only, read-only binds, /sys denied and not
mounted, /proc/sys owned by the unmapped host root, no capabilities, landlock.
"""

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the package; the sandbox imports plain names (run.py)
    from sandbox_agent.wrapper.probe import attack_common as common
    from sandbox_agent.wrapper.probe.attack_common import Config, Result
else:
    import attack_common as common

MECHANISM = "filesystem"


def _plant(path: str) -> "tuple[bool, str]":
    """Try to change ``path``: create it, or open an existing file for writing (that is
    the leak) and write back what it holds, if it can be read, so that a sysctl stays
    as it was. (got through, description)."""
    try:
        if os.path.lexists(path) and not os.path.isdir(path):
            fd = os.open(path, os.O_WRONLY)
            try:
                try:
                    current = common.read(path, 4096)
                except OSError:
                    current = b""  # write-only (drop_caches): write nothing
                if current:
                    os.write(fd, current)
            finally:
                os.close(fd)
            return True, f"{path}: opened for writing" + (" and written" if current else "")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.unlink(path)  # leave nothing behind, even on a leak
        return True, f"{path}: created"
    except OSError as exc:
        return False, common.oserror(path, exc)


def _plant_all(paths: "list[str]") -> "Result":
    if not paths:
        return common.na("no path to try")
    outcomes = [_plant(p) for p in paths]
    return common.either([d for changed, d in outcomes if changed], [d for _, d in outcomes])


def write_root_fs(config: "Config") -> "Result":
    """Create files in /, /etc, /usr (the host's, bound), /dev, /var: plant binaries or
    configuration for the next job or the host."""
    places = ("", "/etc", "/usr", "/usr/bin", "/dev", "/var")
    return _plant_all([f"{d}/probe-planted-{os.getpid()}" for d in places])


def write_sysctl(config: "Config") -> "Result":
    """Write kernel settings: /proc/sys/kernel/core_pattern (a host-root command on the
    next crash), hostname. The probe writes back the value it read."""
    return _plant_all(["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/hostname",
                       "/proc/sys/vm/drop_caches"])  # fmt: skip


def write_sys(config: "Config") -> "Result":
    """Write /sys: uevent_helper (a host-root command on the next device event), power
    and module settings. The probe writes back the value it read."""
    return _plant_all(["/sys/kernel/uevent_helper", "/sys/kernel/mm/ksm/run",
                       "/sys/module/printk/parameters/time"])  # fmt: skip


def cgroup_escape(config: "Config") -> "Result":
    """Leave the job's cgroup (its limits, the agent's teardown): make a cgroup, or
    write the probe's pid into a cgroup.procs under /sys/fs/cgroup."""
    roots = ["/sys/fs/cgroup"]
    try:
        roots += [f"/sys/fs/cgroup/{n}" for n in sorted(os.listdir("/sys/fs/cgroup"))]
    except OSError as exc:
        return common.blocked(common.oserror("/sys/fs/cgroup", exc))
    leaked: list[str] = []
    seen: list[str] = []
    for root in roots:
        made = f"{root}/sandbox-agent-probe-{os.getpid()}"
        try:
            os.mkdir(made)
        except OSError as exc:
            seen.append(common.oserror(f"mkdir {made}", exc))
        else:
            leaked.append(f"made {made}")
            with contextlib.suppress(OSError):
                os.rmdir(made)
        procs = f"{root}/cgroup.procs"
        try:
            fd = os.open(procs, os.O_WRONLY)
        except OSError as exc:
            seen.append(common.oserror(procs, exc))
            continue
        try:
            os.write(fd, str(os.getpid()).encode())
            leaked.append(f"moved into {root}")
        except OSError as exc:
            seen.append(common.oserror(f"write {procs}", exc))
        finally:
            os.close(fd)
    return common.either(leaked, seen)


def overwrite_runtime(config: "Config") -> "Result":
    """Open the binaries that run the sandbox for writing through /proc (/proc/1/exe:
    bwrap; /proc/self/exe: the interpreter), as in runc's CVE-2019-5736: the magic link
    reaches the host's file past the read-only bind. Nothing is written."""
    seen = []
    for link in ("/proc/1/exe", "/proc/self/exe"):
        try:
            fd = os.open(link, os.O_WRONLY)
        except OSError as exc:
            seen.append(common.oserror(f"open {link} for writing", exc))
            continue
        os.close(fd)
        return common.leaked(f"{link} opened for writing")
    return common.blocked("; ".join(seen))


def write_extra(config: "Config") -> "Result":
    """Create files at further host paths a site (or a test's control) names."""
    return _plant_all([f"{p}/probe-planted-{os.getpid()}" for p in config.get("write_paths", [])])


ATTACKS = {
    # host_safe False but for overwrite_runtime, which writes nothing: a success plants
    # a file or changes a setting of the host
    "write_root_fs": common.Attack(MECHANISM, "plant files in /, /etc, /usr, /dev, /var",
                                   "the root and /dev are remounted read-only; binds are "
                                   "read-only; landlock", write_root_fs, False),
    "write_sysctl": common.Attack(MECHANISM, "write kernel settings (core_pattern runs a "
                                  "command as host root)", "/proc/sys belongs to the "
                                  "unmapped host root; no capabilities; landlock",
                                  write_sysctl, False),
    "write_sys": common.Attack(MECHANISM, "write /sys (uevent_helper runs a command as host "
                               "root)", "/sys is denied and not mounted", write_sys, False),
    "cgroup_escape": common.Attack(MECHANISM, "leave the job's cgroup (its limits, "
                                   "teardown)", "/sys/fs/cgroup is not mounted; the agent "
                                   "placed the job", cgroup_escape, False),
    "overwrite_runtime": common.Attack(MECHANISM, "overwrite the host's bwrap or python "
                                       "through /proc/*/exe (CVE-2019-5736)", "bwrap's pid 1 "
                                       "is in the parent user namespace (no ptrace access, so "
                                       "no /proc/1/exe); the files belong to the unmapped "
                                       "host root; read-only binds", overwrite_runtime),
    "write_extra": common.Attack(MECHANISM, "create files at site-named host paths",
                                 "read-only binds; landlock", write_extra, False),
}  # fmt: skip
