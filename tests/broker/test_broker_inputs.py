"""Inputs through the broker, over real TLS: a user sends a file, a job names it, and
the job's own token (its agent's) fetches it. Who may name and fetch what; names,
digests and damaged objects refused."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_support import CERTS, Broker, lease_testuser_jobs, refused, running_broker

from sandbox_agent.agent.attempt import NODE_ERRORS
from sandbox_agent.agent.backends import BrokerQueue, job_of
from sandbox_agent.broker import service
from sandbox_agent.broker.client import BrokerClient
from sandbox_agent.broker.files import FILE_CAP
from sandbox_agent.catalogue import OBJECTS, Catalogue, CatalogueError


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from running_broker(tmp_path)


def naming(lfn: str) -> str:
    return f'Executable = "/bin/true";\nInputFile = {{"LF:{lfn}"}};\n'


def shared(broker: Broker, lfn: str, data: bytes) -> None:
    """A file the broker's operator added (`catalogue add` on the broker's home)."""
    broker.server.endpoints.inputs.catalogue.add_data(data, lambda _d: lfn, "operator")


def test_a_user_sends_an_input_names_it_in_a_job_and_sending_it_again_is_harmless(
    broker: Broker,
) -> None:
    alice = broker.client("user-alice")
    data = b"[generator]\nseed = 7\n"
    lfn = alice.send_input("generator.ini", data)
    assert lfn == f"/local/alice/{hashlib.sha256(data).hexdigest()[:16]}/generator.ini"
    assert alice.send_input("generator.ini", data) == lfn
    assert alice.send_input("generator.ini", data + b"x") != lfn  # other bytes, other name
    job = alice.submit(naming(lfn))
    assert f"LF:{lfn}" in alice.status(job)["job"]["jdl"]
    sent = [line for line in broker.log if line.get("route") == "put_input"]
    assert [(line["status"], line["user"]) for line in sent] == [(200, "alice")] * 3


def test_a_job_may_name_its_owners_and_shared_files_never_another_users(
    broker: Broker,
) -> None:
    lfn = broker.client("user-alice").send_input("data.txt", b"alice's\n")
    shared(broker, "/alice/cern.ch/calib/run.root", b"shared\n")
    bob = broker.client("user-bob")
    error = refused(lambda: bob.submit(naming(lfn)))
    assert error.status == 403 and "another user's file" in str(error)
    executable = f'Executable = "LF:{lfn}";\n'
    assert refused(lambda: bob.submit(executable)).status == 403  # as a program too
    # an operator's job neither: the rule is checked again at fetch, where the role of
    # whoever submitted is no longer known
    assert refused(lambda: broker.client("admin-ops").submit(naming(lfn))).status == 403
    bob.submit(naming("/alice/cern.ch/calib/run.root"))
    assert [job.owner for job in broker.store.jobs()] == ["bob"]


def test_a_job_that_reached_the_queue_another_way_still_cannot_fetch_anothers_file(
    broker: Broker,
) -> None:
    """Jobs 1..8 of testuser, straight into the queue (queued before an upgrade, or by
    another broker on the same database): job 7 names a file of alice's."""
    lfn = broker.client("user-alice").send_input("data.txt", b"alice's\n")
    lease_testuser_jobs(broker, jdl=lambda _n: naming(lfn))
    error = refused(lambda: broker.client("job-7").fetch_input(7, lfn))
    assert error.status == 403 and "another user's file" in str(error)


