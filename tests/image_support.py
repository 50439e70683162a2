"""Small real images for the tests, built from Debian's packages: a busybox-static root
directory (busybox-static), the same packed with mksquashfs (squashfs-tools), and a SIF
file around that squashfs, written here to the sylabs/sif layout (there is no Apptainer
to build one).

Images live under a /tmp directory of mode 0711: as root the sandbox runs as uid 65534,
which must reach what bwrap binds, and pytest's tmp_path is private to root."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from sandbox_agent.images.hostpython import interpreter

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
OS_RELEASE = 'PRETTY_NAME="Busybox Test Image 1.0"\nNAME="Busybox Test"\nID=busyboxtest\n'
APPLETS = ("sh", "cat", "ls", "echo", "id", "true", "sleep", "head", "wc", "test", "env", "stat")


def need_image_tools() -> None:
    """Skip, naming the package, where the tools that build test images are missing."""
    if not os.path.isfile(BUSYBOX) or interpreter(BUSYBOX) is not None:
        pytest.skip("a static busybox is missing (apt-get install busybox-static)")
    if shutil.which("mksquashfs") is None:
        pytest.skip("mksquashfs is missing (apt-get install squashfs-tools)")


def need_fuse() -> None:
    from sandbox_agent.images.mount import unusable

    why = unusable()
    if why is not None:
        pytest.skip(f"single-file images cannot be mounted here: {why}")


def shared_dir(prefix: str = "sandbox-agent-images-") -> Path:
    """A fresh directory under /tmp that the sandbox's uid can pass through (0711)."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix=prefix))
    base.chmod(0o711)
    return base


def busybox_root(where: Path, release: str = OS_RELEASE) -> Path:
    """An unpacked root: /bin/busybox, its applets as symlinks, /etc/os-release as a
    symlink to /usr/lib/os-release (absolute, as distributions ship it)."""
    need_image_tools()
    root = where
    (root / "bin").mkdir(parents=True)
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "tmp").mkdir()  # 0755: on a writable filesystem a shared /tmp is refused
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "usr" / "lib" / "os-release").write_text(release)
    (root / "etc" / "os-release").symlink_to("/usr/lib/os-release")
    (root / "etc" / "hostname").write_text("image\n")
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    return root


def squashfs(root: Path, out: Path) -> Path:
    need_image_tools()
    subprocess.run(["mksquashfs", str(root), str(out), "-quiet", "-noappend", "-no-progress"],
                   check=True, capture_output=True)  # fmt: skip
    out.chmod(0o644)
    return out


# sylabs/sif, spec version "01": a 128-byte header, 585-byte descriptors, little-endian.
_HEADER = struct.Struct("<32s10s3s3s16s8q")
_DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")
DATA_PARTITION, DATA_LABELS = 0x4004, 0x4003
FS_SQUASH, FS_EXT3 = 1, 2
PART_PRIMSYS, PART_DATA = 2, 3


def sif(squashfs_file: Path, out: Path, *, fs_type: int = FS_SQUASH,
        part_type: int = PART_PRIMSYS, slots: int = 4) -> Path:  # fmt: skip
    """A SIF holding a labels object, then ``squashfs_file`` as a partition (the root
    partition by default) at an aligned offset, in ``slots`` descriptor slots."""
    data = squashfs_file.read_bytes()
    labels = b'{"org.label-schema.name":"test"}'
    descriptors_at = _HEADER.size
    descriptors_size = slots * _DESCRIPTOR.size
    labels_at = 4096 * ((descriptors_at + descriptors_size) // 4096 + 1)
    data_at = 4096 * ((labels_at + len(labels)) // 4096 + 1)
    extra = struct.pack("<ii3s", fs_type, part_type, b"02\x00")
    table = [
        _DESCRIPTOR.pack(DATA_LABELS, True, 1, 0, 0, labels_at, len(labels), len(labels),
                         0, 0, 0, 0, b"labels", b""),
        _DESCRIPTOR.pack(DATA_PARTITION, True, 2, 0, 0, data_at, len(data), len(data),
                         0, 0, 0, 0, b"rootfs", extra),
    ]  # fmt: skip
    table += [bytes(_DESCRIPTOR.size)] * (slots - len(table))
    header = _HEADER.pack(b"#!/usr/bin/env run-singularity\n", b"SIF_MAGIC\x00", b"01\x00",
                          b"02\x00", bytes(16), 0, 0, slots - 2, slots, descriptors_at,
                          descriptors_size, labels_at, data_at + len(data) - labels_at)  # fmt: skip
    body = bytearray(header + b"".join(table))
    body += bytes(labels_at - len(body)) + labels
    body += bytes(data_at - len(body)) + data
    out.write_bytes(bytes(body))
    out.chmod(0o644)
    return out
