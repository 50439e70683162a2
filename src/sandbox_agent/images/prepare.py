"""An image made ready for one sandbox: checked, named by its digest, held to its pin,
and (a single file) mounted. What the renderer binds and the audit record names.

Checks, in order, each failing closed with one line:
- on a writable filesystem, the image and every directory above it are owned by root
  or this agent's user and writable by their owner only (a sticky directory owned by
  root, such as /tmp, is allowed above it): nobody else may swap or change it between
  the check and the job. A read-only filesystem (CVMFS) needs no such check;
- it is a directory, a squashfs file or a SIF file with a squashfs root partition;
- its digest equals the pin the site policy gives for it (``images.pins``), if any.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sandbox_agent.images import ImageRefused, identity, kinds, mount

# Content hashes shared by every job this process runs; a pilot keeps them in its home.
_CACHE = identity.HashCache()


def keep_hashes_in(path: Path) -> None:
    """Keep this process's content hashes in ``path`` (the agent's home) across runs."""
    global _CACHE
    _CACHE = identity.HashCache(path)


@dataclass(frozen=True)
class ReadyImage:
    path: str  # the image, as resolved (no symlinks)
    named: str  # as the policy or the JDL named it
    origin: str  # which setting chose it: a policy file's line, jdl:Image, jdl:Platform
    kind: str  # directory, squashfs or sif
    digest: str
    size: int
    pinned: bool  # the policy pins it, and the digest matched
    root: str  # the host directory that becomes the sandbox's /: the image or its mount

    def record(self) -> dict[str, Any]:
        """What the audit record says of it."""
        return {"path": self.path, "named": self.named, "chosen_by": self.origin,
                "kind": self.kind, "digest": self.digest, "size": self.size,
                "pinned": self.pinned}  # fmt: skip


@dataclass(frozen=True)
class ImageChoice:
    """What of a policy an image is made ready by: the image, where that value came
    from, the pins, and whether an unpinned image is refused."""

    image: str
    origin: str
    pins: Mapping[str, str]
    require_pin: bool


class ImagePolicy(Protocol):
    """A policy that says which image it runs on (policy/compose.EffectivePolicy): images
    name what they read of it, and never import the policy layer."""

    def image_choice(self) -> ImageChoice: ...


def wanted(effective: ImagePolicy) -> str | None:
    """The image path the effective policy runs on, or None for the host's userland
    or an OCI reference (which bwrap refuses itself)."""
    image = effective.image_choice().image
    return image if image.startswith("/") else None


@dataclass(frozen=True)
class Opened:
    path: str  # resolved
    kind: str
    found: identity.Identity
    root: str  # the directory that becomes the sandbox's /


def check_place(named: str) -> str:
    """The image's resolved path, once it and the directories above it are shown safe
    from other users (no hashing: ``doctor`` uses this). ImageRefused if not."""
    path = os.path.realpath(named)
    try:
        _check_above(named, path)
        _check_own(path, os.stat(path), "directory" if os.path.isdir(path) else "file")
    except OSError as error:
        raise ImageRefused(f"{named}: {error.strerror}") from None
    return path


@contextmanager
def opened(named: str, cache: identity.HashCache | None = None) -> Iterator[Opened]:
    """The image at ``named`` checked, named by its digest and, a file, mounted while
    the context lasts. ImageRefused when it must not be used."""
    path = os.path.realpath(named)
    try:
        _check_above(named, path)
        info = os.stat(path)
    except OSError as error:
        raise ImageRefused(f"{named}: {error.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        _check_own(path, info, "directory")
        found = identity.of_directory(path, cache)
        yield Opened(path, "directory", found, path)
        return
    try:
        # no FIFO may hang us: opened without blocking, then it must be a regular file
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        raise ImageRefused(f"{named}: {error.strerror}") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRefused(f"{named}: an image is a directory, a squashfs file or a SIF file")
        _check_own(path, info, "file")
        try:
            kind = kinds.of_file(named, descriptor)
        except OSError as error:
            raise ImageRefused(f"{named}: cannot read it: {error.strerror}") from None
        found = identity.of_file(descriptor, path, cache)
        with mount.mounted(named, descriptor, kind.offset) as point:
            yield Opened(path, kind.name, found, point)
    finally:
        os.close(descriptor)


@contextmanager
def ready(effective: ImagePolicy) -> Iterator[ReadyImage | None]:
    """The effective policy's image, ready while the context lasts; None for none."""
    named = wanted(effective)
    if named is None:
        yield None
        return
    choice = effective.image_choice()
    origin, pins = choice.origin, choice.pins
    try:
        with opened(named, _CACHE) as image:
            _CACHE.save()
            pin = pins.get(named, pins.get(image.path))
            if pin is None and choice.require_pin:
                raise ImageRefused(f"{named}: images.require_pin is set and no pin names this "
                                   "image; pin it (image pin) once you have vetted it")  # fmt: skip
            pinned = _match(named, image.found.digest, pin)
            yield ReadyImage(image.path, named, origin, image.kind, image.found.digest,
                             image.found.size, pinned, image.root)  # fmt: skip
    except ImageRefused as error:
        raise ImageRefused(f"{error} ({origin})", node=error.node, job=error.job) from None


def _match(named: str, digest: str, pin: str | None) -> bool:
    if pin is None:
        return False
    if pin != digest:
        raise ImageRefused(f"{named}: its digest is {digest}, but images.pins pins it to {pin}: "
                           "the image changed; pin the new one (image pin) only if you made "
                           "it")  # fmt: skip
    return True


def _check_own(path: str, info: os.stat_result, what: str) -> None:
    if identity.read_only(path):
        return
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022 or not identity.trusted_owner(info.st_uid):
        raise ImageRefused(f"{path}: the image {what} (mode {mode:04o}, owner uid "
                           f"{info.st_uid}) could be changed by another user; it must be owned "
                           "by root or this agent's user and writable by its owner only (chown, "
                           "chmod go-w)")  # fmt: skip


def _check_above(named: str, path: str) -> None:
    """Every directory above the image: no user but root or this agent's (or anyone, in
    a sticky directory root owns) may rename or replace what is in it."""
    parent = os.path.dirname(path)
    while True:
        info = os.stat(parent)
        mode = stat.S_IMODE(info.st_mode)
        sticky_root = mode & stat.S_ISVTX and info.st_uid == 0
        others = mode & 0o022 or not identity.trusted_owner(info.st_uid)
        if others and not sticky_root and not identity.read_only(parent):
            raise ImageRefused(f"{named}: {parent}, above the image (mode {mode:04o}, owner uid "
                               f"{info.st_uid}), lets another user replace the image; keep "
                               "images where only root or this agent's user may write")  # fmt: skip
        if parent == "/":
            return
        parent = os.path.dirname(parent)
