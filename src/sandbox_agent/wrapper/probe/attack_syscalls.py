"""System calls a payload must not make, and the ways around a filter: TIOCSTI into the
terminal, new user or mount namespaces, setns into the host's, the kernel keyring, bpf,
perf events, userfaultfd, io_uring, open_by_handle_at (the "shocker" escape), chroot,
the clock, the hostname; and the same calls through the 32-bit (int 0x80) and x32
ABIs, which a filter written for x86_64 numbers alone would let through.

Defences: the seccomp profile (EPERM), compiled for every ABI; bwrap --disable-userns;
no capabilities; the launcher's new session (no controlling terminal).
"""

import ctypes
import mmap
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the package; the sandbox imports plain names (run.py)
    from sandbox_agent.wrapper.probe import attack_common as common
    from sandbox_agent.wrapper.probe.attack_common import Config, Result
else:
    import attack_common as common

MECHANISM = "syscalls"

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
PTRACE_TRACEME = 0
KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING = 0, -3
TIOCSTI = 0x5412
TIOCSTI_HIGH = TIOCSTI | (1 << 32)  # the same request with garbage in the upper half
INJECTED = b"@"  # the byte TIOCSTI tries to push into the terminal's input
# The same calls through the 32-bit ABI (int 0x80, syscall_32.tbl) and the x32 ABI
# (the 64-bit instruction with bit 30 set; x32 has its own ptrace entry).
NR_I386 = {"unshare": 310, "keyctl": 288, "bpf": 357, "ptrace": 26}
X32_BIT = 0x40000000
NR_X32 = {"unshare": 272, "keyctl": 250, "bpf": 321, "ptrace": 521}


def _verdict(name: str, value: int, number: int) -> "Result":
    """A call the sandbox must deny: LEAKED when it succeeded. The errno says who refused
    it (the shipped filter answers EPERM; the kernel itself may say EPERM, EINVAL, ENOSPC):
    the tests check it, the probe only reports it."""
    if value >= 0:
        return common.leaked(f"{name} succeeded ({value})")
    return common.blocked(f"{name}: {common.err(number)}")


def _in_child(call: "Callable[[], tuple[int, int]]") -> "tuple[str, int]":
    """Run a call whose success would change the probe (a namespace, a root, a tracer)
    in a forked child: ("ok", value), ("errno", number) or ("signal", number)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into the probe
        try:
            value, number = call()
            os.write(write_end, struct.pack("=qi", value, number))
        finally:
            os._exit(0)
    os.close(write_end)
    data = os.read(read_end, 12)
    os.close(read_end)
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status):
        return "signal", os.WTERMSIG(status)
    if len(data) != 12:
        return "signal", 0
    value, number = struct.unpack("=qi", data)
    return ("ok", value) if value >= 0 else ("errno", number)


def _child_verdict(name: str, outcome: "tuple[str, int]") -> "tuple[bool, str]":
    """(got through, description) for an ``_in_child`` outcome."""
    kind, value = outcome
    if kind == "signal":
        return False, f"{name}: killed by {signal.Signals(value).name if value else 'a signal'}"
    if kind == "errno":
        return False, f"{name}: {common.err(value)}"
    return True, f"{name} succeeded ({value})"


def tiocsti(config: "Config") -> "Result":
    """TIOCSTI: push characters into the terminal's input, for the agent's or the
    admin's shell to read as commands. Both encodings of the request (the upper 32 bits
    set too, which the kernel ignores and a careless filter does not)."""
    targets: list[tuple[str, int]] = []
    if os.isatty(0):
        targets.append(("fd 0 (a tty)", 0))
    try:
        targets.append(("/dev/tty", os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)))
    except OSError as exc:
        tty_error = common.oserror("/dev/tty", exc)
    else:
        tty_error = ""
    if not targets:
        return common.na(f"no terminal: fd 0 is not a tty; {tty_error}")
    # Also on a descriptor that is no terminal: the kernel says ENOTTY there, so EPERM
    # shows that a filter, not the terminal's state, refused the request.
    targets.append(("no tty (/dev/null)", os.open("/dev/null", os.O_RDONLY)))
    char = ctypes.c_char(INJECTED)
    seen = [tty_error] if tty_error else []
    leaked: list[str] = []
    for label, fd in targets:
        for request in (TIOCSTI, TIOCSTI_HIGH):
            ctypes.set_errno(0)
            value = common.libc.ioctl(fd, request, ctypes.byref(char))
            outcome = "injected" if value == 0 else common.err(ctypes.get_errno())
            (leaked if value == 0 else seen).append(f"{label} {request:#x}: {outcome}")
        if fd != 0:
            os.close(fd)
    return common.either(leaked, seen)


def _denied_call(name: str, *args: "common.SyscallArg") -> "Result":
    reason = common.not_x86_64()
    if reason:
        return common.na(reason)
    value, number = common.syscall(name, *args)
    if value >= 0 and name in ("bpf", "perf_event_open", "userfaultfd", "io_uring_setup"):
        os.close(value)
    return _verdict(name, value, number)


def _denied_in_child(name: str, *args: "int | bytes | None") -> "Result":
    reason = common.not_x86_64()
    if reason:
        return common.na(reason)
    through, detail = _child_verdict(name, _in_child(lambda: common.syscall(name, *args)))
    return common.res(common.LEAKED if through else common.BLOCKED, detail)


def unshare_user(config: "Config") -> "Result":
    """unshare(CLONE_NEWUSER): a user namespace of its own, where the payload is root
    and reaches the kernel's namespaced-root attack surface."""
    return _denied_in_child("unshare", CLONE_NEWUSER)


