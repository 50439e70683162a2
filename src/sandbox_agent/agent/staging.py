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

Staging runs with the rights of whoever submits, the pilot's own account included, and
the JDL is someone else's text: every local file is opened through policy.reach, which
keeps a relative name beneath the JDL's directory and refuses any file that reaches a
credential or the sandbox's deny list, and it is copied from that descriptor.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sandbox_agent.catalogue import (  # noqa: F401 (LOCAL_ROOT, DIGEST_CHARS: catalogue's now)
    DIGEST_CHARS,
    LOCAL_ROOT,
    RESERVED,
    CatalogueError,
    Entry,
    check_lfn,
    staged_lfn,
)
from sandbox_agent.jdl.spec import InputFile, JobSpec
from sandbox_agent.policy.reach import Deny, PathRefused, UserFile, open_user_file


class StagingError(ValueError):
    """A job's file that cannot be staged; one line naming the JDL key and the path."""


@dataclass(frozen=True)
class _File:
    key: str  # the JDL key: Executable, ValidationCommand, InputFile
    text: str  # as the JDL wrote it
    lfn: str | None  # a catalogue name already
    local: UserFile | None  # a local file to stage, opened and judged
    basename: str | None  # where it lands in the work directory; None: not placed


class Stash(Protocol):
    """Where staged files go: the home's Catalogue, or a broker (cli.remote)."""

    def get(self, lfn: str) -> object:
        """Nothing, or CatalogueError when ``lfn`` is not there."""

    def add_opened(self, src: int, shown: str, name: Callable[[str], str],
                   owner: str) -> Entry: ...  # fmt: skip


def stage(spec: JobSpec, jdl_dir: Path, catalogue: Stash, owner: str, deny: Deny) -> JobSpec:
    """``spec`` with its local files added to ``catalogue`` and named by their LFNs.

    Everything is checked before anything is added: catalogue names exist, local files
    are regular files that ``deny`` lets them reach, no two files land on one name.
    Raises StagingError."""
    if owner in ("", ".", "..") or "/" in owner or not owner.isprintable():
        raise StagingError(
            f"owner '{owner}' cannot be part of a catalogue name; submit as a user whose "
            "name has no '/' or control characters"
        )
    files: list[_File] = []
    try:
        return _stage(spec, jdl_dir, catalogue, owner, deny, files)
    except PathRefused as exc:
        raise StagingError(str(exc)) from None
    finally:
        for f in files:
            if f.local is not None:
                f.local.close()


def _stage(spec: JobSpec, jdl_dir: Path, catalogue: Stash, owner: str, deny: Deny,
           files: list[_File]) -> JobSpec:  # fmt: skip
    """``stage``'s work; every file it opens is in ``files`` for the caller to close."""

    def opened(f: _File) -> _File:
        files.append(f)
        return f

    executable = opened(_program("Executable", spec.executable, jdl_dir, deny))
    validation = (
        opened(_program("ValidationCommand", spec.validation_command, jdl_dir, deny))
        if spec.validation_command is not None
        else None
    )
    inputs = [opened(_input(f, jdl_dir, deny)) for f in spec.input_files]
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


def _program(key: str, text: str, jdl_dir: Path, deny: Deny) -> _File:
    lfn = _lf_name(text)
    if lfn is not None:
        return _File(key, text, lfn, None, posixpath.basename(lfn))
    if text.startswith("/"):
        return _File(key, text, None, None, None)  # inside the sandbox: not placed
    if not (jdl_dir / text).exists() and not (jdl_dir / text).is_symlink():
        raise StagingError(
            f"{key} {text}: no such file next to the JDL ({jdl_dir}); give an absolute "
            "path for a program inside the sandbox, or an LF: name"
        )
    local = open_user_file(text, base=jdl_dir, deny=deny, key=key)
    return _File(key, text, None, local, posixpath.basename(text))


def _input(entry: InputFile, jdl_dir: Path, deny: Deny) -> _File:
    if entry.catalogue:
        return _File("InputFile", entry.jdl(), entry.name, None, posixpath.basename(entry.name))
    local = open_user_file(entry.name, base=jdl_dir, deny=deny, key="InputFile")
    return _File("InputFile", entry.name, None, local, posixpath.basename(entry.name))


def _check(f: _File, catalogue: Stash) -> None:
    if f.lfn is not None:
        try:
            check_lfn(f.lfn)
            catalogue.get(f.lfn)
        except CatalogueError as exc:
            raise StagingError(f"{f.key}: {exc}") from None


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


def _add(f: _File, local: UserFile, catalogue: Stash, owner: str) -> str:
    """Add the opened file to the catalogue under its staged name; that name."""
    basename = f.basename
    assert basename is not None
    try:
        entry = catalogue.add_opened(local.fd, f.text,
                                     lambda digest: staged_lfn(owner, digest, basename),
                                     owner)  # fmt: skip
    except CatalogueError as exc:
        raise StagingError(f"{f.key} {f.text}: {exc}") from None
    return entry.lfn
