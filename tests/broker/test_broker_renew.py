"""POST /v1/agent/token over real TLS: a jobagent renews its own token at the broker,
which decides (its lifetime, the site's limit, revocation); an expired token never gets
past the handshake; no other role may renew."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from broker_support import SLOT, Broker, refused, running_broker
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from token_support import aged

from sandbox_agent.broker.client import BrokerClient
from sandbox_agent.tokens import (
    RenewalPolicy,
    Role,
    Token,
    TokenAuthority,
    files,
    fingerprint,
    identity_of,
)
from sandbox_agent.tokens.keys import key_pem, same_key


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    yield from running_broker(tmp_path)


def authority(broker: Broker) -> TokenAuthority:
    return TokenAuthority.load(broker.server.endpoints.certs)


def agent_token(broker: Broker, name: str, *, issued_ago: timedelta = timedelta(0),
                left: timedelta = timedelta(hours=1)) -> tuple[Token, BrokerClient]:  # fmt: skip
    """A jobagent token of the broker's authority, issued ``issued_ago``, expiring
    ``left`` from now, in a private directory; and a client showing it."""
    token = aged(authority(broker), issued_ago=issued_ago, left=left)
    cert, key_file = files.write_token(broker.keys.parent / "agents", name, token)
    return token, broker.client_from(cert, key_file)


def renewed(answer: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(str(answer["certificate"]).encode())


def chain_of(answer: dict[str, Any]) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(str(c).encode()) for c in answer["chain"]]


def logged(broker: Broker, route: str) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in list(broker.log) if line.get("route") == route]
        if lines:
            return lines
        time.sleep(0.02)
    return []


def test_a_jobagent_renews_its_token_for_its_own_key_and_works_on_with_it(
    broker: Broker,
) -> None:
    first, client = agent_token(broker, "node-1")
    answer = client.renew()
    certificate = renewed(answer)
    assert identity_of(certificate).role is Role.JOBAGENT
    assert same_key(first.key, certificate)
    assert certificate.not_valid_after_utc > first.certificate.not_valid_after_utc
    assert answer["not_after"] == certificate.not_valid_after_utc.isoformat()
    origin = identity_of(certificate).origin
    assert origin is not None and origin.serial == first.certificate.serial_number
    assert "_log" not in answer  # what the broker logs of it stays in its log
    # the renewed token works: it matches, and renews again, naming the same first token
    client.present(files.pem_bundle([certificate, *chain_of(answer)]), key_pem(first.key))
    broker.client("user-alice").submit('Executable = "/bin/true";')
    job = client.match("node-1", SLOT, 60)
    assert job is not None
    # its lease is held in the renewed certificate's name
    assert job["agent"] == "node-1@" + fingerprint(certificate).removeprefix("sha256:")[:16]
    again = renewed(client.renew())
    assert identity_of(again).origin == origin
    # the broker's log names the token it issued (its serial), never the token itself
    line = logged(broker, "renew")[0]
    assert (line["status"], line["role"], line["serial"]) == (
        200, "jobagent", f"{certificate.serial_number:x}")  # fmt: skip
    assert "BEGIN" not in json.dumps(list(broker.log))


@pytest.mark.parametrize("who", ["job-7", "user-alice", "admin-ops"])
def test_no_other_role_may_renew(broker: Broker, who: str) -> None:
    error = refused(lambda: broker.client(who).renew())
    assert error.status == 403
    article = "an" if who.startswith("admin") else "a"
    assert str(error).startswith(f"{article} {who.split('-')[0]} token may not call renew")


def test_an_expired_token_cannot_renew(broker: Broker) -> None:
    for client in (broker.client("expired-jobagent"),
                   agent_token(broker, "late", left=timedelta(seconds=-2))[1]):  # fmt: skip
        error = refused(client.renew)
        assert error.status is None and not error.transient  # refused, never retried
        assert "refused this certificate in the TLS handshake" in str(error)
        assert "certificate expired" in str(error)


def test_a_revoked_token_and_the_renewals_of_a_revoked_one_cannot_renew(
    broker: Broker,
) -> None:
    error = refused(broker.client("revoked-jobagent").renew)
    assert error.status == 403 and "revoked" in str(error)
    first, client = agent_token(broker, "node-2")
    answer = client.renew()
    client.present(files.pem_bundle([renewed(answer), *chain_of(answer)]), key_pem(first.key))
    # the site revokes the token it issued (its file on the broker host): its renewal falls
    certs = broker.server.endpoints.certs
    signer = authority(broker)
    crl = signer.revocation_list({first.certificate.serial_number},
                                 previous=files.load_crl(certs / files.CRL))  # fmt: skip
    (certs / files.CRL).write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    error = refused(client.renew)
    assert error.status == 403
    assert f"renews serial {first.certificate.serial_number:x}, which is revoked" in str(error)
    assert refused(lambda: client.match("node-2", SLOT, 60)).status == 403


def test_the_broker_decides_how_long_and_until_when(broker: Broker) -> None:
    endpoints = broker.server.endpoints
    endpoints.renewal = RenewalPolicy(lifetime=timedelta(minutes=90), limit=timedelta(hours=3))
    _young, client = agent_token(broker, "young")
    certificate = renewed(client.renew())
    lifetime = certificate.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(minutes=85) < lifetime <= timedelta(minutes=90)
    old, client = agent_token(broker, "old", issued_ago=timedelta(hours=4))
    error = refused(client.renew)
    assert error.status == 403
    assert str(error).startswith(
        f"the first token of its line (serial {old.certificate.serial_number:x}) was issued at "
    )
    assert str(error).endswith("this site renews a jobagent token for 3 hours after that at "
                               "most: give the node a new token")  # fmt: skip
    endpoints.renewal = RenewalPolicy(limit=timedelta(0))
    error = refused(agent_token(broker, "any")[1].renew)
    assert (error.status, str(error)) == (
        403, "this site renews no jobagent token: give the node a new one")  # fmt: skip
