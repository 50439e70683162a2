"""Host information: what the sandbox shows of the node and of the agent beyond the job.
The command line of every visible process (bwrap's own: the sandbox's pid 1 is a fork
of it), the sources of the sandbox's mounts (/proc/self/mountinfo), and the host-wide
files of the sandbox's own /proc.

Defences: the launcher hands bwrap its options on a descriptor (``--args``), so its
argv inside is ``bwrap --args N -- <the command>``; the agent's files come on
descriptors into bwrap's own tmpfs, never bound from a directory of the agent's; the
host-wide /proc files are masked (a read-only bind of /dev/null, an empty read-only
tmpfs for directories). What stays, and why it is harmless, is in
docs/threat-model.md: the work directory's own mount shows its source, and the
host's userland and a directory image theirs.
"""

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the package; the sandbox imports plain names (run.py)
    from sandbox_agent.wrapper.probe import attack_common as common
    from sandbox_agent.wrapper.probe.attack_common import Config, Result
else:
    import attack_common as common

MECHANISM = "hostinfo"

# bwrap's options that bind a host path (source, then the place inside)
_BINDS = frozenset({"--bind", "--bind-try", "--ro-bind", "--ro-bind-try", "--dev-bind",
                    "--dev-bind-try"})  # fmt: skip
# names the agent gives its own temporary directories (files for the sandbox, images)
_AGENT_NAMES = ("sandbox-agent-files-", "sandbox-agent-image-")
# Host-wide files of /proc that describe the node, its hardware and its other users
# rather than the job, and directories that list its hardware. /proc/kcore is left out:
# only the host's root may read it, and reading it would take long.
HOST_WIDE = (
    "/proc/cmdline", "/proc/config.gz", "/proc/kallsyms", "/proc/sys/kernel/random/boot_id",
    "/proc/diskstats", "/proc/interrupts", "/proc/keys", "/proc/key-users",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/latency_stats",
)  # fmt: skip
HOST_WIDE_DIRS = ("/proc/acpi", "/proc/asound", "/proc/scsi")


def agent_paths(config: "Config") -> "list[str]":
    """Host paths that name the agent: its home (the parent of its certificate
    directory), its credentials, and what the caller adds (``agent_paths``: its work
    area, its temporary directory)."""
    dirs = common.unhex(config, "cert_dirs")
    paths = common.unhex(config, "agent_paths") + dirs + common.unhex(config, "key_paths")
    paths += [os.path.dirname(path.rstrip("/")) for path in dirs]
    return sorted({path.rstrip("/") for path in paths if path.strip("/")})


def _tails(path: str) -> "list[str]":
    """``path`` and the same path seen from a filesystem mounted below its first parts
    (a bind's source in mountinfo is relative to its filesystem's root), down to its
    last two components: /var/tmp/x/home, /tmp/x/home, /x/home."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[at:]) for at in range(max(1, len(parts) - 1))]


def _names_agent(text: str, paths: "list[str]") -> "str | None":
    """The agent's path (or its own temporary directory) ``text`` names, or None."""
    for path in paths:
        if path in text:
            return path
    for name in _AGENT_NAMES:
        if name in text:
            return f"a directory named {name}*"
    return None


def runtime_argv(config: "Config") -> "Result":
    """Read the command line of every visible process (bwrap's own included) for a host
    path of the agent's, or a bind of a host path at another place inside."""
    paths = agent_paths(config)
    hits, scanned = [], 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            data = common.read(f"/proc/{entry}/cmdline", 1 << 22)
        except OSError:
            continue
        scanned += 1
        words = data.decode("utf-8", "replace").split("\0")
        named = _names_agent("\0".join(words), paths)
        if named is not None:
            hits.append(f"/proc/{entry}/cmdline names {named}")
            continue
        for at, word in enumerate(words[:-2]):
            if word in _BINDS and words[at + 1] != words[at + 2]:
                hits.append(f"/proc/{entry}/cmdline binds the host's {words[at + 1]} at "
                            f"{words[at + 2]}")  # fmt: skip
                break
    if hits:
        return common.leaked("; ".join(hits[:5]))
    return common.blocked(f"no host path of the agent's and no bind in {scanned} command lines")


