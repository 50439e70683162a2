"""Audit records kept at the broker, over real TLS: only the jobagent that ran an
attempt may send its record, signed by its own token, once the attempt has ended; its
owner reads it back; nothing replaces it."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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

from sandbox_agent.audit import record as audit
from sandbox_agent.broker.api import AUDIT_CAP
from sandbox_agent.tokens import Identity, Role, TokenAuthority, files, new_key
from sandbox_agent.tokens.keys import load_private_key


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from running_broker(tmp_path)


def record_bytes(job_id: int, resubmission: int, agent: str, signer: str = "jobagent",
                 keys: Path = CERTS, **changes: Any) -> bytes:  # fmt: skip
    """A signed record (the parts the broker checks) by the token ``signer``."""
    job = changes.pop("job", job_id)
    record = {"schema": audit.SCHEMA, "version": audit.VERSION, "signed_at": audit.now(),
              "job": {"id": job, "resubmission": resubmission, "state": "DONE"},
              "agent": {"name": agent}, **changes}  # fmt: skip
    certificate, *chain = files.load_certificates(keys / f"{signer}.pem")  # leaf, then its CA
    with tempfile.TemporaryDirectory() as private:  # a 0600 copy: committed keys are not
        source = keys if keys != CERTS else private_copy([f"{signer}.key"], Path(private))
        key = load_private_key(source / f"{signer}.key")
    return json.dumps(audit.sign(record, key, certificate, tuple(chain))).encode()


def done_seven(broker: Broker) -> None:
    """Jobs 1..8 of testuser leased to node-1; job 7 run to DONE by node-1."""
    lease_testuser_jobs(broker)
    agent = broker.client("jobagent")
    for state in ("STARTED", "RUNNING", "SAVING", "DONE"):
        agent.state(7, 0, state, agent="node-1")


def test_the_agent_that_ran_it_keeps_the_record_and_its_owner_reads_it(
    broker: Broker, tmp_path: Path
) -> None:
    done_seven(broker)
    data = record_bytes(7, 0, "node-1")
    agent = broker.client("jobagent")
    agent.send_audit(7, data)
    agent.send_audit(7, data)  # a repeat of the same record (its answer lost) is done
    assert broker.client("admin-ops").fetch_audit(7) == data
    assert broker.client("admin-ops").fetch_audit(7, 0) == data
    other = record_bytes(7, 0, "node-1", note="another")
    error = refused(lambda: agent.send_audit(7, other))
    assert error.status == 409 and "records are never replaced" in str(error)
    error = refused(lambda: broker.client("user-alice").fetch_audit(7))
    assert (error.status, str(error)) == (403, "job 7 is not yours")  # testuser's job
    error = refused(lambda: broker.client("admin-ops").fetch_audit(6))
    assert error.status == 404 and "no audit record" in str(error)


def test_a_record_before_the_attempt_ended_is_refused(broker: Broker) -> None:
    lease_testuser_jobs(broker)
    broker.client("jobagent").state(8, 0, "STARTED", agent="node-1")
    error = refused(lambda: broker.client("jobagent").send_audit(8, record_bytes(8, 0, "node-1")))
    assert error.status == 409 and "when the attempt has ended" in str(error)


def test_a_record_for_an_attempt_another_agent_ran_is_refused(broker: Broker) -> None:
    done_seven(broker)
    data = record_bytes(7, 0, "node-2")  # the same token, another agent's name
    error = refused(lambda: broker.client("jobagent").send_audit(7, data))
    assert (error.status, str(error)) == (403, "this agent did not run job 7.0")


def test_a_record_signed_by_another_token_than_the_senders_is_refused(
    broker: Broker, tmp_path: Path
) -> None:
    done_seven(broker)
    authority = TokenAuthority.load(private_copy(["ca.pem", "signing.pem", "signing.key"],
                                                 tmp_path / "ca"))  # fmt: skip
    key = new_key()
    issued = authority.issue(Identity(Role.JOBAGENT), key.public_key())
    files.write_token(tmp_path / "other", "other-agent",
                      files.Token(issued.certificate, issued.chain, key))  # fmt: skip
    data = record_bytes(7, 0, "node-1", signer="other-agent", keys=tmp_path / "other")
    error = refused(lambda: broker.client("jobagent").send_audit(7, data))
    assert (error.status, str(error)) == (403, "the record is signed by another token than "
                                               "this caller's")  # fmt: skip


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: record_bytes(7, 0, "node-1").replace(b'"DONE"', b'"DONF"'),
         "the signature does not match the record"),
        (lambda: record_bytes(7, 0, "node-1", signer="job-7"), "signed by another token"),
        (lambda: record_bytes(6, 0, "node-1"), "the record is about job 6, not job 7"),
        (lambda: b"not json", "not a valid audit record"),
        (lambda: b"[1, 2]", "not a valid audit record"),
    ],
)  # fmt: skip
def test_a_record_that_is_not_valid_is_refused_and_nothing_kept(
    broker: Broker, make: Callable[[], bytes], message: str
) -> None:
    done_seven(broker)
    error = refused(lambda: broker.client("jobagent").send_audit(7, make()))
    assert error.status in (400, 403) and message in str(error), error
    assert refused(lambda: broker.client("admin-ops").fetch_audit(7)).status == 404


def test_only_a_jobagent_sends_records(broker: Broker) -> None:
    done_seven(broker)
    for who in ("user-alice", "job-7", "admin-ops"):
        error = refused(lambda w=who: broker.client(w).send_audit(7, b"{}"))
        assert error.status == 403 and "may not call put_audit" in str(error)


def test_a_lease_that_ended_does_not_count_as_having_run_the_next_attempt(
    broker: Broker,
) -> None:
    """node-1 held job 7 and handed it back; node-2 ran its next attempt. The queue
    writes the hand-back with the next resubmission and the old holder: node-1 must
    not pass for the agent of 7.1 and take the place of node-2's record."""
    lease_testuser_jobs(broker)
    agent = broker.client("jobagent")
    agent.release(7, "node-1", 0, "stopping")
    matched = agent.match("node-2", SLOT, 600)
    assert matched is not None and (matched["id"], matched["resubmission"]) == (7, 1)
    for state in ("STARTED", "RUNNING", "SAVING", "DONE"):
        agent.state(7, 1, state, agent="node-2")
    error = refused(lambda: agent.send_audit(7, record_bytes(7, 1, "node-1")))
    assert (error.status, str(error)) == (403, "this agent did not run job 7.1")
    agent.send_audit(7, record_bytes(7, 1, "node-2"))  # the one that ran it
    error = refused(lambda: agent.send_audit(7, record_bytes(7, 0, "node-2")))
    assert (error.status, str(error)) == (403, "this agent did not run job 7.0")


