"""Shared memory of host processes: a SysV segment (keys are global to an IPC namespace,
not to a uid, so mode 0666 opens it to anyone there) and POSIX shared memory, the files
in the host's /dev/shm.

Defences: the IPC namespace, and the sandbox's own tmpfs on /dev/shm.
"""

import ctypes
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the package; the sandbox imports plain names (run.py)
    from sandbox_agent.wrapper.probe import attack_common as common
    from sandbox_agent.wrapper.probe.attack_common import Config, Result
else:
    import attack_common as common

MECHANISM = "ipc"
SHM_RDONLY = 0o10000


def sysv_shm(config: "Config") -> "Result":
    """Attach the host's SysV shared memory segment (mode 0666, holding a secret): SysV
    IPC keys are global to an IPC namespace, not to a uid."""
    key = config.get("sysv_key")
    if key is None:
        return common.na("no SysV key given")
    libc = common.libc
    ctypes.set_errno(0)
    ident = libc.shmget(ctypes.c_int(key), ctypes.c_size_t(0), 0)
    if ident < 0:
        return common.blocked(f"shmget({key:#x}): {common.err(ctypes.get_errno())}")
    address = libc.shmat(ident, None, SHM_RDONLY)
    if address in (None, ctypes.c_void_p(-1).value):
        return common.leaked(f"shmget({key:#x}) found segment {ident}; shmat refused")
    data = ctypes.string_at(address, 256)
    libc.shmdt(ctypes.c_void_p(address))
    what = "the secret" if common.found(data, config) else f"{len(data)} bytes"
    return common.leaked(f"attached the host's segment {ident}: {what}")


def host_shm(config: "Config") -> "Result":
    """Read a host file in /dev/shm (POSIX shared memory of host processes)."""
    return common.secret_in_files(
        config, "shm_paths", "no /dev/shm path given",
        lambda path, size: f"{path}: another file, without the secret",
    )  # fmt: skip


ATTACKS = {
    "sysv_shm": common.Attack(MECHANISM, "attach a host process's SysV shared memory",
                              "IPC namespace", sysv_shm),
    "host_shm": common.Attack(MECHANISM, "read POSIX shared memory (/dev/shm) of host "
                              "processes", "the sandbox's own tmpfs on /dev/shm", host_shm),
}  # fmt: skip
