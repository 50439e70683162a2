"""The queue on PostgreSQL, for a site that runs several broker processes or hosts on
one queue: how connections are opened and pooled, how a transaction runs, how the
schema is made.

The store's SQL is the same on both databases (``?`` placeholders, turned into ``%s``
here); what differs is locking. SQLite takes the whole file's write lock at BEGIN
IMMEDIATE, so its transactions take turns. PostgreSQL locks rows: the store reads a job
it will change with FOR UPDATE, and matching takes WAITING jobs with FOR UPDATE SKIP
LOCKED, so transactions run at once, each on a connection of its own from a small pool,
and two matching at once take different jobs instead of waiting for each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

FOR_UPDATE = " FOR UPDATE"
SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
SCHEMA_LOCK = 0x5A6E7451  # advisory lock key: one process makes the schema at a time
POOL_SIZE = 8  # connections one store opens at most; more callers wait their turn


def is_dsn(text: str) -> bool:
    return text.startswith(("postgresql://", "postgres://"))


def shown(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "postgresql://(unreadable DSN)"
    host, port, name = parts.get("host", ""), parts.get("port", ""), parts.get("dbname", "")
    return f"postgresql://{host}{':' + str(port) if port else ''}/{name}"


class Session:
    """One connection inside one transaction: what the store's SQL runs on."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), params)

    def tables(self) -> set[str]:
        rows = self.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        return {row["tablename"] for row in rows}


class Database:
    """A pool of up to POOL_SIZE connections to ``dsn``, opened as needed."""

    def __init__(self, dsn: str, error: type[ValueError]) -> None:
        try:
            import psycopg
        except ImportError:
            raise error("a postgresql:// queue needs psycopg: "
                        "pip install 'sandbox-agent[postgres]'") from None  # fmt: skip
        self._psycopg = psycopg
        self.dsn = dsn
        self.error = error
        self.where = shown(dsn)
        self._idle: list[Any] = []
        self._open = 0
        self._closed = False
        self._turn = threading.Condition()
        self._give(self._connect())  # fail now, at open, if the server cannot be reached

    def _connect(self) -> Any:
        from psycopg.rows import dict_row

        try:
            conn = self._psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row,
                                         connect_timeout=10)  # fmt: skip
        except self._psycopg.Error as exc:
            raise self.error(f"cannot connect to {self.where}: {_line(exc)}") from None
        with self._turn:
            self._open += 1
        return conn

    def _take(self) -> Any:
        with self._turn:
            while not self._idle and self._open >= POOL_SIZE:
                self._turn.wait()
            if self._closed:
                raise self.error(f"{self.where}: this queue was closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give(self, conn: Any) -> None:
        with self._turn:
            if conn.closed or self._closed:  # broken (the server went away), or we close
                self._open -= 1
                conn.close()
            else:
                self._idle.append(conn)
            self._turn.notify()

    def close(self) -> None:
        with self._turn:
            self._closed = True
            for conn in self._idle:
                conn.close()
            self._open -= len(self._idle)
            self._idle.clear()
            self._turn.notify_all()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction on a pooled connection: committed at the end, rolled back on
        any exception; a database error becomes the store's one-line error."""
        conn = self._take()
        try:
            with conn.transaction():
                yield Session(conn)
        except self._psycopg.Error as exc:
            raise self.error(f"{self.where}: {_line(exc)}; check the database server "
                             "and retry") from None  # fmt: skip
        finally:
            self._give(conn)

    def setup(self, make: Callable[[Session], None]) -> None:
        """Run ``make`` (the schema) with the schema's advisory lock held: brokers that
        start together make it once."""
        with self.transaction() as session:
            session.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            make(session)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
