"""An image's identity: what a pin in a site policy names and the audit record holds.

A file image (squashfs, SIF) is named by the SHA-256 of its bytes, read from the open
descriptor the mount then uses. A directory image (an unpacked root, as on CVMFS) is
named by the SHA-256 of its manifest: one line per entry, sorted by path, giving its
type, mode, size, and the SHA-256 of a file's content or a symlink's target. Content
hashes are cached by the file's path, device, inode, size, mtime and ctime, and the
boot: a second job on the same image stats every entry again but reads no unchanged
file twice. ctime is in the key because no user can set it on a local filesystem: a
file rewritten with its old mtime restored is read again. The path and the boot are in
it because a FUSE filesystem (CVMFS, squashfuse) numbers its devices and inodes anew
at each mount, and may report any ctime.

On a filesystem nobody can change (squashfs, or CVMFS and squashfuse mounted by root or
this agent) an image's modes and owners are only recorded. On any other, every entry
must be owned by root or the agent's user and writable by its owner only: anyone else
could change the image between its check and the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sandbox_agent.images import ImageRefused, mounttable

DIGEST_PREFIX = "sha256:"
_CHUNK = 1 << 20
_CACHE_CAP = 2_000_000  # entries kept on disk; a bigger cache is dropped, not trusted
MAX_ENTRIES = 1_000_000  # in a directory image: more is refused (pack it as a squashfs)
_TYPES = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFCHR: "c",
          stat.S_IFBLK: "b", stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}  # fmt: skip


@dataclass(frozen=True)
class Identity:
    digest: str  # "sha256:<hex>"
    size: int  # bytes: the file's, or the sum of a directory's files
    entries: int  # 1 for a file image; the manifest's lines for a directory


def _boot() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return "unknown-boot"


_BOOT = _boot()


def stat_key(info: os.stat_result, where: str) -> str:
    return (f"{_BOOT}:{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:"
            f"{info.st_ctime_ns}:{where}")  # fmt: skip


class HashCache:
    """Content hashes by stat key, kept in memory and, given a path, in a file only this
    user may write (the agent's home): a pilot started again does not read a CVMFS
    image's gigabytes again."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.hashes: dict[str, str] = {}
        self.dirty = False
        if path is not None:
            self.hashes = _load(path)

    def get(self, info: os.stat_result, where: str) -> str | None:
        return self.hashes.get(stat_key(info, where))

    def put(self, info: os.stat_result, where: str, value: str) -> None:
        key = stat_key(info, where)
        if self.hashes.get(key) != value:
            self.hashes[key] = value
            self.dirty = True

    def save(self) -> None:
        """Keep the hashes on disk, if there is room; a cache that cannot be written
        only costs the next pilot the reading again."""
        if self.path is None or not self.dirty or len(self.hashes) > _CACHE_CAP:
            return
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                 | os.O_NOFOLLOW, 0o600)  # fmt: skip
            with os.fdopen(descriptor, "w") as file:
                json.dump(self.hashes, file, separators=(",", ":"))
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            return
        self.dirty = False


