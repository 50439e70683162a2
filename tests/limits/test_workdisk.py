"""limits.workdisk: the work directory as a real filesystem of the job's size, made with
the real mkfs.ext4 and mounted on a real loop device (root), on a small real filesystem
standing for the node's disk."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import loop_filesystem

from sandbox_agent.limits import workdisk

MIB = 1 << 20


def _loop_usable() -> str | None:
    if os.geteuid() != 0:
        return "loop mounts need root"
    kind, why = workdisk.mechanism()
    return None if kind == "loop" else why


pytestmark = pytest.mark.skipif(_loop_usable() is not None, reason=str(_loop_usable()))


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 128 MiB ext4 filesystem on a loop device: the node's disk, small enough to fill."""
    with loop_filesystem(128) as disk:
        yield disk


def free(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def fills_to_enospc(workdir: Path, node: Path) -> None:
    """Write 64 MiB into ``workdir``: ENOSPC comes first, and the node's disk around it
    does not move (the image took its space up front)."""
    node_free = free(node)
    with open(workdir / "filler", "wb") as file, pytest.raises(OSError) as info:
        for _ in range(64):
            file.write(b"\xff" * MIB)
            file.flush()
            os.fsync(file.fileno())
    assert info.value.errno == errno.ENOSPC
    assert free(node) == node_free


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        return any(line.split()[4] == str(path) for line in table)


def test_the_job_gets_its_size_and_not_a_byte_more(small_disk: Path) -> None:
    workdir = small_disk / "job-1"
    workdir.mkdir()
    before = free(small_disk)
    disk = workdisk.make(workdir, 20 * MIB, (65534, 65534))
    try:
        assert mounted(workdir) and disk.kind == "loop"
        # the whole image was taken from the node's disk up front
        assert before - free(small_disk) >= disk.size - MIB
        assert free(workdir) >= 20 * MIB  # the job has its size ...
        info = os.stat(workdir)
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (65534, 65534, 0o700)
        assert os.listdir(workdir) == []  # no lost+found
        # ... and past it a write is ENOSPC at once, not seen later by a monitor
        with open(workdir / "big", "wb") as file, pytest.raises(OSError) as info_:
            os.posix_fallocate(file.fileno(), 0, 64 * MIB)
        assert info_.value.errno == errno.ENOSPC
        fills_to_enospc(workdir, small_disk)
        # nosuid, nodev: the job cannot plant a setuid binary or a device there
        table = Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines()
        options = next(line.split()[5] for line in table if line.split()[4] == str(workdir))
        assert {"nosuid", "nodev"} <= set(options.split(","))
    finally:
        problem = disk.release()
    assert problem is None
    assert not mounted(workdir) and not disk.image.exists()
    assert free(small_disk) >= before - MIB  # all of it given back


def test_a_node_without_the_room_refuses_before_anything_is_made(small_disk: Path) -> None:
    workdir = small_disk / "job-2"
    workdir.mkdir()
    with pytest.raises(workdisk.DiskError) as info:
        workdisk.make(workdir, 512 * MIB, None)
    assert info.value.errno == errno.ENOSPC
    assert "cannot allocate" in str(info.value) and str(small_disk) in str(info.value)
    assert not mounted(workdir)
    assert sorted(os.listdir(small_disk)) == ["job-2", "lost+found"]  # no image left


def test_the_image_is_sized_so_the_job_gets_what_it_asked_for() -> None:
    for asked in (1, 20 * MIB, 10 << 30):
        size = workdisk.image_size(asked)
        assert size % MIB == 0 and size >= asked + asked // 64 + 4 * MIB


@pytest.mark.skipif(
    shutil.which("fuse2fs") is None or not os.path.exists("/dev/fuse"),
    reason="fuse2fs or /dev/fuse is missing (apt-get install fuse2fs)",
)
def test_the_unprivileged_pilots_way_holds_the_size_too(small_disk: Path) -> None:
    """fuse2fs is how a pilot without root mounts the image; here as root, which may
    open /dev/fuse on any host (an unprivileged user may not, on this one)."""
    workdir = small_disk / "job-3"
    workdir.mkdir()
    disk = workdisk.make(workdir, 20 * MIB, None, kind="fuse2fs")
    try:
        assert mounted(workdir) and disk.kind == "fuse2fs"
        fills_to_enospc(workdir, small_disk)
    finally:
        problem = disk.release()
    assert problem is None
    assert not mounted(workdir) and not disk.image.exists()


def test_a_work_area_reached_through_a_symlink_gets_its_filesystem(small_disk: Path) -> None:
    """The mount table names the real path: a work area behind a link (an execute
    directory, a home) is mounted, found mounted, and released."""
    (small_disk / "real").mkdir()
    link = small_disk / "link"
    link.symlink_to(small_disk / "real")
    workdir = link / "work"
    workdir.mkdir()
    disk = workdisk.make(workdir, 20 * MIB, None, kind="loop")
    try:
        assert mounted(small_disk / "real" / "work")
    finally:
        assert disk.release() is None
    assert not mounted(small_disk / "real" / "work")
