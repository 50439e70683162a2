"""The embedded default's file catalogue: logical file names (LFNs) mapped to content.

Objects are stored by content, ``objects/<sha256 hex>``, and an SQLite index
(``catalogue.sqlite3``, WAL) maps each LFN to its digest, size, owner and time added.
An LFN names one content for good: adding different bytes under a name already taken
is refused, adding the same bytes again is a no-op.

Every file the catalogue writes is 0600 and every directory 0700; objects are written
under a temporary name and renamed into place, never through a symlink.  ``place``
hashes an object while it copies it out and removes the copy if the digest is not the
indexed one, so a corrupted object never reaches a job.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from sandbox_agent import sqlitedb
from sandbox_agent.printable import clipped

DB_NAME = "catalogue.sqlite3"
OBJECTS = "objects"
MAX_FILE = 1 << 30  # bytes: one GiB per file unless the Catalogue is told otherwise
MAX_LFN = 1024  # characters
# Where files staged at submit go (agent.staging, and a broker's inputs): their names
# change whenever their content does, so a job always gets the bytes it was sent with.
LOCAL_ROOT = "/local"
DIGEST_CHARS = 16
# Names the work directory already holds: the job token and the job's own streams.
RESERVED = frozenset({".jalien-token", "stdout", "stderr"})
_CHUNK = 1 << 20
_TMP_PREFIX = ".tmp-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    lfn TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    owner TEXT NOT NULL,
    added REAL NOT NULL
)
"""


class CatalogueError(ValueError):
    """A catalogue operation refused for a reason the caller can fix (one line)."""


class NotCatalogued(CatalogueError):
    """The catalogue has no entry of that name."""


class Damaged(CatalogueError):
    """An entry's stored object is missing, not a regular file, or not its bytes."""


class NameTaken(CatalogueError):
    """The name is the catalogue's already, for other content."""


@dataclass(frozen=True)
class Entry:
    lfn: str
    sha256: str
    size: int
    owner: str
    added: float


def staged_lfn(owner: str, sha256: str, basename: str) -> str:
    """The catalogue name a staged file gets."""
    return f"{LOCAL_ROOT}/{owner}/{sha256[:DIGEST_CHARS]}/{basename}"


def check_lfn(lfn: str) -> str:
    """``lfn`` if it is a valid logical file name, else a CatalogueError naming the fix:
    absolute, printable, at most MAX_LFN characters, no empty, '.' or '..' component."""
    shown = _clip(lfn)
    if not lfn.startswith("/"):
        raise CatalogueError(f"LFN '{shown}' must start with '/', like /local/user/file.txt")
    if len(lfn) > MAX_LFN:
        raise CatalogueError(f"LFN '{shown}' is {len(lfn)} characters long; use at most {MAX_LFN}")
    if "\x00" in lfn or not lfn.isprintable():
        raise CatalogueError(
            f"LFN '{shown}' contains a control character; use printable characters only"
        )
    for part in lfn[1:].split("/"):
        if part in ("", ".", ".."):
            what = "an empty component ('//' or a trailing '/')" if not part else f"'{part}'"
            raise CatalogueError(
                f"LFN '{shown}' contains {what}; name the file by a plain path like /dir/file"
            )
    return lfn


def _clip(text: str, width: int = 80) -> str:
    """A name as a message quotes it: one printable line of at most ``width``."""
    return clipped(text, width)


def _check_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\x00" in name or not name.isprintable():
        raise CatalogueError(
            f"file name '{_clip(name)}' is not a plain file name; give a name without '/'"
        )


def _not_missing(lfn: str) -> CatalogueError:
    return NotCatalogued(
        f"LF:{lfn} is not in the catalogue; add it with: sandbox-agent catalogue add FILE {lfn}"
    )


