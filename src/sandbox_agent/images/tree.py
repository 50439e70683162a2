"""Paths inside an image, resolved as the sandbox would resolve them: a symlink's
absolute target leads to the image's root, never to the host's file of that name
(an image's /etc/os-release is often a link to ../usr/lib/os-release).

Standard library only: the runtimes (which look for the image's python3) and
``image inspect`` both use it.
"""

from __future__ import annotations

import os
import posixpath
import stat

_MAX_LINKS = 40


def resolve(root: str, relative: str) -> str | None:
    """The host path of ``relative`` inside the image at ``root``, following symlinks
    as the sandbox would (inside the image); None when it leads nowhere."""
    parts = [p for p in relative.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        try:
            info = os.lstat(here)
        except OSError:
            return None
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            if hops > _MAX_LINKS:
                return None
            try:
                target = os.readlink(here)
            except OSError:
                return None
            if target.startswith("/"):
                done = []
            parts = [p for p in posixpath.normpath(target).split("/") if p] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)