def unshare_mount(config: "Config") -> "Result":
    """unshare(CLONE_NEWNS): a mount namespace of its own, to remount what it sees."""
    return _denied_in_child("unshare", CLONE_NEWNS)


def setns_host(config: "Config") -> "Result":
    """setns into the host's network namespace: open /proc/<host pid>/ns/net (must not
    be reachable), and setns even into its own (must be refused)."""
    reason = common.not_x86_64()
    if reason:
        return common.na(reason)
    pid = common.host_pid(config)
    notes = []
    if pid is not None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        except OSError as exc:
            notes.append(common.oserror(f"/proc/{pid}/ns/net", exc))
        else:
            try:
                if common.is_host_target(pid, config):
                    through, detail = _child_verdict(
                        "setns(host net)", _in_child(lambda: common.syscall("setns", fd, 0))
                    )
                    return common.leaked(f"opened the host's /proc/{pid}/ns/net; {detail}")
                notes.append(f"pid {pid} here is a sandbox process")
            finally:
                os.close(fd)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        outcome = _in_child(lambda: common.syscall("setns", own, 0))
        through, detail = _child_verdict("setns(own net)", outcome)
    finally:
        os.close(own)
    notes.append(detail)
    return common.res(common.LEAKED if through else common.BLOCKED, "; ".join(notes))


def keyctl(config: "Config") -> "Result":
    """keyctl: the kernel keyring (not namespaced: other jobs' and the agent's keys)."""
    return _denied_call("keyctl", KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)


def bpf(config: "Config") -> "Result":
    """bpf: load programs into the kernel (a large attack surface)."""
    attr = ctypes.create_string_buffer(struct.pack("=IIII", 2, 4, 4, 1), 72)  # a tiny array map
    return _denied_call("bpf", 0, attr, 72)


def perf_event_open(config: "Config") -> "Result":
    """perf_event_open on itself (user-space cpu clock): side channels, kernel bugs."""
    # perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes): software event, cpu clock,
    # disabled, exclude_kernel and exclude_hv (what paranoid level 2 lets anyone do).
    attr = ctypes.create_string_buffer(
        struct.pack("=IIQQQQQIIQ", 1, 64, 0, 0, 0, 0, 1 | 1 << 5 | 1 << 6, 0, 0, 0), 64
    )
    return _denied_call("perf_event_open", attr, 0, -1, -1, 0)


def userfaultfd(config: "Config") -> "Result":
    """userfaultfd (user-mode only, what unprivileged users may): stalls kernel copies,
    the usual way to win races in kernel exploits."""
    return _denied_call("userfaultfd", 1 | os.O_CLOEXEC)  # UFFD_USER_MODE_ONLY


