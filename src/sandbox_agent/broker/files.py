"""The outputs and logs agents send the broker with their job tokens, kept per job and
attempt under the broker's home, for their owners to fetch.

Names come from the job (a payload chose them), so each is checked before it touches
the file system: relative, components of printable characters other than NUL and
"/", never "." or "..", under ``outputs/`` or ``logs/``. Only the broker writes here:
every directory on the way is one it made; a file is created once (O_EXCL, no link
followed) and never replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

FILE_CAP = 64 * 1024 * 1024  # bytes of one file sent to the broker
FILES_CAP = 10_000  # files of one attempt
# bytes of all of one attempt's files: the builtin policy's outputs.max_total (4 GiB) and
# room for its logs. The broker cannot see the pilot's policy; a pilot whose site allows
# more is refused past this (ERROR_SV), never 10,000 files of FILE_CAP (625 GiB).
ATTEMPT_CAP = 4 * 1024**3 + FILE_CAP
KINDS = ("outputs", "logs")
INDEX = "index.json"
RECORD = "audit.json"  # an attempt's signed audit record, beside its files


class FileRefused(ValueError):
    """A name, digest or file the broker will not keep: one line; ``status`` for HTTP."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_name(name: str) -> list[str]:
    """``name``'s components, or FileRefused saying what is wrong with it."""
    if not name or len(name) > 1024:
        raise FileRefused(400, "a file name has 1 to 1024 characters")
    parts = name.split("/")
    if parts[0] not in KINDS or len(parts) < 2:
        raise FileRefused(400, f"a file name starts with {' or '.join(k + '/' for k in KINDS)}")
    if len(parts) > 32:
        raise FileRefused(400, "a file name has at most 32 components")
    for part in parts:
        if part in ("", ".", "..") or len(part) > 255:
            raise FileRefused(400, "a file name is relative, its components neither empty, "
                              "'.' nor '..'")  # fmt: skip
        if not part.isprintable():
            raise FileRefused(400, "a file name holds a control character")
    return parts


class FileStore:
    def __init__(self, root: Path, attempt_cap: int = ATTEMPT_CAP) -> None:
        self.root = root
        self.attempt_cap = attempt_cap
        self._lock = threading.Lock()

    def attempt(self, job_id: int, resubmission: int) -> Path:
        return self.root / str(job_id) / str(resubmission)

    def put(self, job_id: int, resubmission: int, name: str, data: bytes,
            sha256: str) -> dict[str, Any]:  # fmt: skip
        parts = check_name(name)
        if len(data) > FILE_CAP:
            raise FileRefused(413, f"a file sent to the broker has at most {FILE_CAP} bytes")
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            raise FileRefused(400, f"the body's SHA-256 is {digest}, not the {sha256[:64]} "
                              "announced")  # fmt: skip
        where = self.attempt(job_id, resubmission)
        with self._lock:
            index = self._index(where)
            if name in index:
                raise FileRefused(409, f"{name} was sent already; files are never replaced")
            if len(index) >= FILES_CAP:
                raise FileRefused(409, f"an attempt keeps at most {FILES_CAP} files")
            held = sum(int(entry["size"]) for entry in index.values())
            if held + len(data) > self.attempt_cap:
                raise FileRefused(413, f"an attempt keeps at most {self.attempt_cap} bytes in all; "
                                  f"{held} are kept already")  # fmt: skip
            directory = where
            for part in ["files", *parts[:-1]]:
                directory = directory / part
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(directory / parts[-1], flags, 0o600)
            except FileExistsError:
                raise FileRefused(409, f"{name} clashes with a file sent already") from None
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            index[name] = {"name": name, "size": len(data), "sha256": digest}
            (where / INDEX).write_text(json.dumps(index, indent=1) + "\n")
        return index[name]

    def listing(self, job_id: int, resubmission: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._index(self.attempt(job_id, resubmission)).values())

    def get(self, job_id: int, resubmission: int, name: str) -> tuple[bytes, str]:
        parts = check_name(name)
        where = self.attempt(job_id, resubmission)
        with self._lock:
            entry = self._index(where).get(name)
        if entry is None:
            raise FileRefused(404, f"job {job_id} has no file {name} at the broker")
        fd = os.open(where.joinpath("files", *parts), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            return file.read(FILE_CAP + 1), str(entry["sha256"])

    def put_record(self, job_id: int, resubmission: int, data: bytes) -> None:
        """An attempt's audit record (checked by the caller), kept once: the same bytes
        again are done, other bytes are refused. Written whole under a temporary name,
        then linked into place (never replacing): a crash leaves no half record."""
        where = self.attempt(job_id, resubmission)
        with self._lock:
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = where / f".{RECORD}.{os.getpid()}.{threading.get_ident()}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o600)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                try:
                    os.link(temporary, where / RECORD)
                except FileExistsError:
                    if self.get_record(job_id, resubmission) != data:
                        raise FileRefused(409, f"job {job_id}.{resubmission} has an audit "
                                          "record already; records are never "
                                          "replaced") from None  # fmt: skip
            finally:
                temporary.unlink(missing_ok=True)

    def get_record(self, job_id: int, resubmission: int) -> bytes:
        path = self.attempt(job_id, resubmission) / RECORD
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileRefused(404, f"job {job_id}.{resubmission} has no audit record at the "
                              "broker") from None  # fmt: skip
        with os.fdopen(fd, "rb") as file:
            return file.read(FILE_CAP + 1)

    @staticmethod
    def _index(where: Path) -> dict[str, dict[str, Any]]:
        try:
            loaded: dict[str, dict[str, Any]] = json.loads((where / INDEX).read_text())
        except FileNotFoundError:
            return {}
        return loaded
