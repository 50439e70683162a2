"""What an image path is: a directory, a squashfs file, or a SIF file (and where its
squashfs partition starts). Read from the file's own bytes, never from its name.

SIF (the Singularity Image Format, sylabs/sif, spec version "01"): a 128-byte
little-endian header (magic "SIF_MAGIC" at byte 32), then an array of 585-byte
descriptors. The root filesystem is the descriptor of data type 0x4004 (a partition)
whose partition type is 2 (the primary system partition); its offset and size are
absolute in the file. Only a squashfs partition (fs type 1) is taken: ext3 and
encrypted partitions need Apptainer itself.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

from sandbox_agent.images import ImageRefused

SQUASHFS_MAGIC = b"hsqs"  # little-endian squashfs, as mksquashfs writes on every host
SIF_MAGIC = b"SIF_MAGIC\x00"
SIF_VERSION = b"01\x00"
_SIF_HEADER = struct.Struct("<32s10s3s3s16s8q")  # 128 bytes
_SIF_DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")  # 585 bytes, no padding
_DATA_PARTITION = 0x4004
_PART_PRIMARY_SYSTEM = 2
_FS_SQUASH = 1
_FS_NAMES = {1: "squashfs", 2: "ext3", 3: "an immutable object", 4: "raw data",
             5: "encrypted squashfs"}  # fmt: skip
_MAX_DESCRIPTORS = 4096  # Singularity makes 48; more is not a SIF we read

@dataclass(frozen=True)
class Kind:
    name: str  # "directory", "squashfs" or "sif"
    offset: int = 0  # where the squashfs starts in the file
    size: int = 0  # the squashfs's bytes (a file image's; 0 for a directory)


def of_path(path: str, descriptor: int | None = None) -> Kind:
    """The kind of the image at ``path`` (``descriptor``: the file, already open)."""
    if descriptor is None:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            return Kind("directory")
    else:
        info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        raise ImageRefused(f"{path}: an image is a directory, a squashfs file or a SIF file")
    if descriptor is None:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            return of_file(path, descriptor)
        finally:
            os.close(descriptor)
    return of_file(path, descriptor)


def of_file(path: str, descriptor: int) -> Kind:
    size = os.fstat(descriptor).st_size
    head = os.pread(descriptor, _SIF_HEADER.size, 0)
    if head[:4] == SQUASHFS_MAGIC:
        return Kind("squashfs", 0, size)
    if len(head) == _SIF_HEADER.size and head[32:42] == SIF_MAGIC:
        return _sif(path, descriptor, head, size)
    if head[:4] == b"sqsh":
        raise ImageRefused(f"{path}: a big-endian squashfs; repack it with mksquashfs here")
    raise ImageRefused(f"{path}: neither a squashfs nor a SIF file (its first bytes are "
                       f"{head[:4].hex() or 'none'}); an image is a directory, a squashfs "
                       "file or a SIF file")  # fmt: skip


def _sif(path: str, descriptor: int, head: bytes, size: int) -> Kind:
    fields = _SIF_HEADER.unpack(head)
    version, total, offset = fields[2], fields[8], fields[9]
    if version != SIF_VERSION:
        raise ImageRefused(f"{path}: SIF version {version.rstrip(bytes(1))!r}; this reads "
                           "version 01")  # fmt: skip
    if not 0 < total <= _MAX_DESCRIPTORS or offset < _SIF_HEADER.size:
        raise ImageRefused(f"{path}: a SIF header with {total} descriptors at {offset}")
    table = os.pread(descriptor, total * _SIF_DESCRIPTOR.size, offset)
    if len(table) != total * _SIF_DESCRIPTOR.size:
        raise ImageRefused(f"{path}: the SIF's descriptors run past its end")
    for index in range(total):
        (data_type, used, *_ids, start, length, _padded, _c, _m, _u, _g, _name,
         extra) = _SIF_DESCRIPTOR.unpack_from(table, index * _SIF_DESCRIPTOR.size)  # fmt: skip
        if not used or data_type != _DATA_PARTITION:
            continue
        fs_type, part_type = struct.unpack_from("<ii", extra)
        if part_type != _PART_PRIMARY_SYSTEM:
            continue
        if fs_type != _FS_SQUASH:
            what = _FS_NAMES.get(fs_type, f"fs type {fs_type}")
            raise ImageRefused(f"{path}: the SIF's root partition is {what}; only squashfs "
                               "can be mounted here (Apptainer runs the others)")  # fmt: skip
        if start < 0 or length <= 0 or start + length > size:
            raise ImageRefused(f"{path}: the SIF's root partition lies outside the file")
        if os.pread(descriptor, 4, start) != SQUASHFS_MAGIC:
            raise ImageRefused(f"{path}: the SIF's root partition is not a squashfs")
        return Kind("sif", start, length)
    raise ImageRefused(f"{path}: the SIF file has no root (primary system) partition")
