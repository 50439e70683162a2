"""A single-file image made a directory for bwrap: squashfuse, read-only, in a private
mount point the agent makes and removes.

squashfuse reads the very file whose digest was checked: it is given the agent's open
descriptor (``/dev/fd/N``), not the path, so a file swapped after the check is not the
one mounted. A SIF's squashfs partition is mounted at its offset. When the agent is
root the sandbox runs as another uid (65534), which FUSE keeps out unless the mount
says ``allow_other``; the mount point's directory is the agent's, and the image is
only what any job on the node may read anyway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sandbox_agent.images import ImageRefused

MOUNT_TIMEOUT = 30.0  # seconds for squashfuse to mount or fusermount to unmount
_INSTALL = "apt-get install squashfuse fuse3"


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
        raise ImageRefused(f"{path}: a single-file image needs a FUSE mount for bwrap, and {why}")
    point = tempfile.mkdtemp(prefix="sandbox-agent-image-")
    os.chmod(point, 0o755)  # noqa: S103 (the sandbox's uid binds from it; the image is not secret)
    options = ["ro", "nodev", "nosuid"]
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
        os.rmdir(point)
        raise ImageRefused(f"{path}: squashfuse did not mount it: {error}") from None
    if done.returncode != 0 or not os.path.ismount(point):
        said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        _unmount(point)
        raise ImageRefused(f"{path}: squashfuse did not mount it: {said[:200]}")
    try:
        yield point
    finally:
        _unmount(point)


def _unmount(point: str) -> None:
    """Unmount (lazily when busy: a process the kill missed must not keep the agent
    waiting) and remove the mount point."""
    if os.path.ismount(point):
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
        while os.path.ismount(point) and time.monotonic() < deadline:
            time.sleep(0.01)
    with contextlib.suppress(OSError):  # still mounted: left for the site to see, never
        os.rmdir(point)  # removed with its contents
