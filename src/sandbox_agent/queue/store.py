"""The embedded task queue: jobs, leases and state history in one SQLite file.

Every change is one IMMEDIATE transaction: it takes SQLite's write lock before it
reads, so a read-check-write (match, heartbeat, set_state) cannot interleave with
another agent's, whether that agent is a thread or another process.  WAL mode lets
readers (``jobs``, ``status``) go on while an agent writes.

A lease is held while ``now <= lease_until`` by the (agent, resubmission) pair that
matched the job; every agent call names both, so a report from an attempt the queue
has already given up on (its lease expired, the job was killed or handed back) is
refused instead of overwriting the newer attempt.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_agent import sqlitedb
from sandbox_agent.queue import postgres, states
from sandbox_agent.queue.states import State, TransitionError

DB_NAME = "queue.sqlite3"
SCHEMA_VERSION = 1
_BATCH = 64  # candidates fetched per round trip while matching
MAX_NODE_FAULTS = 3  # node faults after which a job ends FAILED (Store.max_faults)
FAULT_MARK = "node fault"  # how the history marks one, counted by _return

_STATE_LIST = ", ".join(f"'{s.value}'" for s in State)  # fixed enum values, not input
_LEASED_LIST = ", ".join(f"'{s.value}'" for s in sorted(states.LEASED))


def schema(*, postgres: bool = False) -> str:
    """The queue's tables, in SQLite's or PostgreSQL's words for ids and times."""
    # AUTOINCREMENT (SQLite) and an identity column (PostgreSQL): an id is never reused
    serial = ("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY" if postgres
              else "INTEGER PRIMARY KEY AUTOINCREMENT")  # fmt: skip
    row_id = ("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY" if postgres
              else "INTEGER PRIMARY KEY")  # fmt: skip
    real = "DOUBLE PRECISION" if postgres else "REAL"
    return f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE jobs (
    id {serial},
    jdl_text TEXT NOT NULL,
    owner TEXT NOT NULL,
    priority INTEGER NOT NULL,
    requirements TEXT,
    state TEXT NOT NULL CHECK (state IN ({_STATE_LIST})),
    resubmission INTEGER NOT NULL DEFAULT 0,
    agent TEXT,
    lease_until {real},
    submitted {real} NOT NULL,
    exit_code INTEGER,
    -- a holder and a deadline exactly when the state is one an agent holds
    CHECK ((agent IS NULL) = (lease_until IS NULL)),
    CHECK ((agent IS NOT NULL) = (state IN ({_LEASED_LIST})))
);
CREATE INDEX jobs_queue ON jobs (state, priority DESC, submitted, id);
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE lease_until IS NOT NULL;
CREATE TABLE history (
    id {row_id},
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    time {real} NOT NULL,
    state TEXT NOT NULL,
    resubmission INTEGER NOT NULL,
    agent TEXT,
    detail TEXT NOT NULL,
    exit_code INTEGER
);
CREATE INDEX history_job ON history (job_id, id);
"""


class StoreError(ValueError):
    """A queue operation refused for a reason the caller can fix (one line)."""


class NoSuchJob(StoreError):
    """The queue has no job with that id (not: the queue could not be read)."""


class LeaseError(StoreError):
    """The caller no longer holds the job's lease: stop working on that job."""


@dataclass(frozen=True)
class Job:
    id: int
    jdl_text: str
    owner: str
    priority: int
    requirements: str | None
    state: State
    resubmission: int
    agent: str | None
    lease_until: float | None
    submitted: float
    exit_code: int | None


@dataclass(frozen=True)
class StateChange:
    job_id: int
    time: float
    state: State
    resubmission: int
    agent: str | None
    detail: str
    exit_code: int | None


def _fields(row: Any) -> dict[str, Any]:
    """A row (sqlite3.Row, or psycopg's dict) as keyword arguments: the column names
    are the dataclass fields."""
    fields = {key: row[key] for key in row.keys()}  # noqa: SIM118 (a sqlite3.Row iterates values)
    fields["state"] = State(fields["state"])
    return fields


