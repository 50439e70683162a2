"""What the queue and the catalogue share about their SQLite files: how one is opened
(WAL, full sync, a busy timeout) and how a transaction runs, with every sqlite3 error
turned into the caller's one-line error."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def busy_fix(exc: sqlite3.Error, noun: str) -> str:
    if "locked" in str(exc) or "busy" in str(exc):
        return f"another process held the {noun} too long; retry, or find what holds it"
    return "check the file system and the database file"


def connect(
    path: Path,
    busy_timeout: float,
    *,
    noun: str,
    kind: str,
    error: type[ValueError],
    setup: Callable[[sqlite3.Connection], None],
) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode with full sync, after ``setup`` (the
    schema) ran; ``error`` with the fix otherwise. ``noun`` names the store to a
    person ("queue"), ``kind`` its file ("task-queue database")."""
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                           check_same_thread=False)  # fmt: skip
    conn.row_factory = sqlite3.Row  # rows by column name
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        # WAL: readers never block the writer; FULL sync: a committed change survives
        # power loss, so two agents never both believe they hold one job.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")
        if str(mode).lower() != "wal":
            raise error(f"{path}: SQLite refused WAL mode (got {mode}); "
                        f"put the {noun} on a local file system")  # fmt: skip
        setup(conn)
    except sqlite3.OperationalError as exc:  # locked, unreadable, disk I/O
        conn.close()
        raise error(f"cannot open {path}: {exc}; {busy_fix(exc, noun)}") from None
    except sqlite3.DatabaseError as exc:  # not a database, corrupt
        conn.close()
        raise error(f"{path} is not a usable {kind} ({exc}); move the file away or point "
                    "--home at another directory") from None  # fmt: skip
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(
    conn: sqlite3.Connection,
    lock: threading.Lock,
    path: Path,
    *,
    noun: str,
    error: type[ValueError],
    begin: str = "BEGIN IMMEDIATE",
) -> Iterator[sqlite3.Connection]:
    """One transaction under ``lock`` (calls from threads are serialised), committed at
    the end or rolled back on any exception."""
    with lock:
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            raise error(f"{path}: {exc}; {busy_fix(exc, noun)}") from None
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise error(f"{path}: {exc}; {busy_fix(exc, noun)}") from None
            raise
