"""Processes: reach a process outside the sandbox (a same-uid host process: ptrace,
process_vm_readv, a signal, a pidfd; kill(-1) to signal every process the uid may), or
steer the sandbox's own pid 1 (bwrap's init, outside the payload's restrictions).

Defences: the PID namespace with a private /proc, the seccomp profile, the user
namespace (and bwrap --disable-userns nesting the payload below bwrap's), landlock's
ptrace and signal scoping.
"""

import contextlib
import ctypes
import errno
import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the package; the sandbox imports plain names (run.py)
    from sandbox_agent.wrapper.probe import attack_common as common
    from sandbox_agent.wrapper.probe.attack_common import Config, Result
else:
    import attack_common as common

MECHANISM = "processes"
PTRACE_ATTACH, PTRACE_DETACH = 16, 17


def _ptrace_attach(pid: "int | None", config: "Config", who: str) -> "Result":
    if pid is None:
        return common.na("no host pid given")
    reason = common.not_x86_64()
    if reason:
        return common.na(reason)
    value, number = common.syscall("ptrace", PTRACE_ATTACH, pid, None, None)
    if value < 0:
        return common.blocked(f"PTRACE_ATTACH {who} ({pid}): {common.err(number)}")
    with contextlib.suppress(OSError):  # attached: the target is stopping; let it go
        os.waitpid(pid, 0x40000000)  # __WALL
    common.syscall("ptrace", PTRACE_DETACH, pid, None, None)
    if who == "host" and not common.is_host_target(pid, config):
        return common.sandbox_pid(pid)
    return common.leaked(f"PTRACE_ATTACH {who} ({pid}) succeeded")


def ptrace_host(config: "Config") -> "Result":
    """ptrace(PTRACE_ATTACH) the host process."""
    return _ptrace_attach(common.host_pid(config), config, "host")


def ptrace_init(config: "Config") -> "Result":
    """ptrace(PTRACE_ATTACH) the sandbox's pid 1: a tracer could run code in bwrap's
    init, outside the payload's own restrictions."""
    return _ptrace_attach(1, config, "init")


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _vm_read(pid: "int | None", config: "Config", who: str) -> "Result":
    if pid is None:
        return common.na("no host pid given")
    reason = common.not_x86_64()
    if reason:
        return common.na(reason)
    buffer = ctypes.create_string_buffer(16)
    try:
        start = common.first_mapping(pid)
    except (OSError, ValueError):
        start = ctypes.addressof(buffer)  # a guess: EFAULT would still mean permitted
    local = _IoVec(ctypes.addressof(buffer), 16)
    remote = _IoVec(start, 16)
    value, number = common.syscall("process_vm_readv", pid, bytes(local), 1, bytes(remote), 1, 0)
    label = f"process_vm_readv {who} ({pid})"
    if value < 0 and number != errno.EFAULT:
        return common.blocked(f"{label}: {common.err(number)}")
    if who == "host" and not common.is_host_target(pid, config):
        return common.sandbox_pid(pid)
    if value < 0:
        return common.leaked(f"{label}: permitted (EFAULT at the guessed address {start:#x})")
    return common.leaked(f"{label}: read {value} bytes at {start:#x}")


def vm_read_host(config: "Config") -> "Result":
    """process_vm_readv from the host process."""
    return _vm_read(common.host_pid(config), config, "host")


def vm_read_init(config: "Config") -> "Result":
    """process_vm_readv from the sandbox's pid 1."""
    return _vm_read(1, config, "init")


def _signalled(pid: int, config: "Config", prefix: str, reached: str) -> "Result":
    """kill(pid, 0): LEAKED with ``reached`` when the host process can be signalled;
    ``prefix`` goes before the other answers."""
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return common.blocked(prefix + common.oserror(f"kill({pid}, 0)", exc))
    if not common.is_host_target(pid, config):
        return common.blocked(f"{prefix}pid {pid} here is a sandbox process")
    return common.leaked(reached)


def signal_host(config: "Config") -> "Result":
    """kill(host pid, 0): can the payload signal a process outside the sandbox?"""
    pid = common.host_pid(config)
    if pid is None:
        return common.na("no host pid given")
    reached = f"kill({pid}, 0) succeeded: the host process can be signalled"
    return _signalled(pid, config, "", reached)


def kill_all(config: "Config") -> "Result":
    """kill(-1, SIGURG): signal every process the payload may. In a PID namespace that
    is the sandbox's only, and the host process must stay out of reach (the caller also
    asks it whether a SIGURG arrived). SIGURG is ignored by default, so even where the
    attack gets through nothing dies; and it is never sent from the host's own PID
    namespace, where it would reach every process of the uid (as root: all of them)."""
    own = common.ns_inode("pid")
    if own is None or own == common.INIT_PID_NS:
        return common.na("not sent: this is the host's PID namespace (or it cannot be told)")
    previous = signal.signal(signal.SIGURG, signal.SIG_IGN)
    try:
        try:
            os.kill(-1, signal.SIGURG)
            sent = "kill(-1, SIGURG) sent"
        except OSError as exc:
            sent = common.oserror("kill(-1, SIGURG)", exc)
    finally:
        signal.signal(signal.SIGURG, previous)
    pid = common.host_pid(config)
    if pid is None:
        return common.na(f"{sent}; no host pid to check")
    return _signalled(pid, config, f"{sent}; ", f"{sent}; the host process {pid} is within reach")


def pidfd_host(config: "Config") -> "Result":
    """pidfd_open(host pid): a handle on a host process (to signal or wait on it)."""
    pid = common.host_pid(config)
    if pid is None:
        return common.na("no host pid given")
    reason = common.not_x86_64()
    if reason:
        return common.na(reason)
    value, number = common.syscall("pidfd_open", pid, 0)
    if value < 0:
        return common.blocked(f"pidfd_open({pid}): {common.err(number)}")
    os.close(value)
    if not common.is_host_target(pid, config):
        return common.sandbox_pid(pid)
    return common.leaked(f"pidfd_open({pid}) gave a descriptor")


_HOST_PROC = f"{common.PID_NS}; {common.SECCOMP}; {common.USER_NS}"
_INIT = f"{common.SECCOMP}; {common.NESTED}; landlock"

ATTACKS = {
    "ptrace_host": common.Attack(MECHANISM, "ptrace a host process", _HOST_PROC, ptrace_host),
    "ptrace_init": common.Attack(MECHANISM, "ptrace the sandbox's pid 1 to run code outside "
                                 "the payload's restrictions", f"{_INIT} (no ptrace out of the "
                                 "domain)", ptrace_init, False),
    "vm_read_host": common.Attack(MECHANISM, "process_vm_readv from a host process",
                                  _HOST_PROC, vm_read_host),
    "vm_read_init": common.Attack(MECHANISM, "process_vm_readv from the sandbox's pid 1",
                                  _INIT, vm_read_init),
    "signal_host": common.Attack(MECHANISM, "signal a host process (kill it, or probe it)",
                                 f"{common.PID_NS}; landlock ABI 6 signal scoping",
                                 signal_host),
    # host_safe False, and kill_all itself refuses the host's PID namespace: a kill(-1)
    # there reaches every process of the uid (an earlier run killed a whole machine)
    "kill_all": common.Attack(MECHANISM, "kill(-1): signal every process the uid may, the "
                              "agent's and other jobs' when they share the host uid",
                              f"{common.PID_NS}: kill(-1) reaches the sandbox's processes "
                              "only", kill_all, False),
    "pidfd_host": common.Attack(MECHANISM, "pidfd_open a host process", common.PID_NS,
                                pidfd_host),
}  # fmt: skip