def _unescape(field: str) -> str:
    """A mountinfo field with its octal escapes (\\040 for a space) undone."""
    out, at = [], 0
    while at < len(field):
        if field[at] == "\\" and field[at + 1 : at + 4].isdigit():
            out.append(chr(int(field[at + 1 : at + 4], 8)))
            at += 4
        else:
            out.append(field[at])
            at += 1
    return "".join(out)


def _workdir_mount(points: "list[str]") -> "str | None":
    """The mount the payload's work directory (its cwd) is on, unless that is /."""
    cwd = os.getcwd()
    under = [p for p in points if p != "/" and (cwd == p or cwd.startswith(p.rstrip("/") + "/"))]
    return max(under, key=len) if under else None


def mount_sources(config: "Config") -> "Result":
    """Read the sandbox's mount table (/proc/self/mountinfo) for a mount whose source
    names a host path of the agent's (its home, its files for the sandbox)."""
    paths = agent_paths(config)
    try:
        lines = common.read("/proc/self/mountinfo").decode("utf-8", "replace").splitlines()
    except OSError as exc:
        return common.na(common.oserror("/proc/self/mountinfo", exc))
    mounts = [(_unescape(f[3]), _unescape(f[4])) for f in (line.split(" ") for line in lines)
              if len(f) > 4]  # fmt: skip
    work = _workdir_mount([point for _, point in mounts])
    hits = []
    for root, point in mounts:
        if point == work:
            continue  # the job's own directory: docs/threat-model.md says what it shows
        named = _names_agent(root, paths)
        if named is None:
            named = next((p for p in paths for tail in _tails(p)
                          if root == tail or root.startswith(tail + "/")), None)  # fmt: skip
        if named is not None:
            hits.append(f"{point} is the host's {root} ({named})")
    if hits:
        return common.leaked("; ".join(hits[:5]))
    skipped = f" (the work directory's mount {work} left out)" if work else ""
    return common.blocked(f"no mount of {len(mounts)} names a host path of the agent's{skipped}")


def _file_read(path: str) -> str:
    data = common.read(path, 4096)
    return f"{path} ({len(data)} bytes: {data[:40]!r})" if data else ""


def _directory_listed(path: str) -> str:
    names = os.listdir(path)
    return f"{path} lists {sorted(names)[:5]}" if names else ""


def host_wide_proc(config: "Config") -> "Result":
    """Read the host-wide files of /proc that describe the node (its kernel's command
    line and configuration, its boot id, disk and interrupt counters, keys, timer and
    scheduler lists naming host processes) and list its hardware directories."""
    read: list[str] = []
    seen: list[str] = []
    for paths, look in ((HOST_WIDE, _file_read), (HOST_WIDE_DIRS, _directory_listed)):
        for path in paths:
            try:
                shown = look(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                seen.append(common.oserror(path, exc))
                continue
            (read if shown else seen).append(shown or f"{path}: empty")
    if not read and not seen:
        return common.na("this kernel has none of them")
    return common.either(read, seen)


_MASKED = ("bwrap: a read-only bind of /dev/null over each file (EACCES), an empty "
           "read-only tmpfs over each directory")  # fmt: skip

ATTACKS = {
    "runtime_argv": common.Attack(MECHANISM, "the runtime's argv (bwrap's: the sandbox's pid "
                                  "1) shows host paths of the agent's and what is bound from "
                                  "where", "the launcher passes bwrap its options on a "
                                  "descriptor (--args): its argv is 'bwrap --args N -- "
                                  "<command>'", runtime_argv),
    "mount_sources": common.Attack(MECHANISM, "the mount table (mountinfo) shows host paths "
                                   "of the agent's (its home, its files for the sandbox) as "
                                   "mount sources", "the agent's files come on descriptors "
                                   "into bwrap's own tmpfs, nothing of the agent's is bound",
                                   mount_sources),
    "host_wide_proc": common.Attack(MECHANISM, "host-wide /proc files describe the node: its "
                                    "kernel's command line and configuration, its boot id, "
                                    "disk activity, keys, host processes in timer lists",
                                    _MASKED, host_wide_proc),
}  # fmt: skip