def _job(row: Any) -> Job:
    return Job(**_fields(row))


class Store:
    """The queue in ``directory/queue.sqlite3``, created (0600) on first open, or in the
    PostgreSQL database ``dsn`` (``postgresql://...``), its tables made on first use.

    One Store may be shared by threads: on SQLite their calls take turns; on PostgreSQL
    they run at once on pooled connections. A process that forks must open its own
    Store in the child.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        dsn: str | None = None,
        busy_timeout: float = 30.0,
        max_resubmissions: int | None = None,
        max_faults: int = MAX_NODE_FAULTS,
    ) -> None:
        if (directory is None) == (dsn is None):
            raise ValueError("give the queue's directory or a postgresql:// DSN, not both")
        # None: a returned job waits again however often its agents vanish.  A number:
        # past it the job ends FAILED, so one job that takes its node down cannot
        # take every pilot down in turn.
        self.max_resubmissions = max_resubmissions
        # Node faults (a lease that ran out, a job handed back because its node could
        # not run it) are counted apart: a job whose every attempt stops its pilot (a
        # payload that fills the disk, a poison input) ends FAILED after this many, with
        # the reason, instead of taking pilot after pilot down for ever.
        self.max_faults = max_faults
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._pg: postgres.Database | None = None
        self._lock_row = self._skip_locked = ""  # SQLite locks the file, not rows
        if dsn is not None:
            self.path = None
            self._pg = postgres.Database(dsn, StoreError)
            self.where = self._pg.where
            self._lock_row, self._skip_locked = postgres.FOR_UPDATE, postgres.SKIP_LOCKED
            self._pg.setup(lambda session: self._make_or_check(session, session.tables()))
        else:
            self.path = Path(directory or ".") / DB_NAME
            self.where = str(self.path)
            self._conn = self._open(busy_timeout)

    # -- opening ---------------------------------------------------------------

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        assert self.path is not None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Create the file ourselves so it is 0600 (SQLite gives its WAL and shm
            # files the same mode): JDLs may name private data.  O_NOFOLLOW: never
            # write through a planted symlink.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.close(fd)
        except OSError as exc:
            raise StoreError(
                f"cannot create the queue database {self.path}: {exc.strerror}; "
                "check the directory exists and is writable by this user"
            ) from None
        return sqlitedb.connect(self.path, busy_timeout, noun="queue", kind="task-queue database",
                                error=StoreError, setup=self._create_or_check_schema)  # fmt: skip

    def _create_or_check_schema(self, conn: sqlite3.Connection) -> None:
        # IMMEDIATE: when eight agents open a new queue at once, one creates the
        # schema and the others then find it.
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            self._make_or_check(conn, tables - {"sqlite_sequence"})
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _make_or_check(self, conn: Any, tables: set[str]) -> None:
        """Make the tables in an empty database; check the version of existing ones."""
        if "schema_version" not in tables:
            if tables:
                raise StoreError(
                    f"{self.where} is a database but not a task queue (no schema_version "
                    "table); move it away or use another --home"
                )
            # Statement by statement: executescript would COMMIT our BEGIN first.
            for statement in schema(postgres=self._pg is not None).split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            return
        row = conn.execute("SELECT max(version) AS version FROM schema_version").fetchone()
        found = row["version"] if row else None
        if found != SCHEMA_VERSION:
            newer = isinstance(found, int) and found > SCHEMA_VERSION
            fix = ("upgrade sandbox-agent to open it" if newer
                   else "no migration exists; move it away or use another --home")  # fmt: skip
            raise StoreError(
                f"{self.where} has queue schema version {found}, this sandbox-agent "
                f"reads version {SCHEMA_VERSION}; {fix}"
            )

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            return
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------

    @contextmanager
    def _txn(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[Any]:
        """One transaction (IMMEDIATE unless told); sqlite3 errors become StoreErrors.

        Reads use a deferred BEGIN: in WAL mode they see one consistent snapshot
        without taking the write lock agents are waiting for.
        """
        if os.getpid() != self._pid:
            raise StoreError(
                f"{self.where}: this Store was opened in process {self._pid} and used "
                f"in process {os.getpid()} after a fork; open a new Store in the child"
            )
        if self._pg is not None:  # row locks: transactions run at once, pooled connections
            with self._pg.transaction() as session:
                yield session
            return
        assert self.path is not None
        with sqlitedb.transaction(self._conn, self._lock, self.path, noun="queue",
                                  error=StoreError, begin=begin) as conn:  # fmt: skip
            yield conn

    def _read(self) -> contextlib.AbstractContextManager[Any]:
        return self._txn("BEGIN")

    def _row(self, conn: Any, job_id: int, *, lock: bool = False) -> Job:
        """The job's row; ``lock``: held until the transaction ends (PostgreSQL: other
        brokers wait to change it; SQLite holds the whole file already)."""
        locking = self._lock_row if lock else ""  # a fixed clause of ours, never input
        row = conn.execute("SELECT * FROM jobs WHERE id = ?" + locking,  # noqa: S608
                           (job_id,)).fetchone()  # fmt: skip
        if row is None:
            raise NoSuchJob(
                f"job {job_id}: no such job in {self.where}; check the id (`jobs` lists them)"
            )
        return _job(row)

    @staticmethod
    def _record(
        conn: Any,
        job: Job,
        state: State,
        now: float,
        detail: str,
        *,
        resubmission: int | None = None,
        agent: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO history (job_id, time, state, resubmission, agent, detail, exit_code)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                job.id,
                now,
                state.value,
                job.resubmission if resubmission is None else resubmission,
                agent,
                detail,
                exit_code,
            ),
        )

    # -- users -----------------------------------------------------------------

    def submit(
        self,
        jdl_text: str,
        *,
        owner: str,
        priority: int = 0,
        requirements: str | None = None,
        now: float | None = None,
    ) -> int:
        """Queue a job as WAITING and return its id."""
        if not owner:
            raise StoreError("submit: the owner is empty; name the submitting user")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise StoreError(f"submit: priority {priority!r} is not an integer")
        now = _now(now)
        with self._txn() as conn:
            job_id: int = conn.execute(
                "INSERT INTO jobs (jdl_text, owner, priority, requirements, state, submitted)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (jdl_text, owner, priority, requirements, State.WAITING.value, now),
            ).fetchone()["id"]
            conn.execute(
                "INSERT INTO history (job_id, time, state, resubmission, agent, detail)"
                " VALUES (?, ?, ?, 0, NULL, ?)",
                (job_id, now, State.WAITING.value, f"submitted by {owner}"),
            )
        return job_id

    def kill(self, job_id: int, reason: str, *, now: float | None = None) -> None:
        """Move a job to KILLED from any non-final state, whoever holds it.

        The holder learns it at its next heartbeat (refused) or report (LeaseError).
        """
        now = _now(now)
        with self._txn() as conn:
            job = self._row(conn, job_id, lock=True)
            _check(job, State.KILLED)
            conn.execute(
                "UPDATE jobs SET state = ?, agent = NULL, lease_until = NULL WHERE id = ?",
                (State.KILLED.value, job_id),
            )
            self._record(conn, job, State.KILLED, now, f"killed: {reason}", agent=job.agent)

    def get(self, job_id: int) -> Job:
        with self._read() as conn:
            return self._row(conn, job_id)

    def jobs(self, state: str | None = None) -> list[Job]:
        """All jobs, or those in ``state``, oldest first."""
        with self._read() as conn:
            if state is None:
                rows = conn.execute("SELECT * FROM jobs ORDER BY id")
            else:
                rows = conn.execute(
                    "SELECT * FROM jobs WHERE state = ? ORDER BY id", (states.parse(state),)
                )
            return [_job(r) for r in rows]

    def history(self, job_id: int) -> list[StateChange]:
        with self._read() as conn:
            self._row(conn, job_id)  # an unknown id is an error, not an empty history
            rows = conn.execute(
                "SELECT job_id, time, state, resubmission, agent, detail, exit_code"
                " FROM history WHERE job_id = ? ORDER BY id",
                (job_id,),
            )
            return [StateChange(**_fields(r)) for r in rows]

    # -- agents ----------------------------------------------------------------

    def match(
        self,
        agent: str,
        slot_ok: Callable[[Job], bool],
        lease_seconds: float,
        now: float | None = None,
    ) -> Job | None:
        """Lease the best WAITING job ``slot_ok`` accepts to ``agent``, or None.

        Best: priority descending, then submission time, then id.  Expired leases are
        returned first, in the same transaction, so a queue nobody reaps still gives
        back the jobs of vanished agents.  ``slot_ok`` runs while the write lock is
        held: keep it to evaluating Requirements.
        """
        _check_agent(agent)
        lease = _lease(lease_seconds)
        now = _now(now)
        with self._txn() as conn:
            self._expire(conn, now)
            chosen = None
            for offset in itertools.count(0, _BATCH):
                # a batch at a time, locked (PostgreSQL: rows another broker is
                # matching are skipped, not waited for; ours stay ours till commit)
                batch = conn.execute(
                    "SELECT * FROM jobs WHERE state = ?"  # noqa: S608 (fixed clauses)
                    " ORDER BY priority DESC, submitted, id LIMIT ? OFFSET ?"
                    + self._skip_locked,
                    (State.WAITING.value, _BATCH, offset)).fetchall()  # fmt: skip
                chosen = next((j for j in map(_job, batch) if slot_ok(j)), None)
                if chosen is not None or len(batch) < _BATCH:
                    break
            if chosen is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = ?, agent = ?, lease_until = ?"
                " WHERE id = ? AND state = ?",
                (State.ASSIGNED.value, agent, now + lease, chosen.id, State.WAITING.value),
            )
            self._record(
                conn, chosen, State.ASSIGNED, now, f"matched by agent {agent}", agent=agent
            )
            return self._row(conn, chosen.id)

    def heartbeat(
        self,
        job_id: int,
        agent: str,
        resubmission: int,
        lease_seconds: float,
        now: float | None = None,
    ) -> bool:
        """Extend the lease to now+lease_seconds; False if the caller no longer holds it.

        False means stop: the lease ran out, or the job was killed or handed back.
        """
        lease = _lease(lease_seconds)
        now = _now(now)
        with self._txn() as conn:
            job = self._row(conn, job_id, lock=True)
            if not _holds(job, agent, resubmission, now):
                return False
            conn.execute("UPDATE jobs SET lease_until = ? WHERE id = ?", (now + lease, job_id))
            return True

    def set_state(
        self,
        job_id: int,
        agent: str,
        resubmission: int,
        state: str,
        *,
        detail: str = "",
        exit_code: int | None = None,
        now: float | None = None,
    ) -> None:
        """Record the holder's state report; a final state releases the lease."""
        target = states.parse(state)
        now = _now(now)
        with self._txn() as conn:
            job = self._row(conn, job_id, lock=True)
            _require_lease(job, agent, resubmission, now)
            _check(job, target)
            final = target in states.FINAL
            conn.execute(
                "UPDATE jobs SET state = ?, exit_code = coalesce(?, exit_code),"
                " agent = CASE WHEN ? THEN NULL ELSE agent END,"
                " lease_until = CASE WHEN ? THEN NULL ELSE lease_until END"
                " WHERE id = ?",
                (target.value, exit_code, final, final, job_id),
            )
            self._record(conn, job, target, now, detail, agent=agent, exit_code=exit_code)

    def release(
        self, job_id: int, agent: str, resubmission: int, reason: str, now: float | None = None,
        *, fault: bool = True,
    ) -> None:
        """Hand a job back before its lease runs out: its node could not run it
        (``fault``, counted as a lease expiry is), or the agent is stopping.

        Same effect as a lease expiry: WAITING, resubmission bumped.  Refused while
        SAVING, where the holder must report how saving ended instead.
        """
        now = _now(now)
        with self._txn() as conn:
            job = self._row(conn, job_id, lock=True)
            _require_lease(job, agent, resubmission, now)
            if states.LEASE_RETURN[job.state] is not State.WAITING:
                raise TransitionError(
                    f"job {job_id}: cannot hand back a job in {job.state}; "
                    "report its final state instead"
                )
            self._return(conn, job, now, f"handed back by agent {agent}: {reason}", fault=fault)

    def expire_leases(self, now: float | None = None) -> list[int]:
        """Return the jobs whose lease ran out (see states.LEASE_RETURN); their ids."""
        now = _now(now)
        with self._txn() as conn:
            return self._expire(conn, now)

    def _expire(self, conn: Any, now: float) -> list[int]:
        rows = conn.execute(
            "SELECT * FROM jobs WHERE lease_until < ? ORDER BY id"  # noqa: S608 (fixed clause)
            + self._skip_locked,
            (now,),
        ).fetchall()
        for job in map(_job, rows):
            self._return(conn, job, now, f"lease expired (agent {job.agent})", fault=True)
        return [row["id"] for row in rows]

    def _return(self, conn: Any, job: Job, now: float, why: str, *, fault: bool) -> None:
        target = states.LEASE_RETURN[job.state]
        resubmission = job.resubmission
        before = 0  # node faults this job met before this one
        if fault:
            before = int(conn.execute(
                "SELECT count(*) AS faults FROM history WHERE job_id = ? AND detail LIKE ?",
                (job.id, FAULT_MARK + " %"),
            ).fetchone()["faults"])
            why = f"{FAULT_MARK} {before + 1} of {self.max_faults}: {why}"
        if target is State.WAITING:
            resubmission += 1
            limit = self.max_resubmissions
            if fault and before + 1 >= self.max_faults:
                target, resubmission = State.FAILED, job.resubmission
                why += (f"; {self.max_faults} of its attempts ended in a node fault, so it is "
                        "not handed out again: look at what it does to its nodes (or at the "
                        "nodes), then resubmit it")  # fmt: skip
            elif limit is not None and resubmission > limit:
                target, resubmission = State.FAILED, job.resubmission
                why += f"; resubmitted {limit} times already, giving up"
        elif target is State.ERROR_SV:
            why += "; it was saving outputs, so it is not rerun: resubmit it if needed"
        conn.execute(
            "UPDATE jobs SET state = ?, resubmission = ?, agent = NULL, lease_until = NULL"
            " WHERE id = ?",
            (target.value, resubmission, job.id),
        )
        self._record(conn, job, target, now, why, resubmission=resubmission, agent=job.agent)


