"""openat2(2): opening a path with the kernel's own rules for how it may be resolved.

Python has no binding for it, so it is called through libc's syscall(). Kernels before
5.6 (EL8) lack it, and a seccomp filter may deny it: ``available()`` says which, and
every caller has a fallback that checks the opened file instead.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08


def openat2(dir_fd: int, name: str, flags: int, resolve: int, mode: int = 0) -> int:
    """A descriptor for ``name`` relative to ``dir_fd`` (AT_FDCWD for the current
    directory), resolved under ``resolve``; OSError as open(2) raises it."""
    how = struct.pack("=QQQ", flags, mode, resolve)  # struct open_how
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = int(libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_long(dir_fd),
                          os.fsencode(name), how, ctypes.c_size_t(len(how))))  # fmt: skip
    if fd < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), name)
    return fd


def available() -> bool:
    """Whether this kernel (and any seccomp filter around us) allows openat2."""
    try:
        os.close(openat2(-100, "/", os.O_PATH | os.O_CLOEXEC, RESOLVE_NO_MAGICLINKS))
    except OSError as exc:
        return exc.errno not in (errno.ENOSYS, errno.EPERM)
    return True


__all__ = ["RESOLVE_BENEATH", "RESOLVE_NO_MAGICLINKS", "RESOLVE_NO_SYMLINKS",
           "RESOLVE_NO_XDEV", "available", "openat2"]  # fmt: skip
