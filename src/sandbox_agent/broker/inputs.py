"""A job's input files at the broker: its owner sends them before submitting, and the
job's own token fetches them for the agent that runs it.

The broker keeps them in its home's catalogue (the one `catalogue add` fills there). A
file user U sends is kept as ``LF:/local/U/<first 16 hex of its SHA-256>/<name>``, the
name `submit` gives a local file on one machine, so the name changes with the content
and a job gets the bytes it was submitted with.

Who may name what:

* a job of user U names U's own files (``/local/U/...``) and the site's shared files
  (any name outside ``/local/``, added by the broker's operator with `catalogue add`),
  never another user's ``/local/`` files, whatever U's role: checked at submit and
  again when the file is fetched (a job may have reached the queue another way);
* every file a job names must be in the catalogue when it is submitted, at most
  FILE_CAP bytes, each landing on its own name in the work directory; a file of the
  submitting machine (a relative Executable, a local InputFile) is refused: the client
  sends those first and names them by LF:.

A job token fetches only the files its own job's JDL names, while the job is ASSIGNED:
its agent places them before the sandbox starts, so the payload, which holds the same
token, can fetch nothing.
"""

from __future__ import annotations

import hashlib
import posixpath

from sandbox_agent.broker.files import FILE_CAP
from sandbox_agent.catalogue import (
    LOCAL_ROOT,
    RESERVED,
    Catalogue,
    CatalogueError,
    Damaged,
    Entry,
    NameTaken,
    NotCatalogued,
    staged_lfn,
)
from sandbox_agent.jdl import JobSpec


class InputRefused(ValueError):
    """An input the broker will not take or give: one line; ``status`` for HTTP."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def named_files(spec: JobSpec) -> list[tuple[str, str]]:
    """(JDL key, LFN) of every catalogue file the job names."""
    named = [("Executable", spec.executable), ("ValidationCommand", spec.validation_command)]
    # "LF:" as the agent places them (attempt.place_files)
    found = [(key, text[3:]) for key, text in named if text and text.startswith("LF:")]
    found += [("InputFile", item.name) for item in spec.input_files if item.catalogue]
    return found


def local_files(spec: JobSpec) -> list[tuple[str, str]]:
    """(JDL key, name) of the files the job names on the submitting machine."""
    named = [("Executable", spec.executable), ("ValidationCommand", spec.validation_command)]
    found = [(key, text) for key, text in named
             if text and not text.startswith(("LF:", "/"))]  # fmt: skip
    found += [("InputFile", item.name) for item in spec.input_files if not item.catalogue]
    return found


def check_file_name(name: str) -> str:
    """``name`` if it can be a sent file's name: one plain path component."""
    if not name or len(name) > 255:
        raise InputRefused(400, "an input's name has 1 to 255 characters")
    if "/" in name or name in (".", "..") or not name.isprintable():
        raise InputRefused(400, "an input's name is one plain file name: no '/', no control "
                           "character, neither '.' nor '..'")  # fmt: skip
    if name in RESERVED:
        raise InputRefused(400, f"{name} is reserved in the work directory "
                           f"({', '.join(sorted(RESERVED))}); rename the file")  # fmt: skip
    return name


class Inputs:
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def close(self) -> None:
        self.catalogue.close()

    def no_path(self, exc: Exception) -> str:
        return str(exc).replace(str(self.catalogue.directory), "the catalogue")

    def refused(self, exc: CatalogueError) -> InputRefused:
        """The catalogue's refusal as an answer: what only a retry can fix is 503."""
        status = {NotCatalogued: 404, Damaged: 422, NameTaken: 409}.get(type(exc), 503)
        return InputRefused(status, self.no_path(exc))

    def add(self, user: str, name: str, data: bytes, sha256: str) -> Entry:
        """Keep ``data`` sent by ``user`` as ``name``; its entry (the same one when those
        bytes were sent before under that name)."""
        check_file_name(name)
        if user in ("", ".", "..") or "/" in user or not user.isprintable():
            raise InputRefused(403, "this token's user cannot name a catalogue directory")
        if len(data) > FILE_CAP:
            raise InputRefused(413, f"an input sent to the broker has at most {FILE_CAP} bytes")
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():  # before anything is kept
            raise InputRefused(400, f"the body's SHA-256 is {digest}, not the "
                               f"{sha256[:64]} announced")  # fmt: skip
        try:
            return self.catalogue.add_data(data, lambda d: staged_lfn(user, d, name), user)
        except CatalogueError as exc:
            raise self.refused(exc) from None

    def check_job(self, spec: JobSpec, owner: str) -> None:
        """Refuse a job that names a file of the submitting machine, another user's
        file, one the catalogue does not hold or holds over the cap, or two files that
        land on one name in the work directory."""
        local = local_files(spec)
        if local:
            key, name = local[0]
            raise InputRefused(400, f"{key} {name[:200]}: a file of the submitting machine; "
                               "`submit --broker` sends such files first, or name a file of "
                               "the broker's catalogue by LF:")  # fmt: skip
        placed: dict[str, str] = {}
        for key, lfn in named_files(spec):
            where = f"{key} LF:{lfn[:200]}"
            self.may_name(owner, lfn, where)
            base = posixpath.basename(lfn)
            try:
                check_file_name(base)
            except InputRefused as exc:
                raise InputRefused(400, f"{where}: {exc}") from None
            if base in placed:
                raise InputRefused(400, f"{where}: lands on {base} in the work directory, as "
                                   f"{placed[base]} does; rename one of them")  # fmt: skip
            placed[base] = where
            try:
                entry = self.catalogue.get(lfn)
            except NotCatalogued:
                raise InputRefused(400, f"{where}: not in the broker's catalogue; submit "
                                   "the local file with `submit --broker`, which sends "
                                   "it") from None  # fmt: skip
            except CatalogueError as exc:
                raise self.refused(exc) from None
            if entry.size > FILE_CAP:
                raise InputRefused(400, f"{where}: {entry.size} bytes, over the {FILE_CAP} a "
                                   "job's input may have through the broker; name large data "
                                   "in InputData")  # fmt: skip

    @staticmethod
    def may_name(owner: str, lfn: str, where: str) -> None:
        """A job names its owner's own files and the shared ones, never another user's
        (the same rule for every role: checked at submit and again at fetch)."""
        own = f"{LOCAL_ROOT}/{owner}/"
        if lfn.startswith(f"{LOCAL_ROOT}/") and not lfn.startswith(own):
            raise InputRefused(403, f"{where}: another user's file; a job names its owner's "
                               f"files ({own}...) or shared ones")  # fmt: skip

    def fetch(self, spec: JobSpec, job_id: int, owner: str, lfn: str) -> tuple[bytes, str]:
        """The bytes and SHA-256 of ``lfn``, which job ``job_id`` (``spec``, of
        ``owner``) names."""
        if lfn not in {name for _key, name in named_files(spec)}:
            raise InputRefused(403, f"job {job_id} names no input LF:{lfn[:200]}")
        self.may_name(owner, lfn, f"LF:{lfn[:200]}")
        try:
            entry, data = self.catalogue.read(lfn, FILE_CAP)
        except CatalogueError as exc:
            raise self.refused(exc) from None
        return data, entry.sha256