@pytest.mark.parametrize(
    ("jdl", "message"),
    [
        (naming("/local/alice/0123456789abcdef/none.txt"), "not in the broker's catalogue"),
        (naming("/alice/cern.ch/missing.root"), "not in the broker's catalogue"),
        ('Executable = "run.sh";\n', "Executable run.sh: a file of the submitting machine"),
        ('Executable = "/bin/true";\nInputFile = {"data.txt"};\n',
         "InputFile data.txt: a file of the submitting machine"),
        ('Executable = "/bin/true";\nValidationCommand = "check.sh";\n',
         "ValidationCommand check.sh: a file of the submitting machine"),
        ('Executable = "LF:/site/a/run.sh";\nInputFile = {"LF:/site/b/run.sh"};\n',
         "lands on run.sh in the work directory, as Executable LF:/site/a/run.sh does"),
        (naming("/site/a/.jalien-token"), "reserved in the work directory"),
        (naming("/site/a/stdout"), "reserved in the work directory"),
        (naming("/site/big.root"), "over the 67108864 a job's input may have"),
    ],
)  # fmt: skip
def test_a_job_naming_a_file_the_broker_cannot_give_is_refused_at_submit(
    broker: Broker, jdl: str, message: str
) -> None:
    for lfn in ("/site/a/run.sh", "/site/b/run.sh", "/site/a/.jalien-token", "/site/a/stdout"):
        shared(broker, lfn, lfn.encode())
    # the operator's `catalogue add` takes files larger than a job may fetch
    operator = Catalogue(broker.server.endpoints.inputs.catalogue.directory)
    with operator, tempfile.NamedTemporaryFile() as big:
        big.truncate(FILE_CAP + 1)
        operator.add_file(Path(big.name), "/site/big.root", "operator")
    error = refused(lambda: broker.client("user-alice").submit(jdl))
    assert error.status == 400 and message in str(error)
    assert broker.store.jobs() == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("..", "one plain file name"),
        ("%2e%2e", "one plain file name"),
        ("a%2Fb", "one plain file name"),
        ("%2Fetc%2Fpasswd", "one plain file name"),
        ("a%00b", "one plain file name"),
        ("a%0ab", "one plain file name"),
        ("stdout", "reserved in the work directory"),
        (".jalien-token", "reserved in the work directory"),
        ("%ff", "not UTF-8"),
        ("x" * 256, "1 to 255 characters"),
    ],
)  # fmt: skip
def test_input_names_with_path_tricks_are_refused(broker: Broker, name: str, message: str) -> None:
    data = b"x"
    headers = {"Content-Type": "application/octet-stream", "Content-Length": "1",
               "X-Content-SHA256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    got, answer = broker.raw("user-alice", "PUT", f"/v1/inputs/{name}", data, headers)
    assert got == 400 and message in answer["error"], answer
    assert broker.server.endpoints.inputs.catalogue.entries() == []


def test_an_input_whose_digest_is_wrong_is_not_kept(broker: Broker) -> None:
    headers = {"Content-Type": "application/octet-stream", "Content-Length": "1",
               "X-Content-SHA256": "0" * 64}  # fmt: skip
    got, answer = broker.raw("user-alice", "PUT", "/v1/inputs/x.txt", b"x", headers)
    assert got == 400 and "SHA-256" in answer["error"]
    assert broker.server.endpoints.inputs.catalogue.entries() == []


def test_only_users_send_inputs(broker: Broker) -> None:
    for who in ("jobagent", "job-7"):
        error = refused(lambda w=who: broker.client(w).send_input("x.txt", b"x"))
        assert error.status == 403 and "may not call put_input" in str(error)


def seven_and_eight(broker: Broker) -> tuple[str, str]:
    """Jobs 1..8 of testuser leased to node-1; job 7 names one shared file, job 8
    another. Their LFNs."""
    mine, theirs = "/testuser/calib/seven.root", "/testuser/calib/eight.root"
    shared(broker, mine, b"for job seven\n")
    shared(broker, theirs, b"for job eight\n")
    lease_testuser_jobs(broker, jdl=lambda n: naming({7: mine, 8: theirs}.get(n, mine)))
    return mine, theirs


def test_a_job_token_fetches_only_the_inputs_its_own_job_names(broker: Broker) -> None:
    mine, theirs = seven_and_eight(broker)
    seven = broker.client("job-7")
    assert seven.fetch_input(7, mine) == b"for job seven\n"
    error = refused(lambda: seven.fetch_input(7, theirs))
    assert (error.status, str(error)) == (403, f"job 7 names no input LF:{theirs}")
    error = refused(lambda: seven.fetch_input(8, theirs))
    assert (error.status, str(error)) == (403, "this token is for job 7, not job 8")
    for who in ("jobagent", "user-alice", "admin-ops"):
        error = refused(lambda w=who: broker.client(w).fetch_input(7, mine))
        assert error.status == 403 and "may not call get_input" in str(error)


def test_inputs_are_given_only_before_the_payload_starts(broker: Broker) -> None:
    """The payload holds the job token too: once the job has STARTED, it fetches none."""
    mine, _theirs = seven_and_eight(broker)
    agent = broker.client("jobagent")
    for state in ("STARTED", "RUNNING", "SAVING", "DONE"):
        agent.state(7, 0, state, agent="node-1")
        error = refused(lambda: broker.client("job-7").fetch_input(7, mine))
        assert error.status == 409 and "before it starts (ASSIGNED)" in str(error)


def test_a_damaged_input_at_the_broker_is_refused_never_sent(broker: Broker) -> None:
    mine, _theirs = seven_and_eight(broker)
    catalogue = broker.server.endpoints.inputs.catalogue
    digest = catalogue.get(mine).sha256
    (catalogue.directory / OBJECTS / digest).write_bytes(b"for job sevEn\n")
    error = refused(lambda: broker.client("job-7").fetch_input(7, mine))
    assert error.status == 422 and "does not match the catalogue" in str(error)
    assert str(catalogue.directory) not in str(error)  # no server path in the answer


def test_the_client_refuses_an_input_that_arrives_other_than_the_broker_announced(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, _theirs = seven_and_eight(broker)
    inputs = broker.server.endpoints.inputs
    real = inputs.fetch

    def in_transit(*args: object) -> tuple[bytes, str]:
        data, digest = real(*args)  # type: ignore[arg-type]
        return data[:-1] + b"?", digest  # as if changed on the way

    monkeypatch.setattr(inputs, "fetch", in_transit)
    error = refused(lambda: broker.client("job-7").fetch_input(7, mine))
    assert f"LF:{mine} arrived damaged (SHA-256 mismatch)" in str(error)


def job_token_of(name: str) -> dict[str, object]:
    """A certs-test job token as the agent holds it (certificate, chain, key)."""
    return {"certificate": (CERTS / f"{name}.pem").read_text(), "chain": [],
            "key": (CERTS / f"{name}.key").read_text()}  # fmt: skip


def test_the_pilot_places_inputs_as_new_files_and_a_taken_name_is_the_jobs_fault(
    broker: Broker, tmp_path: Path
) -> None:
    mine, _theirs = seven_and_eight(broker)
    queue = BrokerQueue(broker.client("jobagent"), "node-1", CERTS / "ca.pem")
    job = job_of(broker.client("job-7").status(7)["job"])
    workdir = tmp_path / "work"
    workdir.mkdir()
    queue.place_inputs(job, job_token_of("job-7"), [(mine, "seven.root", 0o644)], workdir)
    placed = workdir / "seven.root"
    assert placed.read_bytes() == b"for job seven\n"
    assert placed.stat().st_mode & 0o777 == 0o644
    (workdir / "taken").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CatalogueError, match="cannot be placed in the work directory"):
        queue.place_inputs(job, job_token_of("job-7"), [(mine, "taken", 0o644)], workdir)
    assert not (tmp_path / "elsewhere").exists()  # never written through the link


def test_a_broker_out_of_reach_while_placing_inputs_is_the_nodes_problem(
    broker: Broker, tmp_path: Path
) -> None:
    """Not the job's: the attempt hands it back (NODE_ERRORS holds OSError) instead of
    ending it ERROR_IB."""
    mine, _theirs = seven_and_eight(broker)
    gone = BrokerClient("https://localhost:1", CERTS / "jobagent.pem", CERTS / "jobagent.key",
                        CERTS / "ca.pem", attempts=1)  # fmt: skip
    job = job_of(broker.client("job-7").status(7)["job"])
    with pytest.raises(ConnectionError, match="the broker did not give the job's inputs"):
        BrokerQueue(gone, "node-1", CERTS / "ca.pem").place_inputs(
            job, job_token_of("job-7"), [(mine, "seven.root", 0o644)], tmp_path
        )
    assert issubclass(ConnectionError, NODE_ERRORS)


def test_files_moved_at_once_are_capped_and_the_next_is_told_to_retry(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file is held whole in memory: past the cap, a transfer waits its turn, then
    gets 503 (which clients retry), never an unbounded pile of 64 MiB bodies."""
    monkeypatch.setattr(service, "TRANSFER_WAIT", 0.2)
    for _ in range(service.MAX_TRANSFERS):  # every slot busy
        assert broker.server.transfers.acquire(blocking=False)
    error = refused(lambda: broker.client("user-alice").send_input("x.txt", b"x"))
    assert "the broker is moving 16 files already; retry" in str(error)
    broker.server.transfers.release()
    assert broker.client("user-alice").send_input("x.txt", b"x").endswith("/x.txt")
