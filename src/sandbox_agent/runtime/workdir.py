"""Removing a job's work directory once every process of the job is gone.

The payload owned it, so every name in it is hostile: a symlink is unlinked, never
followed; a tree a thousand levels deep is taken apart two levels at a time; a
directory the payload left 000 is made 0700 through a descriptor first. The pilot's
attempt and the selftest's probe both remove work directories, so this lives with the
sandbox, below both.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


def remove_workdir(workdir: Path) -> str | None:
    """Remove the work directory without following any link in it; None when it is
    gone, else why not, in one line. Call it once every process of the job is gone.

    The walk is iterative and never deeper than two levels: each subdirectory's own
    subdirectories are moved up to the top before it is emptied, so a payload's tree a
    thousand levels deep neither exhausts the stack nor the descriptors. A payload that
    ran as the agent's own uid may have left directories it cannot enter or write: each
    is made 0700 first, through a descriptor opened without following links."""
    fix_modes = os.geteuid() != 0  # root needs no permission to remove
    if fix_modes:  # first: a top the payload left 000 could not even be opened
        _chmod_dir(None, str(workdir))
    try:
        top = os.open(workdir, _DIR_FLAGS)
    except OSError as exc:
        return f"{workdir}: {exc.strerror}"
    hoisted = 0
    try:
        while True:
            names = os.listdir(top)
            if not names:
                break
            for name in names:
                if not _is_directory(top, name):
                    os.unlink(name, dir_fd=top)
                    continue
                if fix_modes:
                    _chmod_dir(top, name)
                child = os.open(name, _DIR_FLAGS, dir_fd=top)
                try:
                    for inner in os.listdir(child):
                        if _is_directory(child, inner):  # up to the top: the depth stays 2
                            if fix_modes:  # moving a directory writes its ".."
                                _chmod_dir(child, inner)
                            while True:  # a name the payload did not leave there
                                hoisted += 1
                                try:
                                    os.stat(f".removing-{hoisted}", dir_fd=top,
                                            follow_symlinks=False)  # fmt: skip
                                except FileNotFoundError:
                                    break
                            os.rename(inner, f".removing-{hoisted}", src_dir_fd=child,
                                      dst_dir_fd=top)  # fmt: skip
                        else:
                            os.unlink(inner, dir_fd=child)
                finally:
                    os.close(child)
                os.rmdir(name, dir_fd=top)
    except OSError as exc:
        return f"{exc.filename or workdir}: {exc.strerror}"
    finally:
        os.close(top)
    try:
        os.rmdir(workdir)
    except OSError as exc:
        return f"{workdir}: {exc.strerror}"
    return None


def _is_directory(dir_fd: int, name: str) -> bool:
    return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)


def _chmod_dir(dir_fd: int | None, name: str) -> None:
    """``name`` under ``dir_fd`` (None: a path) made 0700 when it is a directory: opened with
    O_PATH|O_NOFOLLOW|O_DIRECTORY and changed through /proc/self/fd, so a symlink is
    never followed."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return  # not a directory: it is unlinked as it is
    try:
        os.chmod(f"/proc/self/fd/{fd}", 0o700)
    except OSError:
        pass  # not ours to change: the removal says so
    finally:
        os.close(fd)