def test_a_record_for_a_job_never_matched_is_refused(broker: Broker) -> None:
    lease_testuser_jobs(broker)
    waiting = broker.store.submit('Executable = "/bin/true";\n', owner="testuser")
    error = refused(lambda: broker.client("jobagent").send_audit(
        waiting, record_bytes(waiting, 0, "node-1")))  # fmt: skip
    assert (error.status, str(error)) == (403, f"this agent did not run job {waiting}.0")


def test_a_record_whose_digest_or_size_is_wrong_is_refused(broker: Broker) -> None:
    done_seven(broker)
    data = record_bytes(7, 0, "node-1")
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
               "X-Content-SHA256": "0" * 64}  # fmt: skip
    got, answer = broker.raw("jobagent", "PUT", "/v1/jobs/7/audit", data, headers)
    assert got == 400 and "SHA-256" in answer["error"]
    headers = {**headers, "Content-Length": str(AUDIT_CAP + 1)}  # refused from the length
    got, answer = broker.raw("jobagent", "PUT", "/v1/jobs/7/audit", None, headers)
    assert got == 413 and f"cap of {AUDIT_CAP}" in answer["error"]


@pytest.mark.parametrize("query", ["resubmission=abc", "resubmission=%C2%B2",
                                   "resubmission=1234567890", "resubmission=-1"])  # fmt: skip
def test_a_resubmission_that_is_no_number_is_400(broker: Broker, query: str) -> None:
    done_seven(broker)
    got, answer = broker.raw("admin-ops", "GET", f"/v1/jobs/7/audit?{query}")
    assert (got, answer["error"]) == (400, "resubmission: give a number")


def test_a_record_with_values_of_the_wrong_kind_is_400_not_a_crash(broker: Broker) -> None:
    done_seven(broker)
    agent = broker.client("jobagent")
    for job in ("7", 7.0, True):
        error = refused(lambda j=job: agent.send_audit(7, record_bytes(7, 0, "node-1", job=j)))
        assert error.status == 400 and "must be integers" in str(error), error
    nested = b"[" * 100_000 + b"]" * 100_000
    error = refused(lambda: broker.client("jobagent").send_audit(7, nested))
    assert error.status == 400
