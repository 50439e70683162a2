"""The agent's side of a job token: a fresh key and a CSR naming the job.

The private key is made here, on the node that will use it, and never leaves it; only
the CSR goes to the authority.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from sandbox_agent.tokens.keys import KeyType, PrivateKey, new_key
from sandbox_agent.tokens.roles import Identity, JobScope, Role, identity_urns, subject_for


def job_request(scope: JobScope, key: PrivateKey) -> x509.CertificateSigningRequest:
    """A CSR for a job token of ``scope``, signed by ``key``."""
    identity = Identity(Role.JOB, scope)
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(u) for u in identity_urns(identity)]
    )
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_for(identity))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )


def new_job_request(
    scope: JobScope, kind: KeyType = KeyType.EC
) -> tuple[PrivateKey, x509.CertificateSigningRequest]:
    key = new_key(kind)
    return key, job_request(scope, key)
