"""Staging a job's local files at submit: each goes into the catalogue (the home's, or a
broker's: see ``Stash``) and the JDL names it by its catalogue name instead.

A local file becomes ``LF:/local/<owner>/<first 16 hex of its sha256>/<basename>``, so
the name changes whenever the content does and a job always gets the bytes it was
submitted with.  The agent later places every file of the job (Executable,
ValidationCommand, InputFile) in the job's work directory under its basename, so two
that would land on the same name are refused here, as are the names the work directory
already uses.

What each key may name:

* ``Executable``, ``ValidationCommand``: ``LF:/...`` (must be in the catalogue); an
  absolute path, left alone (a program of the sandbox's userland, such as /bin/sleep);
  a relative path, a file next to the JDL, staged.
* ``InputFile``: ``LF:/...`` (must be in the catalogue); a local path, absolute or
  relative to the JDL's directory, staged.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sandbox_agent.catalogue import CatalogueError, Entry, check_lfn
from sandbox_agent.jdl.spec import InputFile, JobSpec

LOCAL_ROOT = "/local"
DIGEST_CHARS = 16
# Names the work directory already holds: the job token and the job's own streams.
RESERVED = frozenset({".jalien-token", "stdout", "stderr"})


class StagingError(ValueError):
    """A job's file that cannot be staged; one line naming the JDL key and the path."""


@dataclass(frozen=True)
class _File:
    key: str  # the JDL key: Executable, ValidationCommand, InputFile
    text: str  # as the JDL wrote it
    lfn: str | None  # a catalogue name already
    local: Path | None  # a local file to stage
    basename: str | None  # where it lands in the work directory; None: not placed


def staged_lfn(owner: str, sha256: str, basename: str) -> str:
    """The catalogue name a staged file gets."""
    return f"{LOCAL_ROOT}/{owner}/{sha256[:DIGEST_CHARS]}/{basename}"


class Stash(Protocol):
    """Where staged files go: the home's Catalogue, or a broker (cli.remote)."""

    def get(self, lfn: str) -> object:
        """Nothing, or CatalogueError when ``lfn`` is not there."""

    def add_named(self, path: Path, name: Callable[[str], str], owner: str) -> Entry: ...


def stage(spec: JobSpec, jdl_dir: Path, catalogue: Stash, owner: str) -> JobSpec:
    """``spec`` with its local files added to ``catalogue`` and named by their LFNs.

    Everything is checked before anything is added: catalogue names exist, local files
    exist and are regular files, no two files land on one name.  Raises StagingError."""
    if owner in ("", ".", "..") or "/" in owner or not owner.isprintable():
        raise StagingError(
            f"owner '{owner}' cannot be part of a catalogue name; submit as a user whose "
            "name has no '/' or control characters"
        )
    executable = _program("Executable", spec.executable, jdl_dir)
    validation = (
        _program("ValidationCommand", spec.validation_command, jdl_dir)
        if spec.validation_command is not None
        else None
    )
    inputs = [_input(f, jdl_dir) for f in spec.input_files]
    files = [f for f in (executable, validation, *inputs) if f is not None]
    for f in files:
        _check(f, catalogue)
    _check_names(files)

    def staged(f: _File) -> str:
        return f.text if f.local is None else "LF:" + _add(f, f.local, catalogue, owner)

    return dataclasses.replace(
        spec,
        executable=staged(executable),
        validation_command=staged(validation) if validation is not None else None,
        input_files=tuple(
            orig if f.local is None else InputFile(_add(f, f.local, catalogue, owner), True)
            for f, orig in zip(inputs, spec.input_files, strict=True)
        ),
    )


def _lf_name(text: str) -> str | None:
    return text[3:] if text[:3].casefold() == "lf:" else None


def _program(key: str, text: str, jdl_dir: Path) -> _File:
    lfn = _lf_name(text)
    if lfn is not None:
        return _File(key, text, lfn, None, posixpath.basename(lfn))
    if text.startswith("/"):
        return _File(key, text, None, None, None)  # inside the sandbox: not placed
    path = jdl_dir / text
    if not _exists(path):
        raise StagingError(
            f"{key} {text}: no such file next to the JDL ({jdl_dir}); give an absolute "
            "path for a program inside the sandbox, or an LF: name"
        )
    return _File(key, text, None, path, posixpath.basename(text))


def _input(entry: InputFile, jdl_dir: Path) -> _File:
    if entry.catalogue:
        return _File("InputFile", entry.jdl(), entry.name, None, posixpath.basename(entry.name))
    path = Path(entry.name) if entry.name.startswith("/") else jdl_dir / entry.name
    if not _exists(path):
        where = "" if entry.name.startswith("/") else f" next to the JDL ({jdl_dir})"
        raise StagingError(
            f"InputFile {entry.name}: no such file{where}; check the path, or give an LF: name"
        )
    return _File("InputFile", entry.name, None, path, posixpath.basename(entry.name))


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # it is there; _check says why it cannot be read
    return True


def _check(f: _File, catalogue: Stash) -> None:
    if f.lfn is not None:
        try:
            check_lfn(f.lfn)
            catalogue.get(f.lfn)
        except CatalogueError as exc:
            raise StagingError(f"{f.key}: {exc}") from None
    if f.local is not None:
        try:
            info = os.stat(f.local)
        except OSError as exc:
            raise StagingError(f"{f.key} {f.text}: cannot read it ({exc.strerror})") from None
        if not stat.S_ISREG(info.st_mode):
            raise StagingError(
                f"{f.key} {f.text}: {f.local} is not a regular file; name a file, not a "
                "directory or a device"
            )


def _check_names(files: list[_File]) -> None:
    seen: dict[str, _File] = {}
    for f in files:
        name = f.basename
        if name is None:
            continue
        if name in ("", ".", ".."):
            raise StagingError(f"{f.key} {f.text}: names no file (it ends in '/', '.' or '..')")
        if name in RESERVED:
            raise StagingError(
                f"{f.key} {f.text}: its name {name} is reserved in the work directory "
                f"({', '.join(sorted(RESERVED))}); rename the file"
            )
        other = seen.get(name)
        if other is not None:
            raise StagingError(
                f"{f.key} {f.text}: lands on {name} in the work directory, as {other.key} "
                f"{other.text} does; rename one of them"
            )
        seen[name] = f


def _add(f: _File, path: Path, catalogue: Stash, owner: str) -> str:
    """Add ``path`` to the catalogue under its staged name; that name."""
    basename = f.basename
    assert basename is not None
    try:
        entry = catalogue.add_named(path, lambda digest: staged_lfn(owner, digest, basename), owner)
    except CatalogueError as exc:
        raise StagingError(f"{f.key} {f.text}: {exc}") from None
    return entry.lfn
