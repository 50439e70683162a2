"""The task queue, on real files and on a real PostgreSQL server: matching, leases,
transitions, history, refusals. Every test taking ``store`` runs on both.

Lease times are injected (``now=``); nothing here sleeps waiting for a lease.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pg_support
import pytest

from sandbox_agent.queue import (
    Job,
    LeaseError,
    State,
    Store,
    StoreError,
    TransitionError,
    open_queue,
)
from sandbox_agent.queue.states import FINAL, TRANSITIONS

T0 = 1_000_000.0
LEASE = 60.0
# The states a holder walks through, in order; index i is reached after i reports.
WALK = [State.ASSIGNED, State.STARTED, State.RUNNING, State.SAVING]


def anything(job: Job) -> bool:
    return True


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    yield from pg_support.running_server()


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a test's queue lives: a directory, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "home")
    else:
        yield from pg_support.fresh_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def store(where: str) -> Iterator[Store]:
    with open_queue(where) as opened:
        yield opened


def leased(store: Store, state: State, *, agent: str = "a1", now: float = T0) -> Job:
    """A fresh job, matched by ``agent`` and reported up to ``state`` (a WALK state)."""
    job_id = store.submit(f'Executable = "/bin/{state.lower()}";', owner="alice", now=now)
    job = store.match(agent, lambda j: j.id == job_id, LEASE, now=now)
    assert job is not None and job.id == job_id
    for step in WALK[1 : WALK.index(state) + 1]:
        store.set_state(job_id, agent, job.resubmission, step, now=now)
    return store.get(job_id)


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# -- submit and match -----------------------------------------------------------


def test_submit_then_get(store: Store) -> None:
    job_id = store.submit('Executable = "x";', owner="alice", priority=3, requirements="r", now=T0)
    job = store.get(job_id)
    assert job == Job(
        id=job_id,
        jdl_text='Executable = "x";',
        owner="alice",
        priority=3,
        requirements="r",
        state=State.WAITING,
        resubmission=0,
        agent=None,
        lease_until=None,
        submitted=T0,
        exit_code=None,
    )
    assert store.submit("y", owner="bob") == job_id + 1


def test_match_takes_priority_then_age_then_id(store: Store) -> None:
    ids = {
        name: store.submit(name, owner="u", priority=priority, now=submitted)
        for name, priority, submitted in [
            ("old-low", 0, T0 + 10),
            ("late-high", 5, T0 + 30),
            ("early-high", 5, T0 + 20),
            ("oldest-low", 0, T0 + 5),
            ("early-high-twin", 5, T0 + 20),  # same priority and time: the lower id first
            ("negative", -1, T0),
        ]
    }
    order = []
    while (job := store.match("a1", anything, LEASE, now=T0 + 100)) is not None:
        assert job.state is State.ASSIGNED and job.agent == "a1"
        assert job.lease_until == T0 + 100 + LEASE
        order.append(job.jdl_text)
    assert order == [
        "early-high",
        "early-high-twin",
        "late-high",
        "oldest-low",
        "old-low",
        "negative",
    ]
    assert {j.id for j in store.jobs("ASSIGNED")} == set(ids.values())


def test_the_predicate_skips_jobs_the_slot_cannot_run(store: Store) -> None:
    big = store.submit("big", owner="u", priority=9, requirements="other.Memory > 64")
    small = store.submit("small", owner="u", requirements="true")
    seen: list[int] = []

    def small_slot(job: Job) -> bool:
        seen.append(job.id)
        return job.requirements == "true"

    job = store.match("a1", small_slot, LEASE, now=T0)
    assert job is not None and job.id == small
    assert seen == [big, small]  # candidates offered best first
    assert store.get(big).state is State.WAITING
    assert store.match("a1", small_slot, LEASE, now=T0) is None
    assert store.get(big).state is State.WAITING  # a refusal claims nothing
    taken = store.match("a2", anything, LEASE, now=T0)
    assert taken is not None and taken.id == big


def test_the_predicate_sees_past_the_first_batch(store: Store) -> None:
    ids = [store.submit(str(i), owner="u") for i in range(150)]
    job = store.match("a1", lambda j: j.id == ids[-1], LEASE)
    assert job is not None and job.id == ids[-1]


def test_a_predicate_that_raises_claims_nothing(store: Store) -> None:
    job_id = store.submit("x", owner="u")

    def broken(job: Job) -> bool:
        raise RuntimeError("requirements engine bug")

    with pytest.raises(RuntimeError):
        store.match("a1", broken, LEASE)
    assert store.get(job_id).state is State.WAITING
    assert store.match("a1", anything, LEASE) is not None  # and the store still works


def test_empty_queue_matches_nothing(store: Store) -> None:
    assert store.match("a1", anything, LEASE) is None


# -- leases -----------------------------------------------------------------------


def test_heartbeat_extends_only_the_holders_lease(store: Store) -> None:
    job = leased(store, State.RUNNING)
    assert store.heartbeat(job.id, "a1", 0, LEASE, now=T0 + 50)
    assert store.get(job.id).lease_until == T0 + 50 + LEASE
    assert not store.heartbeat(job.id, "a2", 0, LEASE, now=T0 + 51)  # another agent
    assert not store.heartbeat(job.id, "a1", 1, LEASE, now=T0 + 51)  # another attempt
    assert store.expire_leases(now=T0 + 50 + LEASE) == []  # the deadline itself still holds
    assert store.get(job.id).state is State.RUNNING


def test_a_heartbeat_after_the_deadline_is_refused(store: Store) -> None:
    job = leased(store, State.STARTED)
    assert not store.heartbeat(job.id, "a1", 0, LEASE, now=T0 + LEASE + 1)
    assert store.get(job.id).lease_until == T0 + LEASE  # not revived


@pytest.mark.parametrize("state", [State.ASSIGNED, State.STARTED, State.RUNNING])
def test_lease_expiry_returns_the_job_with_resubmission_bumped(store: Store, state: State) -> None:
    job = leased(store, state)
    assert store.expire_leases(now=T0 + LEASE + 1) == [job.id]
    back = store.get(job.id)
    assert (back.state, back.resubmission, back.agent, back.lease_until) == (
        State.WAITING,
        1,
        None,
        None,
    )
    last = store.history(job.id)[-1]
    assert (last.state, last.resubmission, last.agent) == (State.WAITING, 1, "a1")
    assert last.detail == "node fault 1 of 3: lease expired (agent a1)"

    # The vanished agent's late reports are refused, and say why.
    assert not store.heartbeat(job.id, "a1", 0, LEASE, now=T0 + LEASE + 2)
    with pytest.raises(LeaseError) as info:
        store.set_state(job.id, "a1", 0, "RUNNING", now=T0 + LEASE + 2)
    assert f"job {job.id}" in one_line(info) and "stop working on it" in str(info.value)

    again = store.match("a2", anything, LEASE, now=T0 + LEASE + 3)
    assert again is not None and (again.id, again.resubmission) == (job.id, 1)
    with pytest.raises(LeaseError):
        store.set_state(job.id, "a1", 0, "STARTED", now=T0 + LEASE + 4)
    with pytest.raises(LeaseError):  # the right agent name with the old attempt
        store.set_state(job.id, "a2", 0, "STARTED", now=T0 + LEASE + 4)
    store.set_state(job.id, "a2", 1, "STARTED", now=T0 + LEASE + 4)
    assert store.get(job.id).state is State.STARTED


def test_lease_expiry_while_saving_ends_in_error_sv(store: Store) -> None:
    job = leased(store, State.SAVING)
    assert store.expire_leases(now=T0 + LEASE + 1) == [job.id]
    ended = store.get(job.id)
    assert (ended.state, ended.resubmission, ended.agent) == (State.ERROR_SV, 0, None)
    assert "not rerun" in store.history(job.id)[-1].detail
    assert store.match("a2", anything, LEASE, now=T0 + LEASE + 2) is None


def test_match_returns_expired_leases_itself(store: Store) -> None:
    job = leased(store, State.RUNNING, agent="a1")
    assert store.match("a2", anything, LEASE, now=T0 + LEASE) is None  # not expired yet
    again = store.match("a2", anything, LEASE, now=T0 + LEASE + 1)
    assert again is not None and (again.id, again.resubmission, again.agent) == (job.id, 1, "a2")
    details = [h.detail for h in store.history(job.id)]
    assert details[-2:] == ["node fault 1 of 3: lease expired (agent a1)", "matched by agent a2"]


def test_resubmissions_run_out_when_a_limit_is_set(tmp_path: Path) -> None:
    with Store(tmp_path, max_resubmissions=1) as store:
        job_id = store.submit("x", owner="u", now=T0)
        now = T0
        for _ in range(2):
            assert store.match("a1", anything, LEASE, now=now) is not None
            now += LEASE + 1
            store.expire_leases(now=now)
        job = store.get(job_id)
        assert (job.state, job.resubmission) == (State.FAILED, 1)
        assert "giving up" in store.history(job_id)[-1].detail


def test_release_hands_the_job_back(store: Store) -> None:
    job = leased(store, State.ASSIGNED)
    store.release(job.id, "a1", 0, "agent got SIGTERM", now=T0 + 1)
    back = store.get(job.id)
    assert (back.state, back.resubmission, back.agent) == (State.WAITING, 1, None)
    assert store.history(job.id)[-1].detail == \
        "node fault 1 of 3: handed back by agent a1: agent got SIGTERM"  # fmt: skip
    with pytest.raises(LeaseError):
        store.release(job.id, "a1", 0, "twice", now=T0 + 2)


def test_a_job_that_meets_a_node_fault_on_every_node_ends_failed_with_the_reason(
    store: Store,
) -> None:
    """A payload that stops every pilot taking it (its lease runs out, or its agent hands
    it back because the node could not run it) is not handed out for ever."""
    job_id = store.submit("x", owner="u", now=T0)
    now = T0
    for attempt in range(3):
        matched = store.match(f"a{attempt}", anything, LEASE, now=now)
        assert matched is not None and matched.id == job_id
        if attempt == 1:
            store.release(job_id, "a1", 1, "the disk is full", now=now + 1)
        else:
            now += LEASE + 1
            store.expire_leases(now=now)
        now += 2
    ended = store.get(job_id)
    assert ended.state is State.FAILED
    last = store.history(job_id)[-1]
    assert last.detail.startswith("node fault 3 of 3: lease expired (agent a2); 3 of its "
                                  "attempts ended in a node fault, so it is not handed out "
                                  "again")  # fmt: skip
    assert store.match("a9", anything, LEASE, now=now) is None


def test_an_agent_that_is_only_stopping_is_no_node_fault(store: Store) -> None:
    job_id = store.submit("x", owner="u", now=T0)
    for attempt in range(5):
        assert store.match("a1", anything, LEASE, now=T0 + attempt) is not None
        store.release(job_id, "a1", attempt, "the agent was told to stop", now=T0 + attempt,
                      fault=False)  # fmt: skip
    back = store.get(job_id)
    assert (back.state, back.resubmission) == (State.WAITING, 5)
    assert store.history(job_id)[-1].detail == \
        "handed back by agent a1: the agent was told to stop"  # fmt: skip


def test_release_while_saving_is_refused(store: Store) -> None:
    job = leased(store, State.SAVING)
    with pytest.raises(TransitionError, match="final state instead") as info:
        store.release(job.id, "a1", 0, "stopping", now=T0 + 1)
    one_line(info)
    assert store.get(job.id).state is State.SAVING


# -- transitions through the store ------------------------------------------------


@pytest.mark.parametrize("source", WALK)
def test_set_state_follows_the_table(store: Store, source: State) -> None:
    for target in State:
        job = leased(store, source)
        if target in TRANSITIONS[source]:
            store.set_state(job.id, "a1", 0, target, detail="d", now=T0 + 1)
            assert store.get(job.id).state is target
        else:
            with pytest.raises(TransitionError) as info:
                store.set_state(job.id, "a1", 0, target, now=T0 + 1)
            assert f"job {job.id}" in one_line(info)
            assert store.get(job.id) == job  # a refusal changes nothing
            assert len(store.history(job.id)) == WALK.index(source) + 2


@pytest.mark.parametrize("final", sorted(FINAL - {State.KILLED}))
def test_a_final_state_releases_the_lease_and_refuses_further_moves(
    store: Store, final: State
) -> None:
    source = next(s for s in reversed(WALK) if final in TRANSITIONS[s])
    job = leased(store, source)
    store.set_state(job.id, "a1", 0, final, exit_code=3, now=T0 + 1)
    ended = store.get(job.id)
    assert (ended.state, ended.agent, ended.lease_until, ended.exit_code) == (final, None, None, 3)
    assert not store.heartbeat(job.id, "a1", 0, LEASE, now=T0 + 2)
    for target in State:
        with pytest.raises(LeaseError):
            store.set_state(job.id, "a1", 0, target, now=T0 + 2)
    with pytest.raises(TransitionError, match=f"{final} is final"):
        store.kill(job.id, "too late")
    assert store.expire_leases(now=T0 + 10 * LEASE) == []
    assert store.get(job.id) == ended


@pytest.mark.parametrize("state", [State.WAITING, *WALK])
def test_kill_from_every_non_final_state(store: Store, state: State) -> None:
    job = (
        store.get(store.submit("x", owner="u")) if state is State.WAITING else leased(store, state)
    )
    store.kill(job.id, "operator request", now=T0 + 5)
    killed = store.get(job.id)
    assert (killed.state, killed.agent, killed.lease_until) == (State.KILLED, None, None)
    last = store.history(job.id)[-1]
    assert (last.state, last.detail, last.agent) == (
        State.KILLED,
        "killed: operator request",
        job.agent,
    )
    if job.agent:  # the holder is told at its next heartbeat or report
        assert not store.heartbeat(job.id, job.agent, 0, LEASE, now=T0 + 6)
        with pytest.raises(LeaseError, match="KILLED"):
            store.set_state(job.id, job.agent, 0, "DONE", now=T0 + 6)
    with pytest.raises(TransitionError, match="KILLED is final"):
        store.kill(job.id, "again")


def test_history_records_every_change(store: Store) -> None:
    job_id = store.submit("x", owner="alice", now=T0)
    job = store.match("a1", anything, LEASE, now=T0 + 1)
    assert job is not None
    for step, state in enumerate(["STARTED", "RUNNING", "SAVING"], start=2):
        store.set_state(job_id, "a1", 0, state, now=T0 + step)
    store.set_state(job_id, "a1", 0, "DONE", detail="all outputs saved", exit_code=0, now=T0 + 5)
    rows = [
        (h.job_id, h.time, h.state, h.resubmission, h.agent, h.detail, h.exit_code)
        for h in store.history(job_id)
    ]
    assert rows == [
        (job_id, T0, State.WAITING, 0, None, "submitted by alice", None),
        (job_id, T0 + 1, State.ASSIGNED, 0, "a1", "matched by agent a1", None),
        (job_id, T0 + 2, State.STARTED, 0, "a1", "", None),
        (job_id, T0 + 3, State.RUNNING, 0, "a1", "", None),
        (job_id, T0 + 4, State.SAVING, 0, "a1", "", None),
        (job_id, T0 + 5, State.DONE, 0, "a1", "all outputs saved", 0),
    ]
    assert store.get(job_id).exit_code == 0


def test_jobs_lists_by_state(store: Store) -> None:
    waiting = store.submit("w", owner="u")
    running = leased(store, State.RUNNING)
    assert [j.id for j in store.jobs()] == [waiting, running.id]
    assert [j.id for j in store.jobs("RUNNING")] == [running.id]
    assert store.jobs("DONE") == []
    with pytest.raises(TransitionError, match="unknown job state"):
        store.jobs("running")


# -- refusals a user can cause ----------------------------------------------------


def test_unknown_job_ids_are_one_line_errors(store: Store) -> None:
    calls = [
        lambda: store.get(42),
        lambda: store.history(42),
        lambda: store.kill(42, "x"),
        lambda: store.heartbeat(42, "a1", 0, LEASE),
        lambda: store.set_state(42, "a1", 0, "STARTED"),
        lambda: store.release(42, "a1", 0, "x"),
    ]
    for call in calls:
        with pytest.raises(StoreError) as info:
            call()
        assert "job 42: no such job" in one_line(info)


def test_bad_arguments_are_refused(store: Store) -> None:
    job_id = store.submit("x", owner="u")
    for lease in (0, -1, float("nan"), float("inf")):
        with pytest.raises(StoreError, match="positive number of seconds"):
            store.match("a1", anything, lease)
    with pytest.raises(StoreError, match="agent name is empty"):
        store.match("", anything, LEASE)
    with pytest.raises(StoreError, match="owner is empty"):
        store.submit("x", owner="")
    with pytest.raises(StoreError, match="not an integer"):
        store.submit("x", owner="u", priority=True)
    with pytest.raises(TransitionError, match="unknown job state"):
        store.set_state(job_id, "a1", 0, "BOGUS")
    assert store.get(job_id).state is State.WAITING


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / "queue.sqlite3") as raw:
        raw.execute("UPDATE schema_version SET version = 7")
    raw.close()
    with pytest.raises(StoreError) as info:
        Store(tmp_path)
    assert "schema version 7" in one_line(info) and "upgrade sandbox-agent" in str(info.value)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    garbage = b"this is a JDL, not a database\n" * 64
    (tmp_path / "queue.sqlite3").write_bytes(garbage)
    with pytest.raises(StoreError) as info:
        Store(tmp_path)
    assert "not a usable task-queue database" in one_line(info)
    assert (tmp_path / "queue.sqlite3").read_bytes() == garbage  # left as found


def test_someone_elses_sqlite_database_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "queue.sqlite3") as raw:
        raw.execute("CREATE TABLE photos (id INTEGER)")
    raw.close()
    with pytest.raises(StoreError) as info:
        Store(tmp_path)
    assert "not a task queue" in one_line(info)


def test_the_file_is_private_in_wal_mode_and_persistent(tmp_path: Path) -> None:
    with Store(tmp_path / "new" / "dir") as store:
        job_id = store.submit("x", owner="u")
    path = tmp_path / "new" / "dir" / "queue.sqlite3"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    with Store(tmp_path / "new" / "dir") as reopened:
        assert reopened.get(job_id).jdl_text == "x"


def test_a_store_carried_across_fork_refuses_to_work(store: Store) -> None:
    store.submit("x", owner="u")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must not touch the parent's SQLite connection
        try:
            store.jobs()
            os.write(write, b"used it")
        except StoreError as exc:
            os.write(write, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        assert "open a new Store in the child" in pipe.read().decode()
    assert len(store.jobs()) == 1


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.close()
    with pytest.raises(StoreError) as info:
        store.jobs()
    one_line(info)


# -- concurrency, for real ----------------------------------------------------------

AGENTS = 8
JOBS = 300


def _agent(where: str, agent: str, start: Barrier, results: Queue[tuple[str, object]]) -> None:
    """One agent process: match and finish jobs until the queue is empty.

    Always reports, an error included, so the test never waits out a timeout.
    """
    matched: list[int] = []
    try:
        with open_queue(where) as store:
            start.wait()
            while (job := store.match(agent, anything, lease_seconds=600)) is not None:
                matched.append(job.id)
                time.sleep(0.002)  # the payload: gives the other agents a turn at the lock
                for state in ("STARTED", "RUNNING", "SAVING"):
                    store.set_state(job.id, agent, job.resubmission, state)
                store.set_state(job.id, agent, job.resubmission, "DONE", exit_code=0)
    except Exception as exc:
        results.put((agent, f"{type(exc).__name__}: {exc}"))
        raise
    results.put((agent, matched))


def test_eight_processes_never_share_or_lose_a_job(where: str) -> None:
    with open_queue(where) as store:
        ids = {store.submit(f"job {i}", owner="u", priority=i % 3) for i in range(JOBS)}
    ctx = multiprocessing.get_context("spawn")  # independent processes, own connections
    start, results = ctx.Barrier(AGENTS), ctx.Queue()
    procs = [
        ctx.Process(target=_agent, args=(where, f"agent{i}", start, results))
        for i in range(AGENTS)
    ]
    for proc in procs:
        proc.start()
    reports = dict(results.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    assert [p.exitcode for p in procs] == [0] * AGENTS, reports
    lists = {agent: got for agent, got in reports.items() if isinstance(got, list)}
    assert len(lists) == AGENTS, reports  # no agent failed

    matched = Counter(job_id for got in lists.values() for job_id in got)
    assert set(matched) == ids and set(matched.values()) == {1}  # none lost, none twice
    assert sum(1 for got in lists.values() if got) >= 2  # they really competed

    with open_queue(where) as store:
        assert all(j.state is State.DONE and j.resubmission == 0 for j in store.jobs())
        for job_id in ids:
            changes = store.history(job_id)
            assert [h.state for h in changes] == [
                State.WAITING,
                State.ASSIGNED,
                State.STARTED,
                State.RUNNING,
                State.SAVING,
                State.DONE,
            ]
            holders = {h.agent for h in changes[1:]}
            assert len(holders) == 1 and job_id in lists[holders.pop() or ""]


def test_threads_sharing_one_store_never_share_a_job(store: Store) -> None:
    ids = {store.submit(str(i), owner="u") for i in range(100)}
    got: dict[str, list[int]] = {f"t{i}": [] for i in range(4)}

    def work(agent: str) -> None:
        while (job := store.match(agent, anything, LEASE)) is not None:
            got[agent].append(job.id)
            store.set_state(job.id, agent, 0, "STARTED")

    threads = [threading.Thread(target=work, args=(agent,)) for agent in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    everything = [job_id for ids_ in got.values() for job_id in ids_]
    assert sorted(everything) == sorted(ids)
    assert {j.state for j in store.jobs()} == {State.STARTED}
