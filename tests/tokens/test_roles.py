"""Role and scope come from subjectAltName URIs, strictly; the subject is never parsed."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from sandbox_agent.tokens import Identity, JobScope, MalformedToken, Role, identity_of, new_key
from sandbox_agent.tokens.roles import identity_urns, subject_for

KEY = new_key()


def csr(*uris: str, cn: str = "JobAgent") -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if uris:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(KEY, hashes.SHA256())


R = "urn:sandbox-agent:role:"
U = "urn:sandbox-agent:user:"
J = "urn:sandbox-agent:job:"
ONE_USER = "names exactly one user in subjectAltName, this one names"


def test_identity_from_uris() -> None:
    assert identity_of(csr(R + "jobagent")) == Identity(Role.JOBAGENT)
    job = csr(R + "job", "urn:sandbox-agent:job:42:3", "urn:sandbox-agent:user:jdoe")
    assert identity_of(job) == Identity(Role.JOB, JobScope(42, 3, "jdoe"))


@pytest.mark.parametrize(("role", "name"), [(Role.USER, "alice"), (Role.ADMIN, "ops")])
def test_person_identity_round_trip(role: Role, name: str) -> None:
    identity = Identity(role, user=name)
    urns = identity_urns(identity)
    assert urns == [R + role.value, U + name]
    assert identity_of(csr(*urns)) == identity
    assert identity_of(csr(*urns)).owner == name
    group = {Role.USER: "Users", Role.ADMIN: "Admins"}[role]
    assert subject_for(identity).rfc4514_string() == f"CN={name},CN={group}"


def test_owner_and_describe() -> None:
    job = Identity(Role.JOB, JobScope(42, 3, "jdoe"))
    assert (job.owner, job.user) == ("jdoe", None)  # a job's user lives in its scope
    assert Identity(Role.USER, user="alice").owner == "alice"
    assert Identity(Role.ADMIN, user="ops").owner == "ops"
    assert Identity(Role.JOBAGENT).owner is None
    assert Identity(Role.BROKER).owner is None
    assert Identity(Role.USER, user="alice").describe() == "user alice"
    assert Identity(Role.ADMIN, user="ops").describe() == "admin ops"
    assert Identity(Role.BROKER).describe() == "broker"


def test_a_user_is_not_an_admin() -> None:
    # Same name, other role: never equal, so a check on identities cannot confuse them.
    assert Identity(Role.USER, user="ops") != Identity(Role.ADMIN, user="ops")
    assert identity_of(csr(R + "user", U + "ops")).role is Role.USER


def test_subject_never_decides() -> None:
    # The subject says JobAgent; the URIs say job 5: the URIs win.
    tricky = csr(R + "job", "urn:sandbox-agent:job:5:0", "urn:sandbox-agent:user:u", cn="JobAgent")
    assert identity_of(tricky).role is Role.JOB


def test_foreign_uris_are_ignored() -> None:
    assert identity_of(csr("https://example.org/x", R + "broker")).role is Role.BROKER


@pytest.mark.parametrize(
    ("uris", "message"),
    [
        ((), "no subjectAltName: this is not a sandbox-agent token"),
        ((R + "jobagent", R + "job"), "names exactly one role in subjectAltName, this one names 2"),
        ((R + "root",), "unknown role 'root' in subjectAltName"),
        ((R + "jobagent", "urn:sandbox-agent:admin:yes"), "unknown sandbox-agent URI"),
        ((R + "jobagent", "urn:sandbox-agent:job:1:0"), "must not name a job or a user"),
        ((R + "job", "urn:sandbox-agent:job:1:0"), "exactly one job and one user"),
        ((R + "job", "urn:sandbox-agent:job:1:0", "urn:sandbox-agent:job:2:0",
          "urn:sandbox-agent:user:u"), "exactly one job and one user"),
        ((R + "job", "urn:sandbox-agent:job:x:0", "urn:sandbox-agent:user:u"), "malformed job URI"),
        ((R + "job", "urn:sandbox-agent:job:0:0", "urn:sandbox-agent:user:u"), "job id must be 1"),
        ((R + "job", "urn:sandbox-agent:job:1:0", "urn:sandbox-agent:user:a b"), "user 'a b'"),
        ((R + "broker", U + "alice"), "a broker token must not name a job or a user"),
        ((R + "user",), f"a user token {ONE_USER} 0"),
        ((R + "admin",), f"an admin token {ONE_USER} 0"),
        ((R + "user", U + "alice", U + "bob"), f"a user token {ONE_USER} 2"),
        ((R + "admin", U + "ops", U + "ops"), f"an admin token {ONE_USER} 2"),
        ((R + "user", U + "alice", J + "1:0"), "a user token must not name a job"),
        ((R + "admin", J + "1:0"), "an admin token must not name a job"),
        ((R + "admin", U + "ops", J + "1:0"), "an admin token must not name a job"),
        ((R + "user", U + "a b"), "user token: user 'a b' must be 1-64 letters"),
        ((R + "admin", U + ""), "admin token: user '' must be 1-64 letters"),
        ((R + "admin", U + "x" * 65), "admin token: user 'xxx"),
        ((R + "ADMIN", U + "ops"), "unknown role 'ADMIN' in subjectAltName"),
        ((R + "user", R + "admin", U + "ops"), "one role in subjectAltName, this one names 2"),
    ],
)  # fmt: skip
def test_malformed_identities(uris: tuple[str, ...], message: str) -> None:
    with pytest.raises(MalformedToken) as info:
        identity_of(csr(*uris))
    assert message in str(info.value)


def test_scope_validation() -> None:
    with pytest.raises(ValueError, match="resubmission must be 0 or more"):
        JobScope(1, -1, "u")
    with pytest.raises(ValueError, match="unknown role 'pilot'; roles are jobagent, job, broker"):
        Role.parse("pilot")
    with pytest.raises(ValueError) as info:
        Role.parse("root")
    assert str(info.value).endswith("roles are jobagent, job, broker, user, admin")
    assert (Role.parse("user"), Role.parse(" Admin ")) == (Role.USER, Role.ADMIN)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Identity(Role.USER), "a user token names one user and no job"),
        (lambda: Identity(Role.ADMIN), "an admin token names one user and no job"),
        (lambda: Identity(Role.USER, JobScope(1, 0, "al"), user="al"), "names one user and no"),
        (lambda: Identity(Role.ADMIN, user="a b"), "user 'a b' must be 1-64"),
        (lambda: Identity(Role.USER, user="x" * 65), "must be 1-64"),
        (lambda: Identity(Role.JOB), "a job token names one job"),
        (lambda: Identity(Role.JOB, JobScope(1, 0, "u"), user="u"), "a job token names one job"),
        (lambda: Identity(Role.JOBAGENT, user="al"), "a jobagent token must not name a job or"),
        (lambda: Identity(Role.BROKER, JobScope(1, 0, "u")), "a broker token must not name a job"),
    ],
)  # fmt: skip
def test_inconsistent_identities_are_refused(make: Callable[[], Identity], message: str) -> None:
    # Refused when made, so no token the verifier would refuse is ever signed.
    with pytest.raises(ValueError, match=re.escape(message)):
        make()