def open_queue(where: str | os.PathLike[str], **options: Any) -> Store:
    """The queue in a directory, or in the PostgreSQL database a ``postgresql://`` DSN
    names."""
    if isinstance(where, str) and postgres.is_dsn(where):
        return Store(dsn=where, **options)
    return Store(where, **options)


# -- checks ---------------------------------------------------------------------


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _lease(seconds: float) -> float:
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds > 0):
        raise StoreError(f"lease of {seconds!r} seconds: give a positive number of seconds")
    return float(seconds)


def _check_agent(agent: str) -> None:
    if not agent:
        raise StoreError("match: the agent name is empty; give each agent a name")


def _holds(job: Job, agent: str, resubmission: int, now: float) -> bool:
    return (
        job.agent == agent
        and job.resubmission == resubmission
        and job.lease_until is not None
        and now <= job.lease_until
    )


def _require_lease(job: Job, agent: str, resubmission: int, now: float) -> None:
    if _holds(job, agent, resubmission, now):
        return
    if job.agent == agent and job.resubmission == resubmission:
        why = "its lease ran out"
    else:
        holder = f"agent {job.agent}" if job.agent else "no agent"
        why = f"it is {job.state} at resubmission {job.resubmission}, held by {holder}"
    raise LeaseError(
        f"job {job.id}: agent {agent} (resubmission {resubmission}) no longer holds it: "
        f"{why}; stop working on it"
    )


def _check(job: Job, target: State) -> None:
    try:
        states.check(job.state, target)
    except TransitionError as exc:
        raise TransitionError(f"job {job.id}: {exc}") from None
