"""The job's work directory as a filesystem of its own, sized by the job's workdir_size.

Why: a monitor that samples the work directory sees a burst only after it happened; a
payload that fallocates the node's free space and exits within a second fills the disk
the agent's queue, outputs and audit records live on. A filesystem of the job's size
holds the limit from the first byte (a write past it is ENOSPC inside the job), and its
image is allocated in full before the job starts, so whatever the job does, the space
around it stays the agent's.

How: an ext4 image (no journal, no blocks reserved for root, its root directory owned
by the sandbox's host uid), beside the work directory in the work area and allocated
with fallocate(2):

* as root, loop-mounted on the work directory, nosuid, nodev, noatime;
* unprivileged, mounted with fuse2fs (FUSE) where it and /dev/fuse are usable.

Neither: ``mechanism()`` says why, and limits.enforcement decides (the monitor, where
the policy lets it). The image is removed when the mount is.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.toolrun import run_tool

MIB = 1 << 20
# ext4's own tables (inodes, bitmaps, group descriptors) take about 1/64 of an image
# with one inode per 16 KiB; the image is that much larger, so the job gets its size.
OVERHEAD_SHARE = 64
OVERHEAD_FIXED = 4 * MIB
# No journal, no blocks kept for root, no room to grow: the image lives for one job.
MKFS = ("mkfs.ext4", "-q", "-F", "-O", "^has_journal,^resize_inode", "-m", "0", "-L",
        "sandbox-work")  # fmt: skip
TIMEOUT = 60  # seconds for mkfs, mount or unmount


class DiskError(OSError):
    """The work directory's filesystem could not be made (or removed): a node problem."""


@dataclass
class WorkDisk:
    """The filesystem mounted on a job's work directory."""

    image: Path
    mountpoint: Path
    kind: str  # "loop" or "fuse2fs"
    size: int  # bytes of the image: what the job may fill, and what it took up front

    def release(self) -> str | None:
        """Unmount and remove the image; what went wrong, or None."""
        if self.kind == "loop":
            argv = ["umount", str(self.mountpoint)]
        else:
            argv = [_fusermount() or "fusermount3", "-u", str(self.mountpoint)]
        problem = _run(argv)
        if problem is not None and self.kind == "loop":
            # something still holds it (a process that escaped the job's kill is
            # reported by the teardown): detach it, so the image can go
            problem = _run(["umount", "-l", str(self.mountpoint)]) and problem
        with contextlib.suppress(FileNotFoundError):
            self.image.unlink()
        return problem


def sweep(workdir: Path) -> str | None:
    """Unmount what an agent that died left mounted on ``workdir`` (it could not) and
    remove its image; what went wrong, or None. The caller knows the attempt is over."""
    problem = None
    if _mounted(workdir):
        problem = _run(["umount", str(workdir)])
        if problem is not None and _fusermount():
            problem = _run([_fusermount() or "fusermount3", "-u", str(workdir)])
        if problem is not None:
            problem = _run(["umount", "-l", str(workdir)])
    with contextlib.suppress(FileNotFoundError):
        (workdir.parent / f"{workdir.name}.disk").unlink()
    return problem


def _mounted(path: Path) -> bool:
    """Whether something is mounted on ``path`` (the mount table's own escapes: space,
    tab, newline and backslash as octal)."""
    wanted = str(path)
    try:
        table = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in table.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == wanted:
                return True
    return False


def mechanism() -> tuple[str | None, str]:
    """How this host can give a job a work directory of its own size: ("loop", ...) as
    root, ("fuse2fs", ...) unprivileged, else (None, why not)."""
    if shutil.which("mkfs.ext4") is None:
        return None, "mkfs.ext4 is missing (install e2fsprogs)"
    if os.geteuid() == 0:
        if os.path.exists("/dev/loop-control") and shutil.which("mount"):
            return "loop", "a loop-mounted ext4 image of the job's size"
        return None, "no loop devices here (/dev/loop-control is missing)"
    if shutil.which("fuse2fs") is None:
        return None, "an unprivileged pilot needs fuse2fs (install the fuse2fs package)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK) or _fusermount() is None:
        return None, "an unprivileged pilot needs /dev/fuse and fusermount for fuse2fs"
    if _no_new_privs():
        return None, ("the agent runs with no_new_privs (NoNewPrivileges= or a setting that "
                      "implies it in its unit, DISABLE_SETUID in HTCondor): the setuid "
                      "fusermount cannot mount fuse2fs")  # fmt: skip
    return "fuse2fs", "an ext4 image of the job's size, mounted with fuse2fs"


def _no_new_privs() -> bool:
    """Whether this process has PR_SET_NO_NEW_PRIVS (setuid programs gain nothing)."""
    try:
        with open("/proc/self/status") as status:
            return any(line.split() == ["NoNewPrivs:", "1"] for line in status)
    except OSError:
        return False


