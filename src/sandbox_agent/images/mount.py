"""A single-file image made a directory for bwrap: squashfuse, read-only, at a mount
point the agent makes (a random name in a directory of its own that others may pass
but not list) and removes.

squashfuse reads the very file whose digest was checked: it is given the agent's open
descriptor (``/dev/fd/N``), not the path, so a file swapped after the check is not the
one mounted. A SIF's squashfs partition is mounted at its offset. When the agent is
root the sandbox runs as another uid (65534), which FUSE keeps out unless the mount
says ``allow_other``; ``default_permissions`` then has the kernel apply the image's own
modes, so a file the image keeps private stays private to its owner inside.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sandbox_agent.images import ImageRefused, mounttable

MOUNT_TIMEOUT = 30.0  # seconds for squashfuse to mount or fusermount to unmount
_INSTALL = "apt-get install squashfuse fuse3"
# what FUSE itself (not the image) says when it fails: "fuse: device not found",
# "fusermount3: mount failed: Operation not permitted"
_FUSE_FAULT = re.compile(r"\bfuse\b|fusermount|Operation not permitted|Permission denied",
                         re.IGNORECASE)


def unusable() -> str | None:
    """Why a single-file image cannot be mounted here, or None when it can."""
    if shutil.which("squashfuse") is None:
        return f"squashfuse is not installed ({_INSTALL})"
    if _fusermount() is None:
        return f"fusermount is not installed ({_INSTALL})"
    try:
        descriptor = os.open("/dev/fuse", os.O_RDWR)
    except OSError as error:
        return f"/dev/fuse cannot be opened ({error.strerror}); load the fuse module"
    os.close(descriptor)
    return None


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


@contextmanager
def mounted(path: str, descriptor: int, offset: int) -> Iterator[str]:
    """The squashfs in the open file ``descriptor`` (at byte ``offset``) mounted
    read-only; yields the mount point, unmounted and removed on the way out."""
    why = unusable()
    if why is not None:
        raise ImageRefused(f"{path}: a single-file image needs a FUSE mount for bwrap, and {why}",
                           node=True)  # fmt: skip
    try:
        holder = tempfile.mkdtemp(prefix="sandbox-agent-image-")
        os.chmod(holder, 0o711)  # noqa: S103 (the sandbox's uid passes; nobody lists it)
        # a name nobody can guess: a root agent's mount is readable by every uid
        point = os.path.join(holder, secrets.token_hex(16))
        os.mkdir(point, 0o755)
    except OSError as error:
        raise ImageRefused(f"{path}: no mount point: {error.strerror}", node=True) from None
    options = ["ro", "nodev", "nosuid", "default_permissions"]
    if offset:
        options.append(f"offset={offset}")
    if os.geteuid() == 0:
        options.append("allow_other")
    argv = ["squashfuse", "-o", ",".join(options), f"/dev/fd/{descriptor}", point]
    try:
        done = subprocess.run(argv, pass_fds=(descriptor,), capture_output=True, text=True,
                              timeout=MOUNT_TIMEOUT, check=False,
                              env={"PATH": os.defpath})  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        _unmount(point)
        raise ImageRefused(f"{path}: squashfuse did not mount it: {error}", node=True) from None
    if done.returncode != 0 or not mounttable.mounted_at(point):
        # a file squashfuse cannot read is the image's fault; FUSE itself failing (a
        # container where fusermount cannot act) is this node's
        said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        _unmount(point)
        node = bool(_FUSE_FAULT.search(done.stderr))
        raise ImageRefused(f"{path}: squashfuse did not mount it: {said[:200]}", node=node)
    try:
        yield point
    finally:
        _unmount(point)


def _unmount(point: str) -> None:
    """Unmount (lazily when busy or dead: a process the kill missed, or a daemon that
    died, must not keep the agent waiting) and remove the mount point and its holder."""
    if mounttable.mounted_at(point):
        tool = _fusermount() or "fusermount"
        for flags in (["-u"], ["-u", "-z"]):
            try:
                done = subprocess.run([tool, *flags, point], capture_output=True,
                                      timeout=MOUNT_TIMEOUT, check=False)  # fmt: skip
            except (OSError, subprocess.SubprocessError):
                continue
            if done.returncode == 0:
                break
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while mounttable.mounted_at(point) and time.monotonic() < deadline:
            time.sleep(0.01)
    with contextlib.suppress(OSError):  # still mounted: left for the site to see, never
        os.rmdir(point)  # removed with its contents
        os.rmdir(os.path.dirname(point))
