"""What every attack module shares: the result constructors, the attack record, the raw
system call wrapper, and how the probe tells a host process or a secret when it sees
one. No attack lives here; ``attack_table`` lists them all.

Standard library only: ``run.py`` imports this module by its plain name inside the
sandbox (see there why). Like every file of the probe it runs on the sandbox's python3
from 3.6 on (EL8's): no ``from __future__ import annotations``, so every annotation
Python evaluates is a string, and the types named only in them are mypy's alone.
"""

import ctypes
import errno
import os
import platform
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # never run: a subscripted dict is no runtime value before 3.9
    from collections.abc import Callable
    from typing import Any

    Result = dict[str, str]  # novm (an attack's answer)
    Config = dict[str, Any]  # novm (what the probe was told to look for)
    SyscallArg = int | bytes | ctypes.Array[Any] | None  # novm

BLOCKED, LEAKED, NA = "blocked", "LEAKED", "n/a"

# x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl) for calls the C
# library has no wrapper for, or whose wrapper would hide the raw answer.
NR = {
    "ptrace": 101, "chroot": 161, "settimeofday": 164, "mount": 165, "sethostname": 170,
    "keyctl": 250, "unshare": 272, "perf_event_open": 298, "open_by_handle_at": 304,
    "setns": 308, "process_vm_readv": 310, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "pidfd_open": 434,
}  # fmt: skip

# One C library handle for every module: ctypes keeps the prototypes below on it, so the
# calls are declared once, here.
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_void_p]  # fmt: skip
libc.shmget.restype = ctypes.c_int
libc.shmat.restype = ctypes.c_void_p

# The inode numbers of the initial namespaces (include/linux/proc_ns.h): a probe that
# sees them is not in a sandbox of its own.
INIT_USER_NS, INIT_PID_NS = 0xEFFFFFFD, 0xEFFFFFFC

# Defences several modules name in their tables.
PID_NS = "PID namespace and a private /proc: host processes have no pid inside"
SECCOMP = "seccomp profile (EPERM)"
USER_NS = ("the user namespace: same-uid access to a process of another user namespace "
           "needs CAP_SYS_PTRACE over it")  # fmt: skip
NESTED = ("bwrap --disable-userns nests the payload's user namespace under the one that "
          "owns bwrap's pid 1 and the network namespace")  # fmt: skip


class Attack(NamedTuple):
    mechanism: str  # which test file covers it: credentials, processes, ...
    threat: str
    defence: str
    run: "Callable[[Config], Result]"
    # False: a success would change the host (plant files, signal processes, set the
    # clock), so the attack is refused outside a user namespace (a test's control run
    # on the host, a mistaken run by hand).
    host_safe: bool = True


# -- results ----------------------------------------------------------------------------


def res(result: str, detail: str) -> "Result":
    return {"result": result, "detail": detail[:600]}


def blocked(detail: str) -> "Result":
    return res(BLOCKED, detail)


def leaked(detail: str) -> "Result":
    return res(LEAKED, detail)


def na(detail: str) -> "Result":
    return res(NA, detail)


def either(got_through: "list[str]", seen: "list[str]") -> "Result":
    """LEAKED with what got through when anything did, else BLOCKED with what was seen."""
    return leaked("; ".join(got_through)) if got_through else blocked("; ".join(seen))


def err(number: int) -> str:
    return errno.errorcode.get(number, str(number))


def oserror(what: str, exc: OSError) -> str:
    return f"{what}: {err(exc.errno) if exc.errno else exc}"


# -- system calls -----------------------------------------------------------------------


def syscall(name: str, *args: "SyscallArg") -> "tuple[int, int]":
    """A raw x86_64 system call by name: (return value, errno)."""
    return raw_syscall(NR[name], *args)


def raw_syscall(number: int, *args: "SyscallArg") -> "tuple[int, int]":
    """A raw system call by number: (return value, errno). Integers go as full longs."""
    wrapped = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    value = int(libc.syscall(ctypes.c_long(number), *wrapped))
    return value, (ctypes.get_errno() if value < 0 else 0)


def not_x86_64() -> "str | None":
    """Why raw x86_64 system call numbers cannot be used here, or None."""
    machine = platform.machine()
    return None if machine == "x86_64" else f"system call numbers are x86_64's, this is {machine}"


def ns_inode(kind: str) -> "int | None":
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return None


# -- what the probe looks for -----------------------------------------------------------


def unhex(config: "Config", key: str) -> "list[str]":
    return [bytes.fromhex(s).decode() for s in config.get(key, [])]


def _secrets(config: "Config") -> "list[bytes]":
    """Everything that must not be seen inside: the secrets, and the credential paths."""
    paths = unhex(config, "key_paths") + unhex(config, "cert_dirs")
    return [bytes.fromhex(s) for s in config.get("secrets", [])] + [p.encode() for p in paths]


def read(path: str, limit: int = 1 << 20) -> bytes:
    with open(path, "rb") as file:
        return file.read(limit)


def found(data: bytes, config: "Config") -> bool:
    return any(secret and secret in data for secret in _secrets(config))


def secret_in_files(
    config: "Config", key: str, none_given: str, other: "Callable[[str, int], str]"
) -> "Result":
    """Read each file of ``config[key]`` (hex paths): LEAKED at the first that holds a
    secret. ``other(path, size)`` describes a readable file without one."""
    paths = unhex(config, key)
    if not paths:
        return na(none_given)
    seen = []
    for path in paths:
        try:
            data = read(path)
        except OSError as exc:
            seen.append(oserror(path, exc))
            continue
        if found(data, config):
            return leaked(f"{path}: read the secret")
        seen.append(other(path, len(data)))
    return blocked("; ".join(seen))


def first_mapping(pid: int) -> int:
    """The start address of the first mapping of ``pid`` (OSError, ValueError)."""
    return int(read(f"/proc/{pid}/maps", 4096).split(b"-", 1)[0], 16)


def host_pid(config: "Config") -> "int | None":
    pid = config.get("host_pid")
    return int(pid) if pid else None


def is_host_target(pid: int, config: "Config") -> bool:
    """Whether ``pid`` as seen here is the host's target process, not a sandbox process
    that happens to have the same number. Unreadable counts as the host's (when in
    doubt, the probe says LEAKED rather than blocked)."""
    marker = bytes.fromhex(config.get("host_marker", ""))
    try:
        return not marker or marker in read(f"/proc/{pid}/cmdline")
    except OSError:
        return True


def sandbox_pid(pid: int) -> "Result":
    """The answer when ``pid`` turned out to be a sandbox process, not the host's."""
    return blocked(f"pid {pid} here is a sandbox process")
