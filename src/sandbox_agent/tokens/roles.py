"""Roles and scopes, and how a certificate carries them.

A token says who it is twice: in a subject a person reads (JAliEn's style,
``CN=JobAgent`` or ``CN=Jobs, CN=<user>, OU=queueid=<id>/resubmission=<n>``) and in
subjectAltName URIs that code reads::

    urn:sandbox-agent:role:jobagent | job | broker
    urn:sandbox-agent:job:<id>:<resubmission>     (job tokens)
    urn:sandbox-agent:user:<user>                 (job tokens)

Decisions are taken from the URIs only; the subject is never parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.x509.oid import NameOID

from sandbox_agent.tokens.errors import MalformedToken

URN_PREFIX = "urn:sandbox-agent:"
_USER = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Role(Enum):
    JOBAGENT = "jobagent"  # the pilot: matches jobs, asks for job tokens
    JOB = "job"  # one job id and resubmission of one user; the only token in a sandbox
    BROKER = "broker"  # the server side of mutual TLS

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown role '{text}'; roles are {names}") from None


@dataclass(frozen=True)
class JobScope:
    """What a job token is for: one job, one resubmission, one user."""

    job_id: int
    resubmission: int
    user: str

    def __post_init__(self) -> None:
        if self.job_id < 1:
            raise ValueError(f"job id must be 1 or more, not {self.job_id}")
        if self.resubmission < 0:
            raise ValueError(f"resubmission must be 0 or more, not {self.resubmission}")
        if not _USER.fullmatch(self.user):
            raise ValueError(f"user '{self.user}' must be 1-64 letters, digits, '_', '.' or '-'")


@dataclass(frozen=True)
class Identity:
    """The role and, for a job token, the scope a certificate carries."""

    role: Role
    job: JobScope | None = None

    def describe(self) -> str:
        if self.job is None:
            return self.role.value
        j = self.job
        return f"job {j.job_id} (resubmission {j.resubmission}) of user {j.user}"


def role_urn(role: Role) -> str:
    return f"{URN_PREFIX}role:{role.value}"


def job_urn(job: JobScope) -> str:
    return f"{URN_PREFIX}job:{job.job_id}:{job.resubmission}"


def user_urn(user: str) -> str:
    return f"{URN_PREFIX}user:{user}"


def identity_urns(identity: Identity) -> list[str]:
    urns = [role_urn(identity.role)]
    if identity.job is not None:
        urns += [job_urn(identity.job), user_urn(identity.job.user)]
    return urns


def subject_for(identity: Identity) -> x509.Name:
    """The human-readable subject, in JAliEn's spirit."""
    if identity.role is Role.JOBAGENT:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "JobAgent")])
    if identity.role is Role.BROKER:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Broker")])
    assert identity.job is not None
    j = identity.job
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Jobs"),
            x509.NameAttribute(NameOID.COMMON_NAME, j.user),
            x509.NameAttribute(
                NameOID.ORGANIZATIONAL_UNIT_NAME,
                f"queueid={j.job_id}/resubmission={j.resubmission}",
            ),
        ]
    )


def identity_of(cert_or_csr: x509.Certificate | x509.CertificateSigningRequest) -> Identity:
    """Read the role and scope from the subjectAltName URIs, strictly: exactly one role,
    and for a job exactly one job and one user; any other sandbox-agent URN is refused."""
    try:
        san = cert_or_csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise MalformedToken("no subjectAltName: this is not a sandbox-agent token") from None
    ours = [u for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(URN_PREFIX)]  # fmt: skip
    roles, jobs, users = [], [], []
    for urn in ours:
        kind, _, rest = urn[len(URN_PREFIX) :].partition(":")
        if kind == "role":
            roles.append(rest)
        elif kind == "job":
            jobs.append(rest)
        elif kind == "user":
            users.append(rest)
        else:
            raise MalformedToken(f"unknown sandbox-agent URI '{urn}' in subjectAltName")
    if len(roles) != 1:
        raise MalformedToken(
            f"a token names exactly one role in subjectAltName, this one names {len(roles)}"
        )
    try:
        role = Role(roles[0])
    except ValueError:
        raise MalformedToken(f"unknown role '{roles[0]}' in subjectAltName") from None
    if role is not Role.JOB:
        if jobs or users:
            raise MalformedToken(f"a {role.value} token must not name a job or a user")
        return Identity(role)
    if len(jobs) != 1 or len(users) != 1:
        raise MalformedToken("a job token names exactly one job and one user in subjectAltName")
    match = re.fullmatch(r"([0-9]{1,18}):([0-9]{1,9})", jobs[0])
    if not match:
        raise MalformedToken(f"malformed job URI '{URN_PREFIX}job:{jobs[0]}'")
    try:
        scope = JobScope(int(match.group(1)), int(match.group(2)), users[0])
    except ValueError as exc:
        raise MalformedToken(f"job token scope: {exc}") from None
    return Identity(role, scope)
