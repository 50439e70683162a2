"""Privilege: a capability kept, no_new_privs or the seccomp filter missing, a setuid-root
or file-capability binary that raises privilege when run, and what a privilege would
buy (raw sockets, a mount, a file given to uid 0, a device node).

Defences: bwrap --cap-drop ALL, no_new_privs and the filter set before exec, nosuid
mounts, host root unmapped in the user namespace (and the payload's user namespace
nested, owning no network namespace), the seccomp profile.
"""

import contextlib
import ctypes
import os
import select
import socket
import stat
import struct
import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the package; the sandbox imports plain names (run.py)
    from sandbox_agent.wrapper.probe import attack_common as common
    from sandbox_agent.wrapper.probe.attack_common import Config, Result
else:
    import attack_common as common


MECHANISM = "privilege"


def _status() -> "dict[str, str]":
    fields = {}
    for line in common.read("/proc/self/status").decode().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def capabilities(config: "Config") -> "Result":
    """Keep a capability: CapInh/CapPrm/CapEff/CapBnd/CapAmb must all be zero."""
    fields = _status()
    names = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    held = {n: fields.get(n, "?") for n in names if int(fields.get(n, "1") or "1", 16)}
    if held:
        return common.leaked(f"capabilities held: {held}")
    return common.blocked("all capability sets are empty")


def no_new_privs(config: "Config") -> "Result":
    """Run without no_new_privs or without a seccomp filter."""
    fields = _status()
    nnp, mode = fields.get("NoNewPrivs"), fields.get("Seccomp")
    if nnp == "1" and mode == "2":
        return common.blocked("NoNewPrivs 1, Seccomp 2 (filter)")
    return common.leaked(f"NoNewPrivs {nnp}, Seccomp {mode}")


_PRELOAD = "/nonexistent/sandbox-agent-probe.so"
_PRELOAD_ERROR = b"cannot be preloaded"


def _dynamic(path: str) -> bool:
    """Whether ``path`` is an ELF executable with a program interpreter (ld.so): only
    those can answer the LD_PRELOAD question."""
    try:
        with open(path, "rb") as file:
            header = file.read(64)
            if header[:4] != b"\x7fELF":
                return False
            if header[4] == 2:  # ELFCLASS64: e_phoff at 32, e_phentsize and e_phnum at 54
                (table_at,) = struct.unpack_from("<Q", header, 32)
                size, count = struct.unpack_from("<HH", header, 54)
            else:  # ELFCLASS32: e_phoff at 28, e_phentsize and e_phnum at 42
                (table_at,) = struct.unpack_from("<I", header, 28)
                size, count = struct.unpack_from("<HH", header, 42)
            file.seek(table_at)
            table = file.read(size * count)
        kinds = [struct.unpack_from("<I", table, i * size)[0] for i in range(count)]
    except (OSError, struct.error):
        return False
    return 3 in kinds  # PT_INTERP


def _secure_execs(paths: "list[str]") -> "dict[str, bool | None]":
    """For each binary, whether the kernel ran it as a privilege-raising (secure) exec.
    A dynamically linked program's ld.so says at once, before main, that it cannot
    preload an LD_PRELOAD path with a slash, unless the exec is secure: then it ignores
    it without a word. So silence (the end of stderr, or 2 s) means a secure exec.
    None: no answer possible (not dynamically linked, not readable, not executable).
    The binaries run side by side, each killed once it has answered (unix_chkpwd
    sleeps after a failure)."""
    answers: dict[str, bool | None] = {}
    running: dict[str, subprocess.Popen[bytes]] = {}
    for path in paths:
        if not _dynamic(path):
            answers[path] = None
            continue
        try:
            running[path] = subprocess.Popen(
                [path, "--version"], env={"LD_PRELOAD": _PRELOAD, "PATH": "/usr/bin:/bin"},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
        except OSError:
            answers[path] = None
    said = dict.fromkeys(running, b"")
    waiting = {proc.stderr.fileno(): path for path, proc in running.items() if proc.stderr}
    deadline = time.monotonic() + 2
    while waiting and time.monotonic() < deadline:
        ready, _, _ = select.select(list(waiting), [], [], max(0.0, deadline - time.monotonic()))
        for fd in ready:
            chunk = os.read(fd, 4096)
            said[waiting[fd]] += chunk
            if not chunk or _PRELOAD_ERROR in said[waiting[fd]]:
                del waiting[fd]  # answered: the message, or the end without it
    for path, proc in running.items():
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
        answers[path] = _PRELOAD_ERROR not in said[path]
    return answers


def _mount_options(path: str) -> str:
    """The mount options of the mount holding ``path`` (from /proc/self/mountinfo)."""
    best, options = "", "?"
    try:
        lines = common.read("/proc/self/mountinfo").decode().splitlines()
    except OSError:
        return options
    for line in lines:
        fields = line.split()
        point = fields[4]
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, options = point, fields[5]
    return options


def setuid_exec(config: "Config") -> "Result":
    """Run the setuid-root and file-capability binaries bound into the sandbox (su,
    passwd, mount, ping...) and see whether any exec raised privilege."""
    candidates = []
    for directory in ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/lib/dbus-1.0",
                      "/usr/lib/openssh"):  # fmt: skip
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            special = bool(info.st_mode & (stat.S_ISUID | stat.S_ISGID))
            with contextlib.suppress(OSError):
                special = special or bool(os.getxattr(path, "security.capability"))
            if special and info.st_mode & 0o111:
                candidates.append(path)
    if not candidates:
        return common.na("no setuid, setgid or file-capability binary is visible")
    # The control: an ordinary binary must say it cannot preload, or the method is blind.
    baseline = next((p for p in ("/usr/bin/true", "/bin/true", "/usr/bin/env")
                     if os.path.exists(p)), "/usr/bin/true")  # fmt: skip
    answers = _secure_execs([baseline, *candidates])
    if answers.pop(baseline) is not False:
        return common.na(f"{baseline} gave no LD_PRELOAD answer: cannot tell")
    raised = [p for p, answer in answers.items() if answer]
    plain = [p for p, answer in answers.items() if answer is False]
    silent = [p for p, answer in answers.items() if answer is None]
    detail = (f"secure exec: {raised}; no privilege: {len(plain)}; no answer: {silent}; "
              f"NoNewPrivs {_status().get('NoNewPrivs')}; "
              f"{candidates[0]} mounted {_mount_options(candidates[0])}")  # fmt: skip
    if raised:
        return common.leaked(detail)
    if not plain:
        return common.na(detail)
    return common.blocked(detail)


