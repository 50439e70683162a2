"""An image's identity: what a pin in a site policy names and the audit record holds.

A file image (squashfs, SIF) is named by the SHA-256 of its bytes, read from the open
descriptor the mount then uses. A directory image (an unpacked root, as on CVMFS) is
named by the SHA-256 of its manifest: one line per entry, sorted by path, giving its
type, mode, size, and the SHA-256 of a file's content or a symlink's target. Content
hashes are cached by (device, inode, size, mtime, ctime): a second job on the same image
stats every entry again but reads no unchanged file twice. ctime is in the key because
no user can set it: a file rewritten with its old mtime restored is still read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sandbox_agent.images import ImageRefused

DIGEST_PREFIX = "sha256:"
_CHUNK = 1 << 20
_CACHE_CAP = 2_000_000  # entries kept on disk; a bigger cache is dropped, not trusted
_TYPES = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFCHR: "c",
          stat.S_IFBLK: "b", stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}  # fmt: skip


@dataclass(frozen=True)
class Identity:
    digest: str  # "sha256:<hex>"
    size: int  # bytes: the file's, or the sum of a directory's files
    entries: int  # 1 for a file image; the manifest's lines for a directory


def stat_key(info: os.stat_result) -> str:
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


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

    def get(self, info: os.stat_result) -> str | None:
        return self.hashes.get(stat_key(info))

    def put(self, info: os.stat_result, value: str) -> None:
        key = stat_key(info)
        if self.hashes.get(key) != value:
            self.hashes[key] = value
            self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty or len(self.hashes) > _CACHE_CAP:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                             0o600)  # fmt: skip
        with os.fdopen(descriptor, "w") as file:
            json.dump(self.hashes, file, separators=(",", ":"))
        os.replace(temporary, self.path)
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


def file_sha256(descriptor: int, cache: HashCache | None = None) -> str:
    """The hex SHA-256 of the open file's bytes, from its start."""
    info = os.fstat(descriptor)
    known = cache.get(info) if cache else None
    if known is not None:
        return known
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(descriptor, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    value = digest.hexdigest()
    if cache is not None:
        cache.put(info, value)
    return value


def of_file(descriptor: int, cache: HashCache | None = None) -> Identity:
    return Identity(DIGEST_PREFIX + file_sha256(descriptor, cache), os.fstat(descriptor).st_size, 1)


def manifest(root: str, cache: HashCache | None = None) -> list[str]:
    """The manifest's lines, sorted by path. Refuses what any user could change: a
    directory or file every user may write to (a sticky directory, such as an image's
    /tmp, is allowed: nobody may replace another's files there)."""
    stack = [""]
    lines: list[tuple[str, str]] = []  # (path, line)
    while stack:
        relative = stack.pop()
        here = os.path.join(root, relative) if relative else root
        try:
            with os.scandir(here) as listing:
                children = list(listing)
        except OSError as error:
            raise ImageRefused(f"{root}: cannot read {relative or '/'}: {error.strerror}") from None
        for entry in children:
            path = f"{relative}/{entry.name}" if relative else entry.name
            info = entry.stat(follow_symlinks=False)
            kind = _TYPES.get(stat.S_IFMT(info.st_mode), "?")
            mode = stat.S_IMODE(info.st_mode)
            if kind == "d" and mode & 0o002 and not mode & stat.S_ISVTX:
                raise ImageRefused(f"{root}: /{path} is a directory every user may write to; "
                                   "an image must be writable by its owner only")  # fmt: skip
            if kind == "f" and mode & 0o002:
                raise ImageRefused(f"{root}: /{path} is a file every user may write to; an "
                                   "image must be writable by its owner only")  # fmt: skip
            if kind == "f":
                detail = f"{info.st_size} {_content(entry.path, info, cache)}"
            elif kind == "l":
                target = os.fsencode(os.readlink(entry.path))
                detail = f"{len(target)} {quote(target, safe='/')}"
            elif kind in ("c", "b"):
                detail = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)} -"
            else:
                detail = "- -"
            named = "/" + quote(os.fsencode(path), safe="/")
            lines.append((named, f"{kind} {mode:04o} {detail} {named}"))
            if kind == "d":
                stack.append(path)
    return [line for _, line in sorted(lines)]


def _content(path: str, info: os.stat_result, cache: HashCache | None) -> str:
    known = cache.get(info) if cache else None
    if known is not None:
        return known
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise ImageRefused(f"cannot read {path}: {error.strerror}") from None
    try:
        value = file_sha256(descriptor, cache)
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
