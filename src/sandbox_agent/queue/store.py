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
from sandbox_agent.queue import states
from sandbox_agent.queue.states import State, TransitionError

DB_NAME = "queue.sqlite3"
SCHEMA_VERSION = 1
_BATCH = 64  # candidates fetched per round trip while matching

_STATE_LIST = ", ".join(f"'{s.value}'" for s in State)  # fixed enum values, not input
_LEASED_LIST = ", ".join(f"'{s.value}'" for s in sorted(states.LEASED))
_SCHEMA = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id is never reused
    jdl_text TEXT NOT NULL,
    owner TEXT NOT NULL,
    priority INTEGER NOT NULL,
    requirements TEXT,
    state TEXT NOT NULL CHECK (state IN ({_STATE_LIST})),
    resubmission INTEGER NOT NULL DEFAULT 0,
    agent TEXT,
    lease_until REAL,
    submitted REAL NOT NULL,
    exit_code INTEGER,
    -- a holder and a deadline exactly when the state is one an agent holds
    CHECK ((agent IS NULL) = (lease_until IS NULL)),
    CHECK ((agent IS NOT NULL) = (state IN ({_LEASED_LIST})))
);
CREATE INDEX jobs_queue ON jobs (state, priority DESC, submitted, id);
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE lease_until IS NOT NULL;
CREATE TABLE history (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    time REAL NOT NULL,
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


def _fields(row: sqlite3.Row) -> dict[str, Any]:
    """A row as keyword arguments (the column names are the dataclass fields)."""
    fields = dict(zip(row.keys(), row, strict=True))
    fields["state"] = State(fields["state"])
    return fields


def _job(row: sqlite3.Row) -> Job:
    return Job(**_fields(row))


class Store:
    """The queue in ``directory/queue.sqlite3``, created (0600) on first open.

    One Store may be shared by threads (calls are serialised); a process that forks
    must open its own Store in the child, as SQLite requires.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        max_resubmissions: int | None = None,
    ) -> None:
        self.path = Path(directory) / DB_NAME
        # None: a returned job waits again however often its agents vanish.  A number:
        # past it the job ends FAILED, so one job that takes its node down cannot
        # take every pilot down in turn.
        self.max_resubmissions = max_resubmissions
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn = self._open(busy_timeout)

    # -- opening ---------------------------------------------------------------

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
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
            if "schema_version" not in tables:
                if tables - {"sqlite_sequence"}:
                    raise StoreError(
                        f"{self.path} is an SQLite database but not a task queue "
                        "(no schema_version table); move it away or use another --home"
                    )
                # Statement by statement: executescript would COMMIT our BEGIN first.
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            else:
                row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                found = row[0] if row else None
                if found != SCHEMA_VERSION:
                    newer = isinstance(found, int) and found > SCHEMA_VERSION
                    fix = (
                        "upgrade sandbox-agent to open it"
                        if newer
                        else "no migration exists; move it away or use another --home"
                    )
                    raise StoreError(
                        f"{self.path} has queue schema version {found}, this sandbox-agent "
                        f"reads version {SCHEMA_VERSION}; {fix}"
                    )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------

    @contextmanager
    def _txn(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction (IMMEDIATE unless told); sqlite3 errors become StoreErrors.

        Reads use a deferred BEGIN: in WAL mode they see one consistent snapshot
        without taking the write lock agents are waiting for.
        """
        if os.getpid() != self._pid:
            raise StoreError(
                f"{self.path}: this Store was opened in process {self._pid} and used "
                f"in process {os.getpid()} after a fork; open a new Store in the child"
            )
        with sqlitedb.transaction(self._conn, self._lock, self.path, noun="queue",
                                  error=StoreError, begin=begin) as conn:  # fmt: skip
            yield conn

    def _read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._txn("BEGIN")

    def _row(self, conn: sqlite3.Connection, job_id: int) -> Job:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StoreError(
                f"job {job_id}: no such job in {self.path}; check the id (`jobs` lists them)"
            )
        return _job(row)

    @staticmethod
    def _record(
        conn: sqlite3.Connection,
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
            cur = conn.execute(
                "INSERT INTO jobs (jdl_text, owner, priority, requirements, state, submitted)"
                " VALUES (?, ?, ?, ?, 'WAITING', ?)",
                (jdl_text, owner, priority, requirements, now),
            )
            job_id = cur.lastrowid
            assert job_id is not None  # an INSERT always sets it
            conn.execute(
                "INSERT INTO history (job_id, time, state, resubmission, agent, detail)"
                " VALUES (?, ?, 'WAITING', 0, NULL, ?)",
                (job_id, now, f"submitted by {owner}"),
            )
        return job_id

    def kill(self, job_id: int, reason: str, *, now: float | None = None) -> None:
        """Move a job to KILLED from any non-final state, whoever holds it.

        The holder learns it at its next heartbeat (refused) or report (LeaseError).
        """
        now = _now(now)
        with self._txn() as conn:
            job = self._row(conn, job_id)
            _check(job, State.KILLED)
            conn.execute(
                "UPDATE jobs SET state = 'KILLED', agent = NULL, lease_until = NULL WHERE id = ?",
                (job_id,),
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
            cur = conn.execute(
                "SELECT * FROM jobs WHERE state = 'WAITING' ORDER BY priority DESC, submitted, id"
            )
            chosen = None
            while chosen is None and (batch := cur.fetchmany(_BATCH)):
                chosen = next((j for j in map(_job, batch) if slot_ok(j)), None)
            cur.close()
            if chosen is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'ASSIGNED', agent = ?, lease_until = ?"
                " WHERE id = ? AND state = 'WAITING'",
                (agent, now + lease, chosen.id),
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
            job = self._row(conn, job_id)
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
            job = self._row(conn, job_id)
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
        self, job_id: int, agent: str, resubmission: int, reason: str, now: float | None = None
    ) -> None:
        """Hand a job back before its lease runs out (the agent is stopping).

        Same effect as a lease expiry: WAITING, resubmission bumped.  Refused while
        SAVING, where the holder must report how saving ended instead.
        """
        now = _now(now)
        with self._txn() as conn:
            job = self._row(conn, job_id)
            _require_lease(job, agent, resubmission, now)
            if states.LEASE_RETURN[job.state] is not State.WAITING:
                raise TransitionError(
                    f"job {job_id}: cannot hand back a job in {job.state}; "
                    "report its final state instead"
                )
            self._return(conn, job, now, f"handed back by agent {agent}: {reason}")

    def expire_leases(self, now: float | None = None) -> list[int]:
        """Return the jobs whose lease ran out (see states.LEASE_RETURN); their ids."""
        now = _now(now)
        with self._txn() as conn:
            return self._expire(conn, now)

    def _expire(self, conn: sqlite3.Connection, now: float) -> list[int]:
        rows = conn.execute(
            "SELECT * FROM jobs WHERE lease_until < ? ORDER BY id", (now,)
        ).fetchall()
        for job in map(_job, rows):
            self._return(conn, job, now, f"lease expired (agent {job.agent})")
        return [row["id"] for row in rows]

    def _return(self, conn: sqlite3.Connection, job: Job, now: float, why: str) -> None:
        target = states.LEASE_RETURN[job.state]
        resubmission = job.resubmission
        if target is State.WAITING:
            resubmission += 1
            limit = self.max_resubmissions
            if limit is not None and resubmission > limit:
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