def raw_socket(config: "Config") -> "Result":
    """Open raw sockets (AF_INET SOCK_RAW, AF_PACKET): needs CAP_NET_RAW; sniffing or
    forging packets."""
    tried = []
    for family, kind, proto, label in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP,
                                        "AF_INET/SOCK_RAW"),
                                       (17, socket.SOCK_RAW, 0, "AF_PACKET/SOCK_RAW")):  # fmt: skip
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            tried.append(common.oserror(label, exc))
            continue
        sock.close()
        return common.leaked(f"{label} opened")
    return common.blocked("; ".join(tried))


def mount_tmpfs(config: "Config") -> "Result":
    """mount a tmpfs (needs CAP_SYS_ADMIN): reshaping the filesystem under the payload."""
    target = os.path.abspath(f"probe-mnt-{os.getpid()}")
    try:
        os.mkdir(target)
    except OSError as exc:
        return common.na(common.oserror(f"mkdir {target}", exc))
    try:
        ctypes.set_errno(0)
        value = common.libc.mount(b"none", target.encode(), b"tmpfs", 0, None)
        number = ctypes.get_errno()
        if value == 0:
            common.libc.umount2(target.encode(), 2)  # MNT_DETACH
            return common.leaked(f"mounted a tmpfs on {target}")
        return common.blocked(f"mount tmpfs: {common.err(number)}")
    finally:
        os.rmdir(target)


def chown_root(config: "Config") -> "Result":
    """chown a file the payload owns to uid 0 (then a setuid-root file for host users)."""
    path = os.path.abspath(f"probe-chown-{os.getpid()}")
    try:
        with open(path, "w"):
            pass
    except OSError as exc:
        return common.na(common.oserror(f"create {path}", exc))
    try:
        os.chown(path, 0, 0)
        return common.leaked(f"{path} is now owned by uid {os.stat(path).st_uid} inside")
    except OSError as exc:
        return common.blocked(common.oserror("chown 0:0", exc))
    finally:
        os.unlink(path)


def mknod_char(config: "Config") -> "Result":
    """mknod a character device (1,3: /dev/null's numbers); with a device of its own a
    payload reaches hardware (a disk's device, /dev/mem)."""
    path = os.path.abspath(f"probe-dev-{os.getpid()}")
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError as exc:
        return common.blocked(common.oserror("mknod c 1 3", exc))
    os.unlink(path)
    return common.leaked(f"made the character device {path}")


ATTACKS = {
    "capabilities": common.Attack(MECHANISM, "the payload keeps a capability", "bwrap "
                                  "--cap-drop ALL: every set empty, the bounding set too",
                                  capabilities),
    "no_new_privs": common.Attack(MECHANISM, "the payload runs without no_new_privs or "
                                  "without the seccomp filter", "bwrap sets "
                                  "PR_SET_NO_NEW_PRIVS and loads the filter before exec",
                                  no_new_privs),
    "setuid_exec": common.Attack(MECHANISM, "a setuid-root or file-capability binary (su, "
                                 "passwd, mount) raises privilege", "no_new_privs; nosuid "
                                 "mounts; host root is unmapped in the user namespace",
                                 setuid_exec),
    "raw_socket": common.Attack(MECHANISM, "raw or packet sockets (sniff, forge)", "no "
                                f"CAP_NET_RAW, and a kept one is worth nothing: {common.NESTED}; "
                                "seccomp allows unix, inet, inet6 and netlink only", raw_socket),
    # host_safe False from here on: a success would change the host
    "mount_tmpfs": common.Attack(MECHANISM, "mount a filesystem", "no CAP_SYS_ADMIN; "
                                 f"{common.SECCOMP}", mount_tmpfs, False),
    "chown_root": common.Attack(MECHANISM, "give a file to uid 0 (a setuid-root binary for "
                                "host users)", "uid 0 is unmapped in the user namespace; no "
                                "CAP_CHOWN", chown_root, False),
    "mknod_char": common.Attack(MECHANISM, "make a device node to reach hardware", "no "
                                "CAP_MKNOD; user namespaces never allow device nodes; nodev "
                                "mounts", mknod_char, False),
}  # fmt: skip
