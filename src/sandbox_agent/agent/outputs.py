"""Reading what the sandbox wrote, safely: the job's outputs, after every job process
is gone.

The payload owned the work directory, so every name in it is hostile: an output may
be a symlink to the agent's key, a hard link to it, a directory component swapped for
a symlink, a FIFO that blocks the reader, a device, or huge. Each output is opened with
openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
relative to the work directory's descriptor (or, where the kernel has no openat2,
component by component with O_NOFOLLOW), non-blocking, and kept only if it is a regular
file with one link and within the size caps. What is kept is copied into the store
while hashed, from the descriptor that was checked.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from sandbox_agent.runtime.workdir import remove_workdir  # noqa: F401 (now runtime.workdir)

_SYS_OPENAT2 = 437  # the same number on every architecture (new syscall table)
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_CHUNK = 1 << 20


class OutputRefused(ValueError):
    """An output that must not be read: one line saying which and why."""


@dataclass(frozen=True)
class Collected:
    name: str  # as the job named it, relative to the work directory
    size: int
    sha256: str
    stored: Path


def _openat2(dir_fd: int, name: str, flags: int) -> int:
    how = struct.pack("=QQQ", flags, 0, _RESOLVE)  # struct open_how
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = int(libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(dir_fd),
                          name.encode(), how, ctypes.c_size_t(len(how))))  # fmt: skip
    if fd < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), name)
    return fd


def _open_by_components(dir_fd: int, name: str, flags: int) -> int:
    """The same guarantee without openat2: every component opened with O_NOFOLLOW
    relative to the last, never crossing to another filesystem."""
    device = os.fstat(dir_fd).st_dev
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OSError(errno.EXDEV, "leaves the work directory", name)
    current = dir_fd
    try:
        for part in parts[:-1]:
            following = os.open(part, _DIR_FLAGS, dir_fd=current)
            if current != dir_fd:
                os.close(current)
            current = following
            if os.fstat(current).st_dev != device:
                raise OSError(errno.EXDEV, "crosses a mount point", name)
        fd = os.open(parts[-1], flags, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)
    if os.fstat(fd).st_dev != device:
        os.close(fd)
        raise OSError(errno.EXDEV, "crosses a mount point", name)
    return fd


def has_openat2() -> bool:
    """Whether this kernel (and the seccomp filter around us) allows openat2."""
    root = os.open("/", _DIR_FLAGS)
    try:
        os.close(_openat2(root, ".", _DIR_FLAGS))
    except OSError as exc:
        return exc.errno not in (errno.ENOSYS, errno.EPERM)
    finally:
        os.close(root)
    return True


def open_output(dir_fd: int, name: str, *, use_openat2: bool = True) -> int:
    """A read descriptor on ``name`` beneath ``dir_fd``: a regular file, one link, reached
    through no symlink; OutputRefused otherwise."""
    try:
        name.encode("utf-8")  # a name the payload made of other bytes cannot travel on
    except UnicodeEncodeError:
        shown = repr(os.fsencode(name))[2:-1]  # its bytes, as b"..." shows them
        raise OutputRefused(f"{shown}: the name is not UTF-8; give outputs UTF-8 names") from None
    opener = _openat2 if use_openat2 else _open_by_components
    try:
        fd = opener(dir_fd, name, _FILE_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise OutputRefused(f"{name}: missing") from None
        if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
            raise OutputRefused(f"{name}: reached through a symlink or leaves the work "
                                "directory") from None  # fmt: skip
        raise OutputRefused(f"{name}: cannot open ({exc.strerror})") from None
    info = os.fstat(fd)
    why = None
    if not stat.S_ISREG(info.st_mode):
        why = "not a regular file"
    elif info.st_nlink != 1:
        why = f"has {info.st_nlink} hard links (one may be a file the job must not read)"
    if why:
        os.close(fd)
        raise OutputRefused(f"{name}: {why}")
    os.set_blocking(fd, True)
    return fd


def collect(
    workdir: Path,
    names: list[str],
    store: Path,
    *,
    max_file: int,
    max_total: int,
    cut: bool = False,
    use_openat2: bool | None = None,
) -> tuple[list[Collected], list[str]]:
    """Copy each output into ``store`` (made here, 0700) with its SHA-256. Returns what
    was collected and one line per output refused (or, with ``cut``, kept only in part);
    never follows a link out. Sizes are apparent (st_size: a sparse file counts whole),
    checked against the caps before a byte is copied, and never more than the caps is
    copied. With ``cut`` (logs), a file over the caps keeps its first bytes up to them."""
    use_openat2 = has_openat2() if use_openat2 is None else use_openat2
    store.mkdir(mode=0o700, parents=True, exist_ok=False)
    collected: list[Collected] = []
    problems: list[str] = []
    total = 0
    root = os.open(workdir, _DIR_FLAGS)
    try:
        for index, name in enumerate(names):
            try:
                fd = open_output(root, name, use_openat2=use_openat2)
            except OutputRefused as exc:
                problems.append(str(exc))
                continue
            try:
                size = os.fstat(fd).st_size
                room = min(max_file, max_total - total)
                if size > room:
                    if not cut or room <= 0:
                        problems.append(f"{name}: {size} bytes is over the output caps")
                        continue
                    problems.append(f"{name}: {size} bytes; only the first {room} were kept")
                target = store / f"{index:04d}"
                digest, written = _copy(fd, target, room)
                total += written
                collected.append(Collected(name, written, digest, target))
            finally:
                os.close(fd)
    finally:
        os.close(root)
    return collected, problems


def _copy(fd: int, target: Path, cap: int) -> tuple[str, int]:
    """Copy from ``fd`` into a new file, at most ``cap`` bytes (a file still growing is
    cut there), hashing what is written."""
    digest = hashlib.sha256()
    written = 0
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600)  # fmt: skip
    try:
        while written < cap:
            chunk = os.read(fd, min(_CHUNK, cap - written))
            if not chunk:
                break
            digest.update(chunk)
            os.write(out, chunk)
            written += len(chunk)
    finally:
        os.close(out)
    return "sha256:" + digest.hexdigest(), written
