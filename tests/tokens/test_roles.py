"""Role and scope come from subjectAltName URIs, strictly; the subject is never parsed."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from sandbox_agent.tokens import Identity, JobScope, MalformedToken, Role, identity_of, new_key

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


def test_identity_from_uris() -> None:
    assert identity_of(csr(R + "jobagent")) == Identity(Role.JOBAGENT)
    job = csr(R + "job", "urn:sandbox-agent:job:42:3", "urn:sandbox-agent:user:jdoe")
    assert identity_of(job) == Identity(Role.JOB, JobScope(42, 3, "jdoe"))


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
