"""Credentials: the agent's key and certificate directory by their host paths, /root,
a secret variable in the payload's own environment or in the environment or argv of
any process visible inside (bwrap's pid 1 included), and the environment, descriptors
and memory of a same-uid process outside the sandbox, through /proc.

Defences: the mount namespace (the credential directories and /root are denied, never
bound), bwrap --clearenv with an allowlist of variables, the PID namespace with a
private /proc, and the user namespace.
"""

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the package; the sandbox imports plain names (run.py)
    from sandbox_agent.wrapper.probe import attack_common as common
    from sandbox_agent.wrapper.probe.attack_common import Config, Result
else:
    import attack_common as common

MECHANISM = "credentials"


def key_file(config: "Config") -> "Result":
    """Read the agent's key file by its host path."""
    return common.secret_in_files(
        config, "key_paths", "no key path given",
        lambda path, size: f"{path}: readable ({size} bytes) but not the agent's key",
    )  # fmt: skip


def cert_dir(config: "Config") -> "Result":
    """List the agent's certificate directory."""
    paths = common.unhex(config, "cert_dirs")
    if not paths:
        return common.na("no certificate directory given")
    seen = []
    for path in paths:
        try:
            names = os.listdir(path)
        except OSError as exc:
            seen.append(common.oserror(path, exc))
            continue
        if names:
            return common.leaked(f"{path}: lists {sorted(names)[:10]}")
        seen.append(f"{path}: empty")
    return common.blocked("; ".join(seen))


def env_self(config: "Config") -> "Result":
    """Find a secret variable (by name or by value) in the payload's own environment."""
    names = [n for n in config.get("env_names", []) if n in os.environ]
    values = [k for k, v in os.environb.items() if common.found(v, config)]
    if names or values:
        return common.leaked(f"variables {sorted(set(names) | {v.decode() for v in values})}")
    return common.blocked(f"not among the {len(os.environ)} variables: {sorted(os.environ)}")


def env_procs(config: "Config") -> "Result":
    """Find a secret in the environment or command line of every visible process (the
    runtime's helpers included: bwrap's argv holds every --setenv value)."""
    names = [n.encode() + b"=" for n in config.get("env_names", [])]
    scanned, unreadable, hits = 0, 0, []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for part in ("environ", "cmdline"):
            try:
                data = common.read(f"/proc/{entry}/{part}", 1 << 22)
            except OSError:
                unreadable += 1
                continue
            scanned += 1
            named = part == "environ" and any(
                item.startswith(n) for item in data.split(b"\0") for n in names
            )
            if named or common.found(data, config):
                hits.append(f"/proc/{entry}/{part}")
    if hits:
        return common.leaked(f"secret in {hits[:10]}")
    return common.blocked(f"not in {scanned} environ/cmdline files ({unreadable} unreadable)")


def host_environ(config: "Config") -> "Result":
    """Read /proc/<host pid>/environ: the host process holds a secret variable."""
    pid = common.host_pid(config)
    if pid is None:
        return common.na("no host pid given")
    try:
        data = common.read(f"/proc/{pid}/environ")
    except OSError as exc:
        return common.blocked(common.oserror(f"/proc/{pid}/environ", exc))
    if common.found(data, config):
        return common.leaked(f"/proc/{pid}/environ holds the secret")
    return common.blocked(f"/proc/{pid}/environ is a sandbox process's, without the secret")


def root_home(config: "Config") -> "Result":
    """List /root, the home of the host's root (where agents often keep tokens)."""
    try:
        names = os.listdir("/root")
    except OSError as exc:
        return common.blocked(common.oserror("/root", exc))
    if names:
        return common.leaked(f"/root lists {sorted(names)[:10]}")
    return common.blocked("/root is an empty directory")


def host_fd(config: "Config") -> "Result":
    """List /proc/<host pid>/fd (and read a link: what files the host process holds)."""
    pid = common.host_pid(config)
    if pid is None:
        return common.na("no host pid given")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds[:3]]
    except OSError as exc:
        return common.blocked(common.oserror(f"/proc/{pid}/fd", exc))
    if not common.is_host_target(pid, config):
        return common.sandbox_pid(pid)
    return common.leaked(f"/proc/{pid}/fd lists {fds[:10]} -> {links}")


def host_mem(config: "Config") -> "Result":
    """Read the host process's memory through /proc/<host pid>/mem."""
    pid = common.host_pid(config)
    if pid is None:
        return common.na("no host pid given")
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError as exc:
        return common.blocked(common.oserror(f"open /proc/{pid}/mem", exc))
    try:
        if not common.is_host_target(pid, config):
            return common.sandbox_pid(pid)
        try:
            start = common.first_mapping(pid)
            data = os.pread(fd, 16, start)
        except (OSError, ValueError) as exc:
            return common.leaked(f"/proc/{pid}/mem opened; read: {exc}")
        return common.leaked(f"/proc/{pid}/mem read {len(data)} bytes at {start:#x}")
    finally:
        os.close(fd)


def init_environ(config: "Config") -> "Result":
    """Read the environment and argv of the sandbox's pid 1 (bwrap's init)."""
    found: list[str] = []
    seen: list[str] = []
    for part in ("environ", "cmdline"):
        try:
            data = common.read(f"/proc/1/{part}", 1 << 22)
        except OSError as exc:
            seen.append(common.oserror(f"/proc/1/{part}", exc))
            continue
        names = [n for n in config.get("env_names", []) if n.encode() + b"=" in data]
        if common.found(data, config) or (part == "environ" and names):
            found.append(part)
        seen.append(f"/proc/1/{part}: {len(data)} bytes, no secret")
    if found:
        return common.leaked(f"secret in /proc/1/{found}")
    return common.blocked("; ".join(seen))


_HOST_PROC = f"{common.PID_NS}; {common.USER_NS}"

ATTACKS = {
    "key_file": common.Attack(MECHANISM, "the payload reads the agent's private key by its "
                              "host path", "mount namespace: the credential directory is on "
                              "the deny list, never bound; only the userland and the work "
                              "directory are", key_file),
    "cert_dir": common.Attack(MECHANISM, "the payload lists the agent's certificate "
                              "directory", "mount namespace (deny list)", cert_dir),
    "env_self": common.Attack(MECHANISM, "a secret variable of the agent reaches the "
                              "payload's environment", "bwrap --clearenv and an allowlist of "
                              "variables; the runtime gets an empty environment", env_self),
    "env_procs": common.Attack(MECHANISM, "a secret in the environment or argv of any "
                               "process visible inside (bwrap's own included)",
                               f"{common.PID_NS}; --clearenv", env_procs),
    "host_environ": common.Attack(MECHANISM, "/proc/<host pid>/environ of a same-uid host "
                                  "process", _HOST_PROC, host_environ),
    "root_home": common.Attack(MECHANISM, "the payload lists /root", "mount namespace: /root "
                               "is denied and never bound", root_home),
    "host_fd": common.Attack(MECHANISM, "/proc/<host pid>/fd: what files a host process "
                             "holds", _HOST_PROC, host_fd),
    "host_mem": common.Attack(MECHANISM, "/proc/<host pid>/mem: a host process's memory",
                              _HOST_PROC, host_mem),
    "init_environ": common.Attack(MECHANISM, "the environment and argv of the sandbox's "
                                  "pid 1 (bwrap)", "bwrap is started with an empty "
                                  "environment; no secret is in its argv", init_environ),
}  # fmt: skip