class Catalogue:
    """The catalogue in ``directory`` (created 0700 on first use)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_file: int = MAX_FILE,
        busy_timeout: float = 30.0,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.max_file = max_file
        self._lock = threading.Lock()
        self._dir_fd = -1
        self._objects_fd = -1
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir_fd = os.open(self.directory, _DIR_FLAGS)
            with suppress(FileExistsError):
                os.mkdir(OBJECTS, 0o700, dir_fd=self._dir_fd)
            self._objects_fd = os.open(OBJECTS, _DIR_FLAGS, dir_fd=self._dir_fd)
            fd = os.open(
                DB_NAME,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self._dir_fd,
            )
            os.close(fd)
        except OSError as exc:
            self._close_fds()
            raise CatalogueError(
                f"cannot create the catalogue in {self.directory}: {exc.strerror}; check it is "
                "a directory (not a symlink) writable by this user"
            ) from None
        self._conn = self._open(busy_timeout)

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        try:
            return sqlitedb.connect(self.path, busy_timeout, noun="catalogue",
                                    kind="catalogue database", error=CatalogueError,
                                    setup=self._schema)  # fmt: skip
        except CatalogueError:
            self._close_fds()
            raise

    def _schema(self, conn: sqlite3.Connection) -> None:
        conn.execute(_SCHEMA)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(entries)")]
        if columns != ["lfn", "sha256", "size", "owner", "added"]:
            raise CatalogueError(
                f"{self.path} has an entries table that is not a catalogue's; "
                "move the file away or point --home at another directory"
            )

    def _close_fds(self) -> None:
        for fd in (self._objects_fd, self._dir_fd):
            if fd >= 0:
                os.close(fd)
        self._objects_fd = self._dir_fd = -1

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._close_fds()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _txn(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        with sqlitedb.transaction(self._conn, self._lock, self.path, noun="catalogue",
                                  error=CatalogueError, begin=begin) as conn:  # fmt: skip
            yield conn

    @staticmethod
    def _entry(row: sqlite3.Row) -> Entry:
        return Entry(row["lfn"], row["sha256"], row["size"], row["owner"], row["added"])

    # -- reading ---------------------------------------------------------------

    def get(self, lfn: str) -> Entry:
        check_lfn(lfn)
        with self._txn("BEGIN") as conn:
            row = conn.execute("SELECT * FROM entries WHERE lfn = ?", (lfn,)).fetchone()
        if row is None:
            raise _not_missing(lfn)
        return self._entry(row)

    def entries(self, prefix: str = "/") -> list[Entry]:
        """The entries whose LFN starts with ``prefix`` (a plain string prefix), by LFN."""
        if not prefix.startswith("/"):
            raise CatalogueError(f"prefix '{_clip(prefix)}' must start with '/', like /local/")
        with self._txn("BEGIN") as conn:
            rows = conn.execute(
                "SELECT * FROM entries WHERE substr(lfn, 1, ?) = ? ORDER BY lfn",
                (len(prefix), prefix),
            ).fetchall()
        return [self._entry(r) for r in rows]

    # -- adding ----------------------------------------------------------------

    def add_file(self, path: Path, lfn: str, owner: str) -> Entry:
        """Store the regular file ``path`` under ``lfn``; the entry (the existing one when
        the same content is already there under that name)."""
        check_lfn(lfn)
        return self.add_named(path, lambda _digest: lfn, owner)

    def add_named(self, path: Path, name: Callable[[str], str], owner: str) -> Entry:
        """Like ``add_file``, under the LFN ``name(sha256)``: a name made from the content
        that was read, never from a second read that could see other bytes. ``path`` is
        opened without following a symlink as its last component; a path someone else
        named goes through policy.reach first, and then ``add_opened``."""
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
            src = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
                          | os.O_NOCTTY)  # fmt: skip
        except OSError as exc:
            why = "a symlink; name the file itself" if exc.errno == errno.ELOOP else exc.strerror
            raise CatalogueError(f"{path}: cannot read the file ({why})") from None
        try:
            return self.add_opened(src, str(path), name, owner)
        finally:
            os.close(src)

    def add_opened(self, src: int, shown: str, name: Callable[[str], str], owner: str) -> Entry:
        """Like ``add_named``, from the descriptor ``src`` of a file already opened (and
        judged) by the caller; ``shown`` names it in messages."""
        if not owner or "\x00" in owner:
            raise CatalogueError(f"adding {shown}: the owner is empty; name the user adding it")
        return self._register(*self._copy_in(src, shown), name, owner, shown)

    def add_data(self, data: bytes, name: Callable[[str], str], owner: str) -> Entry:
        """Like ``add_named``, for bytes already in memory (a file sent to the broker)."""
        if not owner or "\x00" in owner:
            raise CatalogueError("adding a file: the owner is empty; name the user adding it")
        if len(data) > self.max_file:
            raise CatalogueError(self._too_big(Path("the file"), len(data)))
        tmp = f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=self._objects_fd)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            _unlink(tmp, self._objects_fd)
            raise CatalogueError(
                f"cannot write into {self.directory / OBJECTS}: {exc.strerror}; "
                "check the catalogue directory is writable"
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        return self._register(tmp, digest, len(data), name, owner, "the file")

    def _register(self, made: str, digest: str, size: int, name: Callable[[str], str],
                  owner: str, path: str) -> Entry:  # fmt: skip
        """Index the temporary object ``made`` under ``name(digest)`` (renamed to its
        digest, or removed when the name is refused)."""
        tmp: str | None = made
        try:
            lfn = check_lfn(name(digest))
            with self._txn() as conn:
                row = conn.execute("SELECT * FROM entries WHERE lfn = ?", (lfn,)).fetchone()
                if row is not None and row["sha256"] != digest:
                    raise NameTaken(
                        f"LF:{lfn} is already in the catalogue with other content (sha256 "
                        f"{row['sha256'][:16]}..., {path} is {digest[:16]}...); "
                        "add the file under another LFN"
                    )
                # Renamed even when the object exists: same bytes, and a damaged copy
                # is replaced by a good one.
                try:
                    objects = self._objects_fd
                    os.rename(made, digest, src_dir_fd=objects, dst_dir_fd=objects)
                    tmp = None
                    os.fsync(self._objects_fd)
                except OSError as exc:
                    raise CatalogueError(
                        f"cannot store {path} in {self.directory / OBJECTS}: {exc.strerror}; "
                        "check the catalogue directory is writable"
                    ) from None
                if row is not None:
                    return self._entry(row)
                entry = Entry(lfn, digest, size, owner, time.time())
                conn.execute(
                    "INSERT INTO entries (lfn, sha256, size, owner, added) VALUES (?, ?, ?, ?, ?)",
                    (entry.lfn, entry.sha256, entry.size, entry.owner, entry.added),
                )
                return entry
        finally:
            if tmp is not None:
                _unlink(tmp, self._objects_fd)

    def _copy_in(self, src: int, path: str) -> tuple[str, str, int]:
        """Copy the file open on ``src`` to a temporary object; its name, sha256 and
        size. ``path`` names it in messages."""
        info = os.fstat(src)
        if not stat.S_ISREG(info.st_mode):
            raise CatalogueError(
                f"{path} is not a regular file; only regular files can be catalogued"
            )
        if info.st_size > self.max_file:
            raise CatalogueError(self._too_big(path, info.st_size))
        os.set_blocking(src, True)
        tmp = f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            dst = os.open(tmp, flags, 0o600, dir_fd=self._objects_fd)
        except OSError as exc:
            raise CatalogueError(
                f"cannot write into {self.directory / OBJECTS}: {exc.strerror}; "
                "check the catalogue directory is writable"
            ) from None
        try:
            digest, size = _copy(src, dst, self.max_file)
            os.fsync(dst)
        except OSError as exc:
            _unlink(tmp, self._objects_fd)
            raise CatalogueError(f"{path}: cannot copy it ({exc.strerror})") from None
        except BaseException:
            _unlink(tmp, self._objects_fd)
            raise
        finally:
            os.close(dst)
        if size > self.max_file:
            _unlink(tmp, self._objects_fd)
            raise CatalogueError(self._too_big(path, size))
        return tmp, digest, size

    def _too_big(self, path: Path | str, size: int) -> str:
        return (
            f"{path} is {size} bytes, above the catalogue's limit of {self.max_file} bytes; "
            "put large data on grid storage and name it in InputData"
        )

    # -- placing ---------------------------------------------------------------

    def place(self, lfn: str, directory: Path, name: str, mode: int) -> Entry:
        """Copy ``lfn``'s content into a new file ``directory/name`` with ``mode``,
        checking the digest on the way: a mismatch removes the copy and raises."""
        entry = self.get(lfn)
        _check_name(name)
        if not 0 <= mode <= 0o777:
            raise CatalogueError(f"mode {mode:#o} for {name}: give permission bits within 0o777")
        try:
            dir_fd = os.open(directory, _DIR_FLAGS)
        except OSError as exc:
            raise CatalogueError(
                f"cannot place LF:{lfn} in {directory}: {exc.strerror} (it must be a "
                "directory, not a symlink)"
            ) from None
        try:
            self._place_into(entry, dir_fd, directory, name, mode)
        finally:
            os.close(dir_fd)
        return entry

    def read(self, lfn: str, limit: int) -> tuple[Entry, bytes]:
        """``lfn``'s entry and content, checked against its digest (a damaged object
        raises Damaged): what the broker sends a job for its inputs. An entry over
        ``limit`` bytes is refused unread."""
        entry = self.get(lfn)
        if entry.size > limit:
            raise CatalogueError(f"LF:{lfn} is {entry.size} bytes, over the {limit} this "
                                 "reader takes")  # fmt: skip
        src = self._open_object(entry)
        data = bytearray(entry.size + 1)  # one byte past the size: a grown object fails
        got = 0
        try:
            with memoryview(data) as view:
                while got < len(data):
                    count = os.readv(src, [view[got:]])
                    if not count:
                        break
                    got += count
        except OSError as exc:
            raise CatalogueError(f"LF:{lfn}: cannot read its object ({exc.strerror})") from None
        finally:
            os.close(src)
        del data[got:]
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256 or got != entry.size:
            raise Damaged(
                f"LF:{lfn}: its stored object does not match the catalogue (sha256 "
                f"{digest[:16]}... instead of {entry.sha256[:16]}...); add the file again"
            )
        return entry, bytes(data)

    def _open_object(self, entry: Entry) -> int:
        """A descriptor of ``entry``'s object, a regular file (never through a link)."""
        lfn = entry.lfn
        try:
            src = os.open(
                entry.sha256,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=self._objects_fd,
            )
        except OSError as exc:
            raise Damaged(
                f"LF:{lfn}: its object {OBJECTS}/{entry.sha256} cannot be read "
                f"({exc.strerror}); add the file again with: sandbox-agent catalogue add FILE {lfn}"
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(src).st_mode):
                raise Damaged(
                    f"LF:{lfn}: its object {OBJECTS}/{entry.sha256} is not a regular file; "
                    "remove it and add the file again"
                )
            os.set_blocking(src, True)
        except BaseException:
            os.close(src)
            raise
        return src

    def _place_into(self, entry: Entry, dir_fd: int, directory: Path, name: str, mode: int) -> None:
        lfn = entry.lfn
        src = self._open_object(entry)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                dst = os.open(name, flags, 0o600, dir_fd=dir_fd)
            except OSError as exc:
                raise CatalogueError(
                    f"cannot place LF:{lfn} as {directory / name}: {exc.strerror}; "
                    "the target must not exist yet"
                ) from None
            try:
                # Read at most one byte past the indexed size: a grown object fails below.
                digest, size = _copy(src, dst, entry.size)
                if digest != entry.sha256 or size != entry.size:
                    raise Damaged(
                        f"LF:{lfn}: its stored object does not match the catalogue (sha256 "
                        f"{digest[:16]}... instead of {entry.sha256[:16]}...); the copy was "
                        f"removed; add the file again with: sandbox-agent catalogue add FILE {lfn}"
                    )
                os.fchmod(dst, mode)
            except OSError as exc:
                _unlink(name, dir_fd)
                raise CatalogueError(
                    f"cannot place LF:{lfn} as {directory / name}: {exc.strerror}"
                ) from None
            except BaseException:
                _unlink(name, dir_fd)
                raise
            finally:
                os.close(dst)
        finally:
            os.close(src)


def _copy(src: int, dst: int, limit: int) -> tuple[str, int]:
    """Copy ``src`` to ``dst``, at most ``limit`` + 1 bytes; the sha256 and byte count."""
    digest = hashlib.sha256()
    size = 0
    while size <= limit:
        chunk = os.read(src, min(_CHUNK, limit + 1 - size))
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
    return digest.hexdigest(), size


def _unlink(name: str, dir_fd: int) -> None:
    with suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


__all__ = ["MAX_FILE", "Catalogue", "CatalogueError", "Damaged", "Entry", "NameTaken",
           "NotCatalogued", "check_lfn"]  # fmt: skip