def _load(path: Path) -> dict[str, str]:
    """The cached hashes, or none when the file is not this user's own and private."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    with os.fdopen(descriptor) as file:
        info = os.fstat(file.fileno())
        if info.st_uid != os.geteuid() or info.st_mode & 0o022 or not stat.S_ISREG(info.st_mode):
            return {}
        try:
            data = json.load(file)
        except (ValueError, UnicodeDecodeError):
            return {}
    if not isinstance(data, dict) or len(data) > _CACHE_CAP:
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def file_sha256(descriptor: int, where: str, cache: HashCache | None = None) -> str:
    """The hex SHA-256 of the open file's bytes, from its start (``where``: its path)."""
    info = os.fstat(descriptor)
    known = cache.get(info, where) if cache else None
    if known is not None:
        return known
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(descriptor, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    value = digest.hexdigest()
    if cache is not None:
        cache.put(info, where, value)
    return value


def of_file(descriptor: int, where: str, cache: HashCache | None = None) -> Identity:
    try:
        value = file_sha256(descriptor, where, cache)
    except OSError as error:
        raise ImageRefused(f"{where}: cannot read it: {error.strerror}") from None
    return Identity(DIGEST_PREFIX + value, os.fstat(descriptor).st_size, 1)


# Filesystems nobody can write: squashfs and its kin in the kernel, and CVMFS or
# squashfuse mounted by root or this agent (another user could remount their own).
_IMMUTABLE = frozenset({"squashfs", "erofs", "iso9660"})
_IMMUTABLE_FUSE = frozenset({"fuse.cvmfs", "fuse.cvmfs2", "fuse.squashfuse", "fuse.squashfuse_ll"})


def read_only(path: str, table: bytes | None = None) -> bool:
    """Whether ``path`` is on a filesystem nobody can change: one of a read-only kind
    (a read-only mount of a writable one is not: it may be writable elsewhere). CVMFS
    names itself "fuse" with the source "cvmfs2"."""
    mount = mounttable.holding(path, table)
    if mount is None:
        return False
    if mount.fstype in _IMMUTABLE:
        return True
    cvmfs = mount.fstype == "fuse" and mount.source == "cvmfs2"
    if mount.fstype not in _IMMUTABLE_FUSE and not cvmfs:
        return False
    owner = next((o.split("=", 1)[1] for o in mount.options if o.startswith("user_id=")), "")
    return owner.isdigit() and trusted_owner(int(owner))


def trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def manifest(root: str, cache: HashCache | None = None) -> list[str]:
    """The manifest's lines, sorted by path. On a writable filesystem, refuses an
    entry that someone other than root or this agent's user owns or may write."""
    strict = not read_only(root)
    stack = [""]
    lines: list[tuple[str, str]] = []  # (path, line)
    while stack:
        relative = stack.pop()
        here = os.path.join(root, relative) if relative else root
        try:
            with os.scandir(here) as listing:
                children = list(listing)
            for entry in children:
                path = f"{relative}/{entry.name}" if relative else entry.name
                named = "/" + quote(os.fsencode(path), safe="/")
                line, directory = _line(root, entry, named, strict, cache)
                lines.append((named, line))
                if directory:
                    stack.append(path)
        except OSError as error:
            raise ImageRefused(f"{root}: cannot read {relative or '/'}: {error.strerror}") from None
        if len(lines) > MAX_ENTRIES:
            raise ImageRefused(f"{root}: more than {MAX_ENTRIES:,} entries; pack it as a "
                               "squashfs file (mksquashfs) and use that")  # fmt: skip
    return [line for _, line in sorted(lines)]


def _line(root: str, entry: os.DirEntry[str], named: str, strict: bool,
          cache: HashCache | None) -> tuple[str, bool]:  # fmt: skip
    """One entry's manifest line, and whether it is a directory to walk."""
    info = entry.stat(follow_symlinks=False)
    kind = _TYPES.get(stat.S_IFMT(info.st_mode), "?")
    mode = stat.S_IMODE(info.st_mode)
    if strict and kind != "l" and (mode & 0o022 or not trusted_owner(info.st_uid)):
        raise ImageRefused(f"{root}: {named} (mode {mode:04o}, owner uid {info.st_uid}) could "
                           "be changed by another user; an image on a writable filesystem "
                           "must be owned by root or this agent's user and writable by its "
                           "owner only (chown, chmod go-w)")  # fmt: skip
    if kind == "f":
        detail = f"{info.st_size} {_content(entry.path, info, cache)}"
    elif kind == "l":
        target = os.fsencode(os.readlink(entry.path))
        detail = f"{len(target)} {quote(target, safe='/')}"
    elif kind in ("c", "b"):
        detail = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)} -"
    else:
        detail = "- -"
    return f"{kind} {mode:04o} {detail} {named}", kind == "d"


def _content(path: str, info: os.stat_result, cache: HashCache | None) -> str:
    known = cache.get(info, path) if cache else None
    if known is not None:
        return known
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise ImageRefused(f"cannot read {path}: {error.strerror}") from None
    try:
        value = file_sha256(descriptor, path, cache)
    finally:
        os.close(descriptor)
    return value


def of_directory(root: str, cache: HashCache | None = None) -> Identity:
    digest = hashlib.sha256()
    size = entries = 0
    for line in manifest(root, cache):
        digest.update(line.encode() + b"\n")
        entries += 1
        if line.startswith("f "):
            size += int(line.split(" ", 3)[2])
    return Identity(DIGEST_PREFIX + digest.hexdigest(), size, entries)
