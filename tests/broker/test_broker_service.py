"""The broker over real TLS on loopback: who may call what, refusals with their
status and reason, hostile requests refused while the service goes on serving."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from broker_support import (
    CERTS,
    SLOT,
    Broker,
    lease_testuser_jobs,
    private_copy,
    refused,
    running_broker,
)
from cryptography.hazmat.primitives import serialization

from sandbox_agent.broker import api, service
from sandbox_agent.broker.client import BrokerError, _check_broker
from sandbox_agent.queue import State, StoreError
from sandbox_agent.tokens import Identity, Role, TokenAuthority, files, new_key
from sandbox_agent.tokens.request import new_job_request
from sandbox_agent.tokens.roles import JobScope


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from running_broker(tmp_path)


def logged(broker: Broker, wanted: Callable[[dict[str, object]], bool]) -> bool:
    """Whether the broker logs such a line within a few seconds: the client may see a
    refusal before the broker's thread has written it."""
    deadline = time.monotonic() + 5
    while not any(wanted(line) for line in list(broker.log)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def csr_for(job_id: int, resubmission: int, user: str) -> str:
    _key, request = new_job_request(JobScope(job_id, resubmission, user))
    return request.public_bytes(serialization.Encoding.PEM).decode()


# -- identities ---------------------------------------------------------------------------


def test_every_route_is_in_the_openapi_document(broker: Broker) -> None:
    document = broker.client("jobagent").call("GET", api.OPENAPI_PATH)
    listed = {(path, method.upper()) for path, item in document["paths"].items()
              for method in item}  # fmt: skip
    assert listed == {(r.path, r.method) for r in api.ROUTES}
    match = document["paths"]["/v1/match"]["post"]
    assert match["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "agent", "slot", "lease"]  # fmt: skip


@pytest.mark.parametrize(
    ("who", "call", "message"),
    [
        ("user-alice", lambda c: c.match("a", SLOT, 60), "a user token may not call match"),
        ("jobagent", lambda c: c.submit('Executable = "/bin/true";'),
         "a jobagent token may not call submit"),
        ("job-7", lambda c: c.jobs(), "a job token may not call jobs"),
        ("admin-ops", lambda c: c.job_token(1, "a", 0, "x"),
         "an admin token may not call job_token"),
    ],
)  # fmt: skip
def test_a_token_of_the_wrong_role_gets_403_and_why(
    broker: Broker, who: str, call: Callable[..., object], message: str
) -> None:
    error = refused(lambda: call(broker.client(who)))
    assert error.status == 403
    assert str(error).startswith(message)


@pytest.mark.parametrize(
    ("who", "reason"),
    [("expired-jobagent", "certificate expired"), ("unknown-ca-jobagent", "unknown ca")],
)
def test_an_expired_or_foreign_certificate_fails_the_handshake(
    broker: Broker, who: str, reason: str
) -> None:
    error = refused(lambda: broker.client(who).jobs())
    assert error.status is None
    assert "refused this certificate in the TLS handshake" in str(error)
    assert reason in str(error)
    assert logged(broker, lambda line: line["status"] == "tls-refused")


def test_no_client_certificate_fails_the_handshake(broker: Broker) -> None:
    context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    with socket.create_connection(("127.0.0.1", broker.server.server_address[1])) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:  # fmt: skip
        tls.sendall(b"GET /v1/openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            tls.recv(100)


def test_a_revoked_token_is_refused_with_the_reason(broker: Broker) -> None:
    error = refused(lambda: broker.client("revoked-jobagent").match("a", SLOT, 60))
    assert error.status == 403
    assert "revoked" in str(error)


def test_the_client_takes_only_a_broker_token_for_the_server() -> None:
    agent = files.load_certificates(CERTS / "jobagent.pem")[0]
    der = agent.public_bytes(serialization.Encoding.DER)
    with pytest.raises(BrokerError, match="shows a jobagent token, not a broker's"):
        _check_broker(der, "https://x")
    broker_der = files.load_certificates(CERTS / "broker.pem")[0].public_bytes(
        serialization.Encoding.DER)  # fmt: skip
    _check_broker(broker_der, "https://x")  # no exception


# -- scopes -------------------------------------------------------------------------------


def test_a_job_token_reads_its_own_job_only_and_never_speaks_for_its_agent(
    broker: Broker,
) -> None:
    """The payload holds its job token: it may read its job and send resource use, but
    neither move the job's state (it would forge DONE) nor stretch its agent's lease."""
    lease_testuser_jobs(broker)
    job7 = broker.client("job-7")
    assert job7.status(7)["job"]["id"] == 7
    lease = broker.store.get(7).lease_until
    assert job7.heartbeat(7, 0, 3600, usage={"cpu_seconds": 1.5}) is True
    assert broker.store.get(7).lease_until == lease  # not extended
    assert job7.status(7)["usage"] == {"cpu_seconds": 1.5}
    forged = b'{"agent": "node-1", "resubmission": 0, "state": "DONE", "exit_code": 0}'
    headers = {"Content-Type": "application/json", "Content-Length": str(len(forged))}
    got, answer = broker.raw("job-7", "POST", "/v1/jobs/7/state", forged, headers)
    assert got == 403 and answer["error"].startswith("a job token may not call state")
    assert broker.store.get(7).state is State.ASSIGNED
    for call in (lambda: job7.status(8), lambda: job7.heartbeat(8, 0, 600)):
        error = refused(call)
        assert (error.status, str(error)) == (403, "this token is for job 7, not job 8")
    old = refused(lambda: broker.client("job-7-resubmission-1").status(7))
    assert old.status == 403 and "resubmission 1" in str(old)
    assert broker.store.get(8).state is State.ASSIGNED  # nothing moved job 8


def test_a_job_token_is_signed_only_for_the_agent_holding_the_lease(
    broker: Broker, tmp_path: Path
) -> None:
    job_id = broker.client("user-alice").submit('Executable = "/bin/true";')
    agent = broker.client("jobagent")
    matched = agent.match("node-1", SLOT, 600)
    assert matched is not None and matched["id"] == job_id
    # the same certificate under another name: not the holder
    error = refused(lambda: agent.job_token(job_id, "node-2", 0, csr_for(job_id, 0, "alice")))
    assert error.status == 403 and "is not leased to this agent" in str(error)
    # another jobagent certificate under the holder's name: not the holder either
    authority = TokenAuthority.load(private_copy(["ca.pem", "signing.pem", "signing.key"],
                                                 tmp_path / "ca"))  # fmt: skip
    key = new_key()
    issued = authority.issue(Identity(Role.JOBAGENT), key.public_key())
    files.write_token(broker.keys, "other-agent", files.Token(issued.certificate, issued.chain,
                                                              key))  # fmt: skip
    other = broker.client_from(broker.keys / "other-agent.pem", broker.keys / "other-agent.key")
    error = refused(lambda: other.job_token(job_id, "node-1", 0, csr_for(job_id, 0, "alice")))
    assert error.status == 403 and "is not leased to this agent" in str(error)
    # a request for another job's scope than the path's
    error = refused(lambda: agent.job_token(job_id, "node-1", 0, csr_for(job_id + 1, 0, "alice")))
    assert error.status == 403 and "the request asks for" in str(error)
    signed = agent.job_token(job_id, "node-1", 0, csr_for(job_id, 0, "alice"))
    assert signed["certificate"].startswith("-----BEGIN CERTIFICATE-----")


def test_people_see_their_own_jobs_and_an_admin_sees_all(broker: Broker) -> None:
    alice, bob, admin = (broker.client(n) for n in ("user-alice", "user-bob", "admin-ops"))
    mine = alice.submit('Executable = "/bin/true";')
    theirs = bob.submit('Executable = "/bin/true";')
    assert [j["id"] for j in alice.jobs()] == [mine]
    assert {j["id"] for j in admin.jobs()} == {mine, theirs}
    assert alice.status(mine)["job"]["owner"] == "alice"
    for call in (lambda: alice.status(theirs), lambda: alice.kill(theirs)):
        error = refused(call)
        assert (error.status, str(error)) == (403, f"job {theirs} is not yours")
    admin.kill(theirs, "operator says no")
    assert broker.store.get(theirs).state is State.KILLED
    assert refused(lambda: alice.status(999)).status == 404


def test_a_whole_attempt_through_the_broker(broker: Broker) -> None:
    alice, agent = broker.client("user-alice"), broker.client("jobagent")
    job_id = alice.submit('Executable = "/bin/true";\nArguments = "x";')
    matched = agent.match("node-1", SLOT, 600)
    assert matched is not None and matched["id"] == job_id and "/bin/true" in matched["jdl"]
    assert agent.match("node-1", SLOT, 600) is None  # one job, leased once
    agent.job_token(job_id, "node-1", 0, csr_for(job_id, 0, "alice"))
    assert agent.heartbeat(job_id, 0, 600, agent="node-1", usage={"cpu_seconds": 0.5})
    for state in ("STARTED", "RUNNING", "SAVING", "DONE"):
        agent.state(job_id, 0, state, agent="node-1", exit_code=0 if state == "DONE" else None)
    status = alice.status(job_id)
    assert status["job"]["state"] == "DONE" and status["job"]["exit_code"] == 0
    assert [h["state"] for h in status["history"]][-1] == "DONE"
    assert status["usage"] == {"cpu_seconds": 0.5}
    # states move forward only; a report retried (its answer lost) is taken again
    error = refused(lambda: agent.state(job_id, 0, "RUNNING", agent="node-1"))
    assert error.status == 409
    agent.state(job_id, 0, "DONE", agent="node-1", exit_code=0)
    assert [h["state"] for h in alice.status(job_id)["history"]].count("DONE") == 1
    error = refused(lambda: agent.state(job_id, 0, "DONE", agent="node-2"))
    assert error.status == 409  # not another agent's


def test_a_job_killed_at_the_broker_stops_at_its_agents_next_heartbeat(broker: Broker) -> None:
    alice, agent = broker.client("user-alice"), broker.client("jobagent")
    job_id = alice.submit('Executable = "/bin/true";')
    agent.match("node-1", SLOT, 600)
    agent.state(job_id, 0, "STARTED", agent="node-1")
    alice.kill(job_id, "wrong input")
    assert agent.heartbeat(job_id, 0, 600, agent="node-1") is False
    error = refused(lambda: agent.state(job_id, 0, "RUNNING", agent="node-1"))
    assert error.status == 409 and "lease" in str(error)


def test_a_policy_refusal_is_excluded_from_the_next_match(broker: Broker) -> None:
    alice, agent = broker.client("user-alice"), broker.client("jobagent")
    first, second = alice.submit('Executable = "/bin/true";'), alice.submit(
        'Executable = "/bin/true";')  # fmt: skip
    assert agent.match("node-1", SLOT, 600, exclude=[first])["id"] == second  # type: ignore[index]
    hungry = alice.submit('Executable = "/bin/true";\nRequirements = other.Memory > 99999;')
    assert agent.match("node-1", SLOT, 600, exclude=[first]) is None  # hungry does not fit
    assert broker.store.get(hungry).state is State.WAITING


# -- hostile requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{", {}, 400, "the body is not JSON"),
        (b'{"jdl": "x", "jdl": "y"}', {}, 400, "duplicate key"),
        (b'{"jdl": "Executable = \\"/bin/true\\";", "priority": NaN}', {}, 400, "NaN"),
        (b'{"jdl": "x", "owner": "bob"}', {}, 400, "unknown field 'owner'"),
        (b'{"priority": 1}', {}, 400, "missing field jdl"),
        (b'{"jdl": 5}', {}, 400, "field jdl must be a string"),
        (b'{"jdl": "a\\u0000b"}', {}, 400, "NUL"),
        (b"[1]", {}, 400, "must be a JSON object"),
        (b"\xff\xfe", {}, 400, "the body is not JSON"),
        (b'{"jdl": "x"}', {"Content-Type": "text/plain"}, 415, "application/json"),
        (b'{"jdl": "Executable = "}', {}, 400, "the submitted JDL"),
    ],
)  # fmt: skip
def test_a_malformed_body_is_400_with_why(
    broker: Broker, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    sent = {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}
    got, answer = broker.raw("user-alice", "POST", "/v1/jobs", body, sent)
    assert got == status
    assert message in answer["error"]
    assert broker.store.jobs() == []


def test_an_oversized_body_is_refused_from_its_length_and_others_are_served(
    broker: Broker,
) -> None:
    huge = str(4 * api.JDL_CAP + 1)
    headers = {"Content-Type": "application/json", "Content-Length": huge}
    got, answer = broker.raw("user-alice", "POST", "/v1/jobs", None, headers)
    assert got == 413 and "over submit's cap" in answer["error"]
    got, answer = broker.raw("user-alice", "POST", "/v1/jobs", b'{"jdl": "x"}',
                             {"Content-Type": "application/json",
                              "Transfer-Encoding": "chunked"})  # fmt: skip
    assert got == 411
    assert broker.client("user-alice").jobs() == []  # still serving


@pytest.mark.parametrize(
    "path",
    ["/v1/jobs/../jobs", "/v1/jobs/%2e%2e/1", "/v1/jobs/0", "/v1/jobs/1/../../match",
     "/v1/jobs/" + "9" * 40, "/v1/jobs/1%00", "/v1//jobs", "/v1/jobs/-1", "/etc/passwd"],
)  # fmt: skip
def test_path_tricks_find_no_endpoint(broker: Broker, path: str) -> None:
    got, answer = broker.raw("admin-ops", "GET", path)
    assert got == 404 and "no GET" in answer["error"]


def test_a_known_path_with_another_method_is_405(broker: Broker) -> None:
    got, _ = broker.raw("admin-ops", "DELETE", "/v1/jobs")
    assert got == 405


def test_a_slow_client_holds_only_its_own_connection(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "HANDSHAKE_TIMEOUT", 1.0)
    port = broker.server.server_address[1]
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        stalled[0].sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        started = time.monotonic()
        assert broker.client("user-alice").jobs() == []  # served meanwhile
        assert time.monotonic() - started < 1.0
        stalled[1].settimeout(5)
        assert stalled[1].recv(10) == b""  # dropped at the handshake timeout
    finally:
        for sock in stalled:
            sock.close()
    assert logged(broker, lambda line: "no handshake within" in str(line.get("error")))


# -- the log --------------------------------------------------------------------------------


def test_one_log_line_per_request_says_who_and_never_a_secret(broker: Broker) -> None:
    alice, agent = broker.client("user-alice"), broker.client("jobagent")
    job_id = alice.submit('Executable = "/bin/true";')
    agent.match("node-1", SLOT, 600)
    agent.job_token(job_id, "node-1", 0, csr_for(job_id, 0, "alice"))
    refused(lambda: alice.match("x", SLOT, 60))
    requests = [line for line in broker.log if "route" in line]
    assert [(r["route"], r["role"], r["status"]) for r in requests] == [
        ("submit", "user", 200), ("match", "jobagent", 200), ("job_token", "jobagent", 200),
        ("match", "user", 403)]  # fmt: skip
    assert requests[0]["user"] == "alice" and len(requests[0]["fingerprint"]) == 16
    text = json.dumps(broker.log)
    assert "BEGIN" not in text and "/bin/true" not in text


# -- defences found by review -----------------------------------------------------------


def test_a_client_trickling_its_request_loses_the_connection_at_the_deadline(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read's timeout is not enough: one byte every 0.3 s would hold a connection
    for ever. The whole request must come within IO_TIMEOUT."""
    monkeypatch.setattr(service, "IO_TIMEOUT", 1.0)
    private_copy(["user-alice.pem", "user-alice.key"], broker.keys)
    context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    context.load_cert_chain(broker.keys / "user-alice.pem", broker.keys / "user-alice.key")
    port = broker.server.server_address[1]
    started = time.monotonic()
    closed = False
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:  # fmt: skip
        try:
            for byte in b"GET /v1/jobs HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"x" * 30:
                tls.sendall(bytes([byte]))
                time.sleep(0.3)
        except OSError:
            closed = True  # the server shut the connection while we trickled
    assert closed
    assert time.monotonic() - started < 5
    assert logged(broker, lambda line: line.get("error") == "no whole request in time")


def test_one_address_cannot_take_every_connection(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_PER_PEER", 3)
    port = broker.server.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        time.sleep(0.2)
        error = refused(lambda: broker.client("user-alice").jobs())
        assert error.status is None  # closed at accept
        assert logged(broker, lambda line: "from one address" in str(line.get("error")))
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert broker.client("user-alice").jobs() == []  # its slots are back


def test_a_repeated_submit_or_match_is_carried_out_once(broker: Broker) -> None:
    body = b'{"jdl": "Executable = \\"/bin/true\\";", "request": "k1"}'
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    first = broker.raw("user-alice", "POST", "/v1/jobs", body, headers)
    again = broker.raw("user-alice", "POST", "/v1/jobs", body, headers)
    assert first == again == (200, {"id": 1})
    assert len(broker.store.jobs()) == 1
    by_bob = broker.raw("user-bob", "POST", "/v1/jobs", body, headers)  # keys are per caller
    assert by_bob == (200, {"id": 2})
    match = json.dumps({"agent": "a", "slot": SLOT, "lease": 60, "request": "m1"}).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(match))}
    one = broker.raw("jobagent", "POST", "/v1/match", match, headers)
    two = broker.raw("jobagent", "POST", "/v1/match", match, headers)
    assert one == two and one[1]["job"]["id"] == 1
    assert broker.store.get(2).state is State.WAITING  # the repeat leased nothing more


def test_a_stale_revocation_list_is_the_brokers_fault_503_not_the_callers(
    broker: Broker,
) -> None:
    certs = Path(broker.server.endpoints.certs)
    authority = broker.server.endpoints.authority
    real = authority.clock
    authority.clock = lambda: real() - timedelta(days=30)
    try:
        stale = authority.revocation_list(set(), next_update=timedelta(days=1))
    finally:
        authority.clock = real
    (certs / "crl.pem").write_bytes(stale.public_bytes(serialization.Encoding.PEM))
    got, answer = broker.raw("user-alice", "GET", "/v1/jobs")
    assert got == 503 and "revocation list is out of date" in answer["error"]


def test_a_busy_queue_is_503_and_only_a_missing_job_is_404(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pilot drops a job the broker says is gone (404): a queue too busy to read
    that job must say "retry" instead, or the job is run twice."""
    job = broker.client("user-alice").submit('Executable = "/bin/true";')
    assert broker.raw("user-alice", "GET", "/v1/jobs/99")[0] == 404

    def busy(job_id: int) -> object:
        raise StoreError(f"{broker.store.where}: database is locked; retry")

    monkeypatch.setattr(broker.store, "get", busy)
    got, answer = broker.raw("user-alice", "GET", f"/v1/jobs/{job}")
    assert got == 503 and "database is locked" in answer["error"]
    assert str(broker.store.where) not in answer["error"]


def test_a_stopping_broker_answers_the_requests_it_carries_and_refuses_new_ones(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping closes the queue: a request still inside the endpoints must get its
    answer first (a closed queue answered "no job" to such a request, and the pilot
    dropped its job), and a request arriving meanwhile gets 503 and retries."""
    alice, waiting = broker.client("user-alice"), broker.client("user-bob")
    job = alice.submit('Executable = "/bin/true";')
    waiting.jobs()  # its connection is open before the stop
    inside, release = threading.Event(), threading.Event()
    real_get = broker.store.get

    def slow_get(job_id: int) -> object:
        inside.set()
        assert release.wait(10)
        return real_get(job_id)

    monkeypatch.setattr(broker.store, "get", slow_get)
    answers: list[object] = []
    carried = threading.Thread(target=lambda: answers.append(alice.status(job)))
    carried.start()
    assert inside.wait(10)
    broker.server.shutdown()  # serve_forever returns, as on SIGTERM
    stopped: list[bool] = []
    stopping = threading.Thread(target=lambda: stopped.append(broker.server.stop(grace=10)))
    stopping.start()
    deadline = time.monotonic() + 10
    while not broker.server._draining:  # the stop has begun
        assert time.monotonic() < deadline
        time.sleep(0.01)
    late = refused(waiting.jobs)  # a 503: retried, here after its only attempt
    assert "the broker is stopping; retry" in str(late)
    assert stopped == []  # still waiting for the carried request
    release.set()
    carried.join(10)
    stopping.join(10)
    assert stopped == [True]
    assert isinstance(answers[0], dict) and answers[0]["job"]["id"] == job


def test_integers_past_64_bits_and_too_many_query_fields_are_400(broker: Broker) -> None:
    body = b'{"jdl": "Executable = \\"/bin/true\\";", "priority": 9223372036854775808}'
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    got, answer = broker.raw("user-alice", "POST", "/v1/jobs", body, headers)
    assert got == 400 and "64 bits" in answer["error"]
    query = "&".join(f"a{i}=1" for i in range(9))
    got, answer = broker.raw("user-alice", "GET", f"/v1/jobs?{query}")
    assert got == 400 and "more than 8 fields" in answer["error"]


def test_a_pilot_refused_by_its_policy_stops_asking_instead_of_cycling(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox_agent.agent import backends
    from sandbox_agent.jdl import Slot

    monkeypatch.setattr(backends, "EXCLUDED_CAP", 1)  # the broker hears of one refusal only
    alice = broker.client("user-alice")
    jobs = [alice.submit('Executable = "/bin/true";') for _ in range(3)]
    queue = backends.BrokerQueue(broker.client("jobagent"), "node-1", CERTS / "ca.pem")
    assert queue.match(Slot(SLOT), lambda _job: "the policy says no", 60) is None
    offers = [broker.store.get(j).resubmission for j in jobs]
    assert max(offers) <= 2 and all(broker.store.get(j).state is State.WAITING for j in jobs)


# -- outputs and logs kept at the broker ----------------------------------------------------


def saving_job(broker: Broker) -> int:
    """Job 7, SAVING: its agent is keeping its files."""
    lease_testuser_jobs(broker)
    agent = broker.client("jobagent")
    for state in ("STARTED", "RUNNING", "SAVING"):
        agent.state(7, 0, state, agent="node-1")
    return 7


def test_a_job_token_keeps_its_files_while_saving_and_its_owner_fetches_them(
    broker: Broker,
) -> None:
    job = saving_job(broker)
    token = broker.client("job-7")
    token.send_file(job, "outputs/result.root", b"\x00events\xff")
    token.send_file(job, "logs/stdout", b"hello\n")
    token.send_file(job, "logs/stdout", b"hello\n")  # a repeat of the same: done
    error = refused(lambda: token.send_file(job, "logs/stdout", b"other\n"))
    assert error.status == 409 and "never replaced" in str(error)
    listed = {f["name"]: f["size"] for f in token.files(job)["files"]}
    assert listed == {"outputs/result.root": 8, "logs/stdout": 6}
    admin = broker.client("admin-ops")
    assert admin.fetch_file(job, "outputs/result.root") == b"\x00events\xff"
    error = refused(lambda: broker.client("user-alice").fetch_file(job, "logs/stdout"))
    assert (error.status, str(error)) == (403, f"job {job} is not yours")
    error = refused(lambda: token.fetch_file(job, "logs/stdout"))
    assert error.status == 403  # the job token (the payload's) reads no kept file back


def test_files_are_taken_only_while_the_job_is_saving(broker: Broker) -> None:
    lease_testuser_jobs(broker)
    broker.client("jobagent").state(7, 0, "STARTED", agent="node-1")  # the payload may run
    error = refused(lambda: broker.client("job-7").send_file(7, "outputs/x", b"x"))
    assert error.status == 409 and "while its agent saves it" in str(error)
    error = refused(lambda: broker.client("job-8").send_file(7, "outputs/x", b"x"))
    assert (error.status, str(error)) == (403, "this token is for job 8, not job 7")


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("outputs/../../../etc/passwd", 400, "neither empty, '.' nor '..'"),
        ("outputs/%2e%2e/x", 400, "neither empty, '.' nor '..'"),
        ("%2fetc/passwd", 400, "starts with outputs/ or logs/"),
        ("outputs//x", 400, "neither empty"),
        ("outputs/a%00b", 400, "control character"),
        ("outputs/a%0ab", 400, "control character"),
        ("secrets/x", 400, "starts with outputs/ or logs/"),
        ("outputs/%ff", 400, "not UTF-8"),
    ],
)  # fmt: skip
def test_file_names_with_path_tricks_are_refused(
    broker: Broker, path: str, status: int, message: str
) -> None:
    job = saving_job(broker)
    data = b"x"
    headers = {"Content-Type": "application/octet-stream", "Content-Length": "1",
               "X-Content-SHA256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    got, answer = broker.raw("job-7", "PUT", f"/v1/jobs/{job}/files/{path}", data, headers)
    assert got == status and message in answer["error"]
    assert broker.client("job-7").files(job)["files"] == []
    assert not (broker.server.endpoints.files.root.parent / "etc").exists()


def test_a_file_whose_digest_or_type_is_wrong_is_refused(broker: Broker) -> None:
    job = saving_job(broker)
    base = {"Content-Type": "application/octet-stream", "Content-Length": "1"}
    got, answer = broker.raw("job-7", "PUT", f"/v1/jobs/{job}/files/outputs/x", b"x",
                             {**base, "X-Content-SHA256": "0" * 64})  # fmt: skip
    assert got == 400 and "SHA-256" in answer["error"]
    got, _ = broker.raw("job-7", "PUT", f"/v1/jobs/{job}/files/outputs/x", b"x",
                        {**base, "Content-Type": "application/json",
                         "X-Content-SHA256": hashlib.sha256(b"x").hexdigest()})  # fmt: skip
    assert got == 415
    assert broker.client("job-7").files(job)["files"] == []


def test_a_pilot_on_a_broker_keeps_binds_away_from_the_token_it_was_given(
    tmp_path: Path,
) -> None:
    """Its jobagent token may live anywhere (not under HOME/certs): a job asking to bind
    the directory that holds it is refused, as one asking for HOME/certs is."""
    from sandbox_agent.agent.pilot import Pilot, PilotConfig
    from sandbox_agent.jdl import load_job
    from sandbox_agent.policy import PolicyRejection, load_policy, policy_dirs

    key = Path("/cvmfs/site/node/jobagent.key")
    config = PilotConfig(home=tmp_path, policy=load_policy("default", policy_dirs(tmp_path)),
                         broker_token=(key.with_suffix(".pem"), key, CERTS / "ca.pem"))  # fmt: skip
    pilot = Pilot(config, lambda _event: None)
    assert str(key) in pilot.credentials()
    job = load_job('Executable = "/bin/true";\nReadOnlyBinds = "/cvmfs/site/node";\n')
    with pytest.raises(PolicyRejection, match="jobagent"):
        pilot.compose(job)
    config.broker_token = None  # the home's queue: that path is nothing of the agent's
    pilot.compose(job)


def test_every_route_has_its_handler_and_every_handler_its_route() -> None:
    """The service routes by api.ROUTES and calls Endpoints.do_<name>: a route with no
    handler would be a 500, a handler with no route dead code."""
    from sandbox_agent.broker.endpoints import Endpoints

    handlers = {name.removeprefix("do_") for name in dir(Endpoints) if name.startswith("do_")}
    assert handlers == {route.name for route in api.ROUTES}