def prepare(workdir: Path, effective: EffectivePolicy, owner: tuple[int, int] | None
            ) -> WorkDisk | None:  # fmt: skip
    """Make the new directory ``workdir`` as the pilot makes a job's: a filesystem of
    the job's workdir_size where the policy wants that limit held by the kernel and
    this host can (its WorkDisk, to release), else a plain 0700 directory (None); owned
    by ``owner`` (uid, gid; None: ours) either way. DiskError (an OSError) when the
    filesystem cannot be made; limits.enforcement decides what a plain one means."""
    workdir.mkdir(mode=0o700)
    if effective.view.limits.workdir_size.enforcement == "kernel" and mechanism()[0]:
        return make(workdir, effective.view.limits.workdir_size.value, owner)
    if owner is not None:
        os.chown(workdir, *owner)
    return None


def held(disk: WorkDisk | None) -> frozenset[str]:
    """The limits a work directory holds itself, for session.run."""
    return frozenset({"workdir_size"}) if disk is not None else frozenset()


def image_size(workdir_size: int) -> int:
    """The image that leaves ``workdir_size`` bytes to the job, in whole MiB."""
    size = workdir_size + workdir_size // OVERHEAD_SHARE + OVERHEAD_FIXED
    return -(-size // MIB) * MIB


def make(workdir: Path, workdir_size: int, owner: tuple[int, int] | None, *,
         kind: str | None = None) -> WorkDisk:  # fmt: skip
    """Mount a fresh filesystem of ``workdir_size`` on the empty directory ``workdir``,
    its root owned by ``owner`` (uid, gid; None: ours) and private (0700), the way
    ``mechanism()`` says (or ``kind``, "loop" or "fuse2fs"). DiskError when it cannot
    be made; the image is gone again then."""
    why = f"{kind} was asked for"
    if kind is None:
        kind, why = mechanism()
    if kind is None:
        raise DiskError(errno.ENOTSUP, f"the work directory cannot have a size of its own: {why}")
    size = image_size(workdir_size)
    image = workdir.parent / f"{workdir.name}.disk"
    uid, gid = owner if owner is not None else (os.getuid(), os.getgid())
    try:
        _allocate(image, size)
        # lazy_itable_init and noinit_itable: the inode tables are not written now nor
        # later; fallocate's fresh blocks read as zeros, which is what they would hold
        failed = _run([*MKFS, "-E", f"root_owner={uid}:{gid},nodiscard,lazy_itable_init=1",
                       str(image)])  # fmt: skip
        if failed:
            raise DiskError(errno.EIO, f"mkfs.ext4 failed on {image}: {failed}")
        if kind == "loop":
            failed = _run(["mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noatime,noinit_itable",
                           str(image), str(workdir)])  # fmt: skip
        else:
            failed = _run(["fuse2fs", str(image), str(workdir), "-o", "fakeroot,nosuid,nodev"])
        if failed:
            raise DiskError(errno.EIO, f"cannot mount {image} on {workdir}: {failed}")
        if not _mounted(Path(os.path.realpath(workdir))):  # fuse2fs under no_new_privs
            why = (" (no_new_privs keeps fusermount from mounting: NoNewPrivileges= in a "
                   "unit, DISABLE_SETUID in HTCondor)") if kind == "fuse2fs" else ""  # fmt: skip
            _run(["umount", "-l", str(workdir)])  # whatever it did mount goes with the image
            raise DiskError(errno.EIO, f"{kind} reported success but nothing is mounted on "
                            f"{workdir}{why}")  # fmt: skip
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            image.unlink()
        raise
    disk = WorkDisk(image, workdir, kind, size)
    try:
        with contextlib.suppress(FileNotFoundError):
            (workdir / "lost+found").rmdir()  # nothing of the job's: it need not see it
        os.chmod(workdir, 0o700)
    except OSError as exc:
        disk.release()
        raise DiskError(exc.errno, f"cannot prepare the work directory {workdir}: "
                                   f"{exc.strerror}") from None  # fmt: skip
    return disk


def _allocate(image: Path, size: int) -> None:
    """A new 0600 file of ``size`` bytes, its blocks allocated now (so the space is the
    job's whatever fills the disk later); ENOSPC when the disk has not that much."""
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)  # fmt: skip
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        if libc.fallocate(fd, 0, 0, size) != 0:
            error = ctypes.get_errno()
            if error != errno.EOPNOTSUPP:  # e.g. ENOSPC: the node cannot give that much
                where = image.parent
                raise DiskError(error, f"cannot allocate {size // MIB} MiB for the job's work "
                                       f"directory in {where}: {os.strerror(error)}")
            os.ftruncate(fd, size)  # a filesystem without fallocate: sparse, still capped
    finally:
        os.close(fd)


def _fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def _run(argv: list[str]) -> str | None:
    """Run a system tool; its last line of complaint when it fails, else None."""
    try:
        done = run_tool(argv, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return said[-1][:300] if said else f"exit {done.returncode}"


__all__ = ["DiskError", "WorkDisk", "held", "image_size", "make", "mechanism", "prepare",
           "sweep"]  # fmt: skip
