"""Issuance: lifetimes, extensions, and job tokens only from a CSR of a leased job."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import JOBAGENT, fixture_chain
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from sandbox_agent.tokens import (
    Identity,
    IssuanceRefused,
    JobScope,
    KeyType,
    MalformedToken,
    Role,
    Token,
    TokenAuthority,
    fingerprint,
    identity_of,
    job_request,
    new_job_request,
    new_key,
)
from sandbox_agent.tokens.authority import DEFAULT_LIFETIME, JOB_GRACE, MAX_LIFETIME

SCOPE = JobScope(7, 0, "jdoe")
ALICE = Identity(Role.USER, user="alice")
OPS = Identity(Role.ADMIN, user="ops")


def always(_fp: str, _scope: JobScope) -> bool:
    return True


def test_token_profile(mint: Callable[..., Token]) -> None:
    token = mint(JOBAGENT)
    cert = token.certificate
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.key_encipherment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["urn:sandbox-agent:role:jobagent"]
    assert cert.subject.rfc4514_string() == "CN=JobAgent"
    now = datetime.now(UTC)
    # notBefore a few minutes back for clock skew; one day by default
    assert timedelta(minutes=4) < now - cert.not_valid_before_utc < timedelta(minutes=6)
    assert abs(cert.not_valid_after_utc - now - timedelta(days=1)) < timedelta(minutes=1)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_broker_token_is_also_a_server(mint: Callable[..., Token]) -> None:
    token = mint(Identity(Role.BROKER), dns_names=("broker.example",), ip_addresses=("127.0.0.1",))
    eku = token.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    san = token.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]


@pytest.mark.parametrize("identity", [JOBAGENT, ALICE, OPS, Identity(Role.JOB, SCOPE)])
@pytest.mark.parametrize(
    "names", [{"dns_names": ("broker.example",)}, {"ip_addresses": ("127.0.0.1",)}]
)
def test_only_brokers_carry_host_names(
    mint: Callable[..., Token], identity: Identity, names: dict[str, tuple[str, ...]]
) -> None:
    with pytest.raises(ValueError, match="only broker tokens carry host names"):
        mint(identity, **names)


@pytest.mark.parametrize(
    ("identity", "subject", "default"),
    [
        (ALICE, "CN=alice,CN=Users", timedelta(days=1)),
        (OPS, "CN=ops,CN=Admins", timedelta(hours=1)),
    ],
)
def test_person_token_profile(
    mint: Callable[..., Token], identity: Identity, subject: str, default: timedelta
) -> None:
    cert = mint(identity).certificate
    assert identity_of(cert) == identity
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"urn:sandbox-agent:role:{identity.role.value}",
        f"urn:sandbox-agent:user:{identity.user}",
    ]
    assert san.get_values_for_type(x509.DNSName) == []
    assert cert.subject.rfc4514_string() == subject
    # a person is a client only, never the server of mutual TLS
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is False
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == default + timedelta(minutes=5)  # notBefore is 5 minutes back


@pytest.mark.parametrize(
    ("role", "too_long", "message"),
    [
        (Role.JOBAGENT, timedelta(days=2, seconds=1), "a jobagent token lives at most 2 days"),
        (Role.BROKER, timedelta(days=91), "a broker token lives at most 90 days"),
        (Role.USER, timedelta(days=30, seconds=1), "a user token lives at most 30 days"),
        (Role.ADMIN, timedelta(days=1, seconds=1), "an admin token lives at most 24 hours"),
    ],
)
def test_lifetime_caps(
    mint: Callable[..., Token], role: Role, too_long: timedelta, message: str
) -> None:
    identity = Identity(role, user="alice") if role in (Role.USER, Role.ADMIN) else Identity(role)
    with pytest.raises(ValueError, match=message):
        mint(identity, lifetime=too_long)
    assert mint(identity, lifetime=MAX_LIFETIME[role]).certificate


def test_person_lifetimes() -> None:
    assert (DEFAULT_LIFETIME[Role.USER], MAX_LIFETIME[Role.USER]) == (
        timedelta(days=1), timedelta(days=30)
    )  # fmt: skip
    assert (DEFAULT_LIFETIME[Role.ADMIN], MAX_LIFETIME[Role.ADMIN]) == (
        timedelta(hours=1), timedelta(days=1)
    )  # fmt: skip
    # every role has both, so issue() never fails with a KeyError
    assert set(DEFAULT_LIFETIME) == set(MAX_LIFETIME) == set(Role)


def test_job_token_from_csr(authority: TokenAuthority, mint: Callable[..., Token]) -> None:
    agent = mint(JOBAGENT)
    key, csr = new_job_request(SCOPE)
    seen: list[tuple[str, JobScope]] = []

    def leased(agent_fingerprint: str, scope: JobScope) -> bool:
        seen.append((agent_fingerprint, scope))
        return True

    issued = authority.issue_job_token(
        csr, agent=agent.certificate, agent_chain=agent.chain, scope=SCOPE,
        ttl_seconds=3600, leased=leased,
    )  # fmt: skip
    cert = issued.certificate
    assert seen == [(fingerprint(agent.certificate), SCOPE)]
    assert identity_of(cert) == Identity(Role.JOB, SCOPE)
    assert cert.subject.rfc4514_string() == "OU=queueid=7/resubmission=0,CN=jdoe,CN=Jobs"
    # the key never travelled: the certificate holds the public half of the agent's key
    assert cert.public_key() == key.public_key()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(seconds=3600) + JOB_GRACE + timedelta(minutes=5)
    verified = authority.verifier().verify(cert, issued.chain, role=Role.JOB, job_id=7)
    assert verified.identity.job == SCOPE


def test_job_token_lifetime_is_capped(
    authority: TokenAuthority, mint: Callable[..., Token]
) -> None:
    agent = mint(JOBAGENT)
    _, csr = new_job_request(SCOPE)
    issued = authority.issue_job_token(
        csr, agent=agent.certificate, agent_chain=agent.chain, scope=SCOPE,
        ttl_seconds=30 * 86400, leased=always,
    )  # fmt: skip
    cert = issued.certificate
    assert cert.not_valid_after_utc - datetime.now(UTC) <= MAX_LIFETIME[Role.JOB]


def _refusal(authority: TokenAuthority, **overrides: object) -> str:
    agent_cert, agent_chain = fixture_chain("jobagent")
    _, csr = new_job_request(SCOPE)
    arguments: dict[str, object] = {
        "agent": agent_cert, "agent_chain": agent_chain, "scope": SCOPE,
        "ttl_seconds": 600, "leased": always,
    }  # fmt: skip
    request = overrides.pop("request", csr)
    arguments.update(overrides)
    with pytest.raises(IssuanceRefused) as info:
        authority.issue_job_token(request, **arguments)  # type: ignore[arg-type]
    return str(info.value)


def test_refused_when_the_job_is_not_leased_to_the_agent(authority: TokenAuthority) -> None:
    message = _refusal(authority, leased=lambda fp, scope: False)
    assert message == "job 7 (resubmission 0) is not leased to this agent"


def test_refused_for_a_caller_that_is_not_a_jobagent(authority: TokenAuthority) -> None:
    job_cert, job_chain = fixture_chain("job-8")
    message = _refusal(authority, agent=job_cert, agent_chain=job_chain)
    assert message == (
        "the caller is not a valid jobagent: this is a job token; a jobagent token is needed here"
    )


@pytest.mark.parametrize("name", ["user-alice", "admin-ops"])
def test_refused_for_a_person(authority: TokenAuthority, name: str) -> None:
    # Only a jobagent gets job tokens: not a user, not even an admin.
    cert, chain = fixture_chain(name)
    message = _refusal(authority, agent=cert, agent_chain=chain)
    assert message.startswith("the caller is not a valid jobagent: this is a")
    assert message.endswith(f" {name.split('-')[0]} token; a jobagent token is needed here")


def test_a_jobagent_cannot_get_a_user_token_from_a_csr(authority: TokenAuthority) -> None:
    key = new_key()
    urns = ["urn:sandbox-agent:role:user", "urn:sandbox-agent:user:jdoe"]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in urns]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    assert _refusal(authority, request=csr) == (
        "the request asks for user jdoe, but the job is job 7 (resubmission 0) of user jdoe"
    )


def test_refused_for_an_expired_or_foreign_jobagent(authority: TokenAuthority) -> None:
    expired, chain = fixture_chain("expired-jobagent")
    assert "token expired at" in _refusal(authority, agent=expired, agent_chain=chain)
    rogue, rogue_chain = fixture_chain("unknown-ca-jobagent")
    assert "not issued by a trusted CA" in _refusal(authority, agent=rogue, agent_chain=rogue_chain)


def test_refused_when_the_csr_names_another_job(authority: TokenAuthority) -> None:
    _, csr = new_job_request(JobScope(8, 0, "jdoe"))
    message = _refusal(authority, request=csr)
    assert message == (
        "the request asks for job 8 (resubmission 0) of user jdoe, "
        "but the job is job 7 (resubmission 0) of user jdoe"
    )
    _, other_user = new_job_request(JobScope(7, 0, "mallory"))
    assert "of user mallory" in _refusal(authority, request=other_user)


def test_refused_when_the_csr_signature_is_forged(authority: TokenAuthority) -> None:
    _, csr = new_job_request(SCOPE)
    der = bytearray(csr.public_bytes(Encoding.DER))
    der[-1] ^= 0x01  # flip a bit of the signature
    forged = x509.load_der_x509_csr(bytes(der))
    assert _refusal(authority, request=forged) == (
        "the certificate request's signature is not valid"
    )


def test_refused_for_a_weak_key(authority: TokenAuthority) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = job_request(SCOPE, weak)
    assert "key type not accepted" in _refusal(authority, request=csr)


def test_rsa_keys_are_accepted(authority: TokenAuthority) -> None:
    agent_cert, agent_chain = fixture_chain("jobagent")
    _, csr = new_job_request(SCOPE, KeyType.RSA)
    issued = authority.issue_job_token(
        csr, agent=agent_cert, agent_chain=agent_chain, scope=SCOPE, ttl_seconds=60,
        leased=always,
    )  # fmt: skip
    assert isinstance(issued.certificate.public_key(), rsa.RSAPublicKey)


def test_create_writes_a_private_authority(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    authority = TokenAuthority.create(directory)
    assert directory.stat().st_mode & 0o777 == 0o700
    for name in ("ca.key", "signing.key"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600
    assert (directory / "ca.pem").stat().st_mode & 0o777 == 0o644
    loaded = TokenAuthority.load(directory)
    assert loaded.signer == authority.signer and loaded.root == authority.root
    with pytest.raises(MalformedToken, match="an authority is already there"):
        TokenAuthority.create(directory)


def test_authority_without_intermediate(tmp_path: Path) -> None:
    authority = TokenAuthority.create(tmp_path / "ca", intermediate=False)
    assert authority.chain == () and authority.signer == authority.root
    key = new_key()
    issued = authority.issue(JOBAGENT, key.public_key())
    assert authority.verifier().verify(issued.certificate, issued.chain).identity == JOBAGENT


def test_tokens_never_outlive_their_issuer(tmp_path: Path) -> None:
    authority = TokenAuthority.create(tmp_path / "ca")
    later = authority.signer.not_valid_after_utc - timedelta(hours=1)
    authority.clock = lambda: later
    issued = authority.issue(JOBAGENT, new_key().public_key())
    assert issued.certificate.not_valid_after_utc == authority.signer.not_valid_after_utc
