"""Roles and scopes, and how a certificate carries them.

A token says who it is twice: in a subject a person reads (JAliEn's style,
``CN=JobAgent``, ``CN=Users, CN=<user>`` or
``CN=Jobs, CN=<user>, OU=queueid=<id>/resubmission=<n>``) and in subjectAltName URIs
that code reads::

    urn:sandbox-agent:role:jobagent | job | broker | user | admin
    urn:sandbox-agent:job:<id>:<resubmission>     (job tokens)
    urn:sandbox-agent:user:<user>                 (job, user and admin tokens)
    urn:sandbox-agent:origin:<serial hex>:<unix>  (a renewed jobagent token: the first
                                                  token of its line, and when it was issued)

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
    USER = "user"  # a person: submits jobs, reads their own jobs
    ADMIN = "admin"  # an operator: may act on every user's jobs

    @property
    def with_article(self) -> str:
        """The role with its article ("a user", "an admin"), for messages."""
        return ("an " if self is Role.ADMIN else "a ") + self.value  # "a user": by sound

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls(text.strip().lower())
        except ValueError:
            names = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown role '{text}'; roles are {names}") from None


# Roles held by a person, named by exactly one user URI and no job URI.
PERSON_ROLES = frozenset({Role.USER, Role.ADMIN})


def check_user_name(user: str) -> str:
    """``user`` if it is a valid user name (1-64 of [A-Za-z0-9_.-]), else ValueError."""
    if not _USER.fullmatch(user):
        raise ValueError(f"user '{user}' must be 1-64 letters, digits, '_', '.' or '-'")
    return user


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
        check_user_name(self.user)


@dataclass(frozen=True)
class Origin:
    """The first token of a renewed jobagent token's line: its serial (revoking it
    revokes every renewal) and when it was issued (renewals end a site's limit after)."""

    serial: int
    issued: int  # seconds since the epoch

    def __post_init__(self) -> None:
        if not 0 < self.serial < 1 << 160:
            raise ValueError(f"origin serial must be 1 to 2**160 - 1, not {self.serial}")
        if self.issued < 0:
            raise ValueError(f"origin time must be 0 or more, not {self.issued}")


@dataclass(frozen=True)
class Identity:
    """The role a certificate carries and what it names: the scope of a job token, the
    person of a user or admin token (a job token's user is ``job.user``, never ``user``)."""

    role: Role
    job: JobScope | None = None
    user: str | None = None
    origin: Origin | None = None  # a renewed jobagent token's line (Origin)

    def __post_init__(self) -> None:
        # Refuse here what identity_of() would refuse, so no such token is ever signed.
        if self.origin is not None and self.role is not Role.JOBAGENT:
            raise ValueError("only a jobagent token is renewed and names its origin")
        if self.role in PERSON_ROLES:
            if self.user is None or self.job is not None:
                raise ValueError(f"{self.role.with_article} token names one user and no job")
            check_user_name(self.user)
        elif self.role is Role.JOB:
            if self.job is None or self.user is not None:
                raise ValueError("a job token names one job (its user is the job's user)")
        elif self.job is not None or self.user is not None:
            raise ValueError(f"a {self.role.value} token must not name a job or a user")

    @property
    def owner(self) -> str | None:
        """The user this token speaks for: the person of a user or admin token, the
        owner of a job token's job; None for jobagent and broker tokens."""
        if self.job is not None:
            return self.job.user
        return self.user

    def describe(self) -> str:
        if self.job is not None:
            j = self.job
            return f"job {j.job_id} (resubmission {j.resubmission}) of user {j.user}"
        if self.user is not None:
            return f"{self.role.value} {self.user}"
        return self.role.value


def role_urn(role: Role) -> str:
    return f"{URN_PREFIX}role:{role.value}"


def job_urn(job: JobScope) -> str:
    return f"{URN_PREFIX}job:{job.job_id}:{job.resubmission}"


def user_urn(user: str) -> str:
    return f"{URN_PREFIX}user:{user}"


def origin_urn(origin: Origin) -> str:
    return f"{URN_PREFIX}origin:{origin.serial:x}:{origin.issued}"


def identity_urns(identity: Identity) -> list[str]:
    urns = [role_urn(identity.role)]
    if identity.job is not None:
        urns += [job_urn(identity.job), user_urn(identity.job.user)]
    elif identity.user is not None:
        urns.append(user_urn(identity.user))
    if identity.origin is not None:
        urns.append(origin_urn(identity.origin))
    return urns


def subject_for(identity: Identity) -> x509.Name:
    """The human-readable subject, in JAliEn's spirit."""
    if identity.role is Role.JOBAGENT:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "JobAgent")])
    if identity.role is Role.BROKER:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Broker")])
    if identity.role in PERSON_ROLES:
        assert identity.user is not None
        group = "Users" if identity.role is Role.USER else "Admins"
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, group),
                x509.NameAttribute(NameOID.COMMON_NAME, identity.user),
            ]
        )
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
    """Read the role and scope from the subjectAltName URIs, strictly: exactly one role;
    for a job exactly one job and one user; for a user or admin exactly one user and no
    job; for the others no job and no user; any other sandbox-agent URN is refused."""
    try:
        san = cert_or_csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise MalformedToken("no subjectAltName: this is not a sandbox-agent token") from None
    ours = [u for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(URN_PREFIX)]  # fmt: skip
    roles, jobs, users, origins = [], [], [], []
    for urn in ours:
        kind, _, rest = urn[len(URN_PREFIX) :].partition(":")
        if kind == "role":
            roles.append(rest)
        elif kind == "job":
            jobs.append(rest)
        elif kind == "user":
            users.append(rest)
        elif kind == "origin":
            origins.append(rest)
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
    if origins and role is not Role.JOBAGENT:
        raise MalformedToken(f"{role.with_article} token must not name an origin")
    if role in PERSON_ROLES:
        if jobs:
            raise MalformedToken(f"{role.with_article} token must not name a job")
        if len(users) != 1:
            raise MalformedToken(
                f"{role.with_article} token names exactly one user in subjectAltName, "
                f"this one names {len(users)}"
            )
        try:
            return Identity(role, user=users[0])
        except ValueError as exc:
            raise MalformedToken(f"{role.value} token: {exc}") from None
    if role is not Role.JOB:
        # jobagent and broker, and any role added later until it is given a rule here
        if jobs or users:
            raise MalformedToken(f"a {role.value} token must not name a job or a user")
        return Identity(role, origin=_origin(origins))
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


def _origin(found: list[str]) -> Origin | None:
    """A jobagent token's origin URI (at most one), or None for a first token."""
    if not found:
        return None
    if len(found) > 1:
        raise MalformedToken(
            f"a jobagent token names at most one origin, this one names {len(found)}"
        )
    match = re.fullmatch(r"([0-9a-f]{1,40}):([0-9]{1,12})", found[0])
    if not match:
        raise MalformedToken(f"malformed origin URI '{URN_PREFIX}origin:{found[0]}'")
    try:
        return Origin(int(match.group(1), 16), int(match.group(2)))
    except ValueError as exc:
        raise MalformedToken(f"origin: {exc}") from None
