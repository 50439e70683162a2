"""Verification: every failure is its own error with an exact message."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import CERTS, JOBAGENT, fixture_chain

from sandbox_agent.tokens import (
    Identity,
    JobScope,
    MalformedToken,
    Role,
    Token,
    TokenAuthority,
    TokenExpired,
    TokenNotYetValid,
    TokenRevoked,
    TokenVerifier,
    UnknownIssuer,
    WrongJob,
    WrongRole,
    files,
)
from sandbox_agent.tokens.errors import StaleRevocationList
from sandbox_agent.tokens.keys import new_key


def test_committed_fixtures_verify(verifier: TokenVerifier) -> None:
    cert, chain = fixture_chain("jobagent")
    assert verifier.verify(cert, chain, role=Role.JOBAGENT).identity == JOBAGENT
    cert, chain = fixture_chain("job-7")
    verified = verifier.verify(cert, chain, role=Role.JOB, job_id=7, resubmission=0)
    assert verified.identity == Identity(Role.JOB, JobScope(7, 0, "testuser"))
    assert verified.fingerprint.startswith("sha256:") and len(verified.fingerprint) == 71
    assert [c.subject.rfc4514_string() for c in verified.chain] == [
        "OU=queueid=7/resubmission=0,CN=testuser,CN=Jobs",  # RFC 4514 order: last first
        "CN=sandbox-agent TEST signing CA,O=sandbox-agent",
        "CN=sandbox-agent TEST root CA,O=sandbox-agent",
    ]  # fmt: skip


def test_expired(verifier: TokenVerifier) -> None:
    cert, chain = fixture_chain("expired-jobagent")
    with pytest.raises(TokenExpired) as info:
        verifier.verify(cert, chain)
    assert str(info.value).startswith("token expired at 2020-01-02 00:00:00Z (now ")
    assert str(info.value).endswith("get a new one")


def test_not_yet_valid(verifier: TokenVerifier) -> None:
    cert, chain = fixture_chain("not-yet-valid-jobagent")
    with pytest.raises(TokenNotYetValid) as info:
        verifier.verify(cert, chain)
    assert str(info.value).startswith("token is not valid before 2070-01-01 00:00:00Z (now ")
    assert "check this machine's clock" in str(info.value)


def test_unknown_issuer(verifier: TokenVerifier) -> None:
    cert, chain = fixture_chain("unknown-ca-jobagent")
    with pytest.raises(UnknownIssuer) as info:
        verifier.verify(cert, chain)
    assert str(info.value).startswith("not issued by a trusted CA (")
    # and it verifies against its own CA, so the refusal is about trust, not the file
    rogue = TokenVerifier(files.load_certificates(CERTS / "rogue-ca.pem"))
    assert rogue.verify(cert, chain).identity == JOBAGENT


def test_missing_intermediate_is_unknown_issuer(verifier: TokenVerifier) -> None:
    cert, _ = fixture_chain("jobagent")
    with pytest.raises(UnknownIssuer):
        verifier.verify(cert, ())


def test_wrong_role_both_ways(verifier: TokenVerifier) -> None:
    agent, agent_chain = fixture_chain("jobagent")
    job, job_chain = fixture_chain("job-7")
    with pytest.raises(WrongRole) as info:
        verifier.verify(agent, agent_chain, role=Role.JOB)
    assert str(info.value) == "this is a jobagent token; a job token is needed here"
    with pytest.raises(WrongRole) as info:
        verifier.verify(job, job_chain, role=Role.JOBAGENT)
    assert str(info.value) == "this is a job token; a jobagent token is needed here"
    with pytest.raises(WrongRole) as info:
        verifier.verify(agent, agent_chain, job_id=7)
    assert str(info.value) == "this is a jobagent token, not a job token"


def test_user_and_admin_fixtures(verifier: TokenVerifier) -> None:
    for name, user in (("user-alice", "alice"), ("user-bob", "bob")):
        cert, chain = fixture_chain(name)
        verified = verifier.verify(cert, chain, role=Role.USER)
        assert verified.identity == Identity(Role.USER, user=user)
        assert verified.identity.owner == user
        assert verified.chain[0].subject.rfc4514_string() == f"CN={user},CN=Users"
    cert, chain = fixture_chain("admin-ops")
    verified = verifier.verify(cert, chain, role=Role.ADMIN)
    assert verified.identity == Identity(Role.ADMIN, user="ops")
    assert verified.chain[0].subject.rfc4514_string() == "CN=ops,CN=Admins"


@pytest.mark.parametrize(
    ("name", "wanted", "message"),
    [
        ("admin-ops", Role.USER, "admin token; a user token is needed here"),
        ("jobagent", Role.USER, "this is a jobagent token; a user token is needed here"),
        ("job-7", Role.USER, "this is a job token; a user token is needed here"),
        ("broker", Role.USER, "this is a broker token; a user token is needed here"),
        ("user-alice", Role.ADMIN, "this is a user token; a"),  # a user is never an admin
        ("user-bob", Role.ADMIN, "this is a user token; a"),
        ("jobagent", Role.ADMIN, "this is a jobagent token; a"),
        ("user-alice", Role.JOBAGENT, "this is a user token; a jobagent token is needed here"),
        ("admin-ops", Role.JOB, "admin token; a job token is needed here"),
    ],
)
def test_person_roles_are_wrong_elsewhere(
    verifier: TokenVerifier, name: str, wanted: Role, message: str
) -> None:
    cert, chain = fixture_chain(name)
    with pytest.raises(WrongRole) as info:
        verifier.verify(cert, chain, role=wanted)
    assert message in str(info.value)
    assert f" {wanted.value} token is needed here" in str(info.value)


def test_a_user_token_is_not_for_a_job(verifier: TokenVerifier) -> None:
    cert, chain = fixture_chain("user-alice")
    with pytest.raises(WrongRole) as info:
        verifier.verify(cert, chain, job_id=7)
    assert str(info.value) == "this is a user token, not a job token"


def test_wrong_job_and_resubmission(verifier: TokenVerifier) -> None:
    job8, chain8 = fixture_chain("job-8")
    with pytest.raises(WrongJob) as info:
        verifier.verify(job8, chain8, role=Role.JOB, job_id=7)
    assert str(info.value) == "this token is for job 8, not job 7"
    resub, resub_chain = fixture_chain("job-7-resubmission-1")
    with pytest.raises(WrongJob) as info:
        verifier.verify(resub, resub_chain, job_id=7, resubmission=0)
    assert str(info.value) == "this token is for resubmission 1 of job 7, not resubmission 0"


def test_intermediate_cannot_be_a_leaf(verifier: TokenVerifier) -> None:
    signing = files.load_certificates(CERTS / "signing.pem")[0]
    root = files.load_certificates(CERTS / "ca.pem")[0]
    for ca in (signing, root):
        with pytest.raises(WrongRole) as info:
            verifier.verify(ca, (signing,))
        assert "this is a CA certificate" in str(info.value)


def test_revoked_with_crl() -> None:
    crl = files.load_crl(CERTS / "crl.pem")
    verifier = TokenVerifier(files.load_certificates(CERTS / "ca.pem"), crl=crl)
    cert, chain = fixture_chain("revoked-jobagent")
    with pytest.raises(TokenRevoked) as info:
        verifier.verify(cert, chain)
    assert str(info.value) == (
        f"token serial {cert.serial_number:x} is revoked by the configured CRL"
    )
    # without the CRL the same token verifies: the CRL is what stops it
    plain = TokenVerifier(files.load_certificates(CERTS / "ca.pem"))
    assert plain.verify(cert, chain).identity == JOBAGENT
    # and a token the CRL does not list still verifies with it
    good, good_chain = fixture_chain("jobagent")
    assert verifier.verify(good, good_chain).identity == JOBAGENT


def test_crl_from_another_ca_fails_closed() -> None:
    cert, chain = fixture_chain("unknown-ca-jobagent")
    rogue_verifier = TokenVerifier(
        files.load_certificates(CERTS / "rogue-ca.pem"), crl=files.load_crl(CERTS / "crl.pem")
    )
    with pytest.raises(UnknownIssuer) as info:
        rogue_verifier.verify(cert, chain)
    assert "revocation list is not signed by the CA that issued this token" in str(info.value)


def test_stale_crl_is_refused(authority: TokenAuthority) -> None:
    crl = authority.revocation_list(set(), next_update=timedelta(hours=1))
    later = datetime.now(UTC) + timedelta(hours=2)
    verifier = TokenVerifier(authority.verifier().anchors, crl=crl, clock=lambda: later)
    cert, chain = fixture_chain("jobagent")
    with pytest.raises(StaleRevocationList) as info:
        verifier.verify(cert, chain)
    assert "due for renewal" in str(info.value)


@pytest.mark.parametrize("minutes", [-4, 4])
def test_clock_skew_allowance(mint: Callable[..., Token], minutes: int) -> None:
    token = mint(JOBAGENT, lifetime=timedelta(hours=1))
    na = token.certificate.not_valid_after_utc
    nb = token.certificate.not_valid_before_utc
    # within 5 minutes past the end, or before the start: accepted
    moment = na + timedelta(minutes=minutes) if minutes > 0 else nb + timedelta(minutes=minutes)
    skewed = TokenVerifier(files.load_certificates(CERTS / "ca.pem"), clock=lambda: moment)
    assert skewed.verify(token.certificate, token.chain).identity == JOBAGENT
    beyond = moment + timedelta(minutes=2 if minutes > 0 else -2)
    strict = TokenVerifier(files.load_certificates(CERTS / "ca.pem"), clock=lambda: beyond)
    expected = TokenExpired if minutes > 0 else TokenNotYetValid
    with pytest.raises(expected):
        strict.verify(token.certificate, token.chain)


def test_not_a_sandbox_agent_token(authority: TokenAuthority) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from sandbox_agent.tokens import new_key

    key = new_key()
    now = datetime.now(UTC)
    # A perfectly valid client certificate from the trusted CA, but with no role URI:
    # the subject says JobAgent, and the subject is never what decides.
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "JobAgent")]))
        .issuer_name(authority.signer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("agent.example")]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                authority.signer.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
        .sign(authority.signer_key, hashes.SHA256())
    )
    with pytest.raises(MalformedToken) as info:
        authority.verifier().verify(cert, authority.chain)
    assert str(info.value) == "a token names exactly one role in subjectAltName, this one names 0"


def test_two_anchors_during_a_ca_rotation(tmp_path: Path) -> None:
    # A site rotating its CA trusts old and new roots together until the old tokens expire.
    old, new = TokenAuthority.create(tmp_path / "old"), TokenAuthority.create(tmp_path / "new")
    bundle = tmp_path / "trust.pem"
    bundle.write_bytes(
        (tmp_path / "old" / "ca.pem").read_bytes() + (tmp_path / "new" / "ca.pem").read_bytes()
    )
    verifier = TokenVerifier(files.load_certificates(bundle))
    for authority in (old, new):
        issued = authority.issue(JOBAGENT, new_key().public_key())
        assert verifier.verify(issued.certificate, issued.chain).identity == JOBAGENT
    only_new = TokenVerifier(files.load_certificates(tmp_path / "new" / "ca.pem"))
    issued = old.issue(JOBAGENT, new_key().public_key())
    with pytest.raises(UnknownIssuer):
        only_new.verify(issued.certificate, issued.chain)