def io_uring_setup(config: "Config") -> "Result":
    """io_uring_setup: a second system call interface seccomp cannot see into."""
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    return _denied_call("io_uring_setup", 1, params)


def open_by_handle_at(config: "Config") -> "Result":
    """open_by_handle_at with a forged handle for inode 2 (the filesystem's root): the
    'shocker' escape, which opens any file of a bound filesystem, outside the binds."""
    reason = common.not_x86_64()
    if reason:
        return common.na(reason)
    try:
        mount_fd = os.open("/usr", os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        return common.na(common.oserror("/usr", exc))
    try:
        # struct file_handle: handle_bytes 8, handle_type 1 (FILEID_INO32_GEN), inode 2, gen 0
        handle = ctypes.create_string_buffer(struct.pack("=IiII", 8, 1, 2, 0), 16)
        value, number = common.syscall("open_by_handle_at", mount_fd, handle, os.O_RDONLY)
        if value >= 0:
            try:
                listed = sorted(os.listdir(value))[:10]
            except OSError:
                listed = []
            os.close(value)
            return common.leaked(f"opened the filesystem's root by handle: {listed}")
        return _verdict("open_by_handle_at", value, number)
    finally:
        os.close(mount_fd)


def chroot(config: "Config") -> "Result":
    """chroot (needs CAP_SYS_CHROOT): the first step of the classic chroot escape."""
    return _denied_in_child("chroot", b"/tmp")


def settimeofday(config: "Config") -> "Result":
    """settimeofday (needs CAP_SYS_TIME): the host's clock (tokens' validity, logs). The
    probe asks for the current time, so even a success changes next to nothing."""
    reason = common.not_x86_64()
    if reason:
        return common.na(reason)
    now = time.time()
    timeval = ctypes.create_string_buffer(struct.pack("=qq", int(now), int(now % 1 * 1e6)), 16)
    value, number = common.syscall("settimeofday", timeval, None)
    return _verdict("settimeofday", value, number)


def sethostname(config: "Config") -> "Result":
    """sethostname: the payload owns its UTS namespace, but without capabilities and
    with the filter it may not even change that (nothing to gain, less to audit)."""
    name = socket.gethostname().encode()
    return _denied_in_child("sethostname", name, len(name))


def _int80_stub() -> "tuple[Callable[..., int], mmap.mmap] | str":
    """A function that makes a 32-bit system call with ``int 0x80``, as machine code in
    an executable mapping: stub(nr, a1, a2, a3, a4, a5) -> eax, sign-extended.
    Or why there is none (mmap with PROT_EXEC may be refused)."""
    code = bytes.fromhex(
        "53"  # push rbx
        "4889f8"  # mov rax, rdi       nr
        "4889f3"  # mov rbx, rsi       a1
        "4887d1"  # xchg rcx, rdx      a2 -> ecx, a3 -> edx
        "4c89c6"  # mov rsi, r8        a4
        "4c89cf"  # mov rdi, r9        a5
        "cd80"  # int 0x80
        "4863c0"  # movsxd rax, eax
        "5b"  # pop rbx
        "c3"  # ret
    )
    try:
        memory = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)  # fmt: skip
    except OSError as exc:
        return common.oserror("mmap(PROT_EXEC)", exc)
    memory.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    prototype = ctypes.CFUNCTYPE(ctypes.c_long, *[ctypes.c_long] * 6)
    return prototype(address), memory


# The calls tried through the other ABIs, and harmless arguments for each (ptrace:
# PTRACE_TRACEME, in a child that exits at once).
_ABI_CALLS = {
    "unshare": (CLONE_NEWUSER, 0, 0),
    "keyctl": (KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0),
    "bpf": (0, 0, 0),
    "ptrace": (PTRACE_TRACEME, 0, 0),
}


def _abi_result(
    label: str, call: "Callable[[str, tuple[int, int, int]], tuple[int, int]]"
) -> "Result":
    """Each of _ABI_CALLS through ``call``, in a child (a success must not stay)."""
    leaked: list[str] = []
    seen: list[str] = []
    for name, args in _ABI_CALLS.items():

        def attempt(name: str = name, args: "tuple[int, int, int]" = args) -> "tuple[int, int]":
            return call(name, args)

        through, detail = _child_verdict(f"{label} {name}", _in_child(attempt))
        (leaked if through else seen).append(detail)
    if leaked:
        return common.leaked("; ".join(leaked + seen))
    return common.blocked("; ".join(seen))


def int80_x86(config: "Config") -> "Result":
    """unshare, keyctl, bpf and ptrace through the 32-bit ABI (int 0x80): a filter
    written for x86_64 numbers alone would let them through."""
    reason = common.not_x86_64()
    if reason:
        return common.na(reason)
    stub = _int80_stub()
    if isinstance(stub, str):
        return common.na(f"no executable memory for an int 0x80 stub: {stub}")
    function, _memory = stub

    def call(name: str, args: "tuple[int, int, int]") -> "tuple[int, int]":
        value = int(function(NR_I386[name], *args, 0, 0))
        return (value, 0) if value >= 0 else (value, -value)

    return _abi_result("int 0x80", call)


def x32(config: "Config") -> "Result":
    """unshare, keyctl, bpf and ptrace through the x32 ABI (number | 0x40000000)."""
    reason = common.not_x86_64()
    if reason:
        return common.na(reason)

    def call(name: str, args: "tuple[int, int, int]") -> "tuple[int, int]":
        return common.raw_syscall(X32_BIT | NR_X32[name], *args)

    return _abi_result("x32", call)


# host_safe False where a success outside a sandbox could change the host (a namespace
# joined, its clock, its hostname).
ATTACKS = {
    "tiocsti": common.Attack(MECHANISM, "TIOCSTI pushes commands into the terminal of the "
                             "agent or the admin", "the launcher starts the runtime in a new "
                             "session, and bwrap --new-session: no controlling tty; seccomp "
                             "denies TIOCSTI in both encodings", tiocsti),
    "unshare_user": common.Attack(MECHANISM, "a nested user namespace (root inside it)",
                                  f"{common.SECCOMP}; bwrap --disable-userns", unshare_user,
                                  False),
    "unshare_mount": common.Attack(MECHANISM, "a mount namespace of its own",
                                   f"{common.SECCOMP}; no CAP_SYS_ADMIN", unshare_mount, False),
    "setns_host": common.Attack(MECHANISM, "setns into a host namespace", f"{common.PID_NS} "
                                f"(no host namespace file to open); {common.SECCOMP}",
                                setns_host, False),
    "keyctl": common.Attack(MECHANISM, "the kernel keyring (not namespaced)", common.SECCOMP,
                            keyctl),
    "bpf": common.Attack(MECHANISM, "load bpf programs or maps", common.SECCOMP, bpf),
    "perf_event_open": common.Attack(MECHANISM, "performance counters (side channels, "
                                     "kernel bugs)", common.SECCOMP, perf_event_open),
    "userfaultfd": common.Attack(MECHANISM, "userfaultfd (kernel race exploits)",
                                 common.SECCOMP, userfaultfd),
    "io_uring_setup": common.Attack(MECHANISM, "io_uring, a syscall interface seccomp cannot "
                                    "filter", common.SECCOMP, io_uring_setup),
    "open_by_handle_at": common.Attack(MECHANISM, "open any file of a bound filesystem by a "
                                       "forged handle (shocker)", f"{common.SECCOMP}; no "
                                       "CAP_DAC_READ_SEARCH", open_by_handle_at),
    "chroot": common.Attack(MECHANISM, "chroot (escape tricks)", f"{common.SECCOMP}; no "
                            "CAP_SYS_CHROOT", chroot, False),
    "settimeofday": common.Attack(MECHANISM, "set the host's clock", f"{common.SECCOMP}; no "
                                  "CAP_SYS_TIME", settimeofday, False),
    "sethostname": common.Attack(MECHANISM, "set the hostname", f"{common.SECCOMP}; UTS "
                                 "namespace", sethostname, False),
    "int80_x86": common.Attack(MECHANISM, "denied calls through the 32-bit ABI (int 0x80)",
                               "the filter is compiled for i386 too (EPERM)", int80_x86),
    "x32": common.Attack(MECHANISM, "denied calls through the x32 ABI", "the filter is "
                         "compiled for x32 too (EPERM); or the kernel has no x32 (ENOSYS)",
                         x32),
}  # fmt: skip
