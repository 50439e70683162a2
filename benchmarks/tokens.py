"""Job-token issuance and verification, on one core, against the bare primitives.

    .venv/bin/python benchmarks/tokens.py [--key-type ec|rsa] [--rounds N]

Measures, with the process pinned to one CPU:
  issue   the whole job-token path: the agent makes a key and a CSR, the authority
          checks the agent's token and signs, the agent verifies the result;
  sign    the authority's part alone (issue_job_token on a ready CSR);
  verify  the verifier alone on a job token with its chain;
  floor   the bare primitives the path cannot avoid: one key generation, one
          signature and one verification (the baseline the ratios are taken against).
Target (issue 3): issue under 5 ms median with EC P-256.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from timing import median_ms

from sandbox_agent.tokens import (
    Identity,
    Issued,
    JobScope,
    KeyType,
    Role,
    TokenAuthority,
    new_job_request,
    new_key,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key-type", default="ec", choices=["ec", "rsa"])
    parser.add_argument("--rounds", type=int, default=300)
    options = parser.parse_args()
    kind = KeyType.parse(options.key_type)
    rounds = options.rounds if kind is KeyType.EC else max(20, options.rounds // 10)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    with tempfile.TemporaryDirectory() as tmp:
        authority = TokenAuthority.create(Path(tmp) / "ca", kind=kind)
        agent_key = new_key(kind)
        agent = authority.issue(Identity(Role.JOBAGENT), agent_key.public_key())
        verifier = authority.verifier()
        scope = JobScope(7, 0, "bench")

        def sign(csr: x509.CertificateSigningRequest) -> Issued:
            return authority.issue_job_token(
                csr,
                agent=agent.certificate,
                agent_chain=agent.chain,
                scope=scope,
                ttl_seconds=3600,
                leased=lambda _fp, _scope: True,
            )

        def issue() -> None:
            _key, csr = new_job_request(scope, kind)
            issued = sign(csr)
            verifier.verify(issued.certificate, issued.chain, role=Role.JOB, job_id=7)

        _key, ready_csr = new_job_request(scope, kind)
        token = sign(ready_csr)

        def verify() -> None:
            verifier.verify(token.certificate, token.chain, role=Role.JOB, job_id=7)

        def floor() -> None:
            key = new_key(kind)
            data = b"x" * 32
            if isinstance(key, ec.EllipticCurvePrivateKey):
                signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
                key.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))
            else:
                assert isinstance(key, rsa.RSAPrivateKey)
                signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
                key.public_key().verify(signature, data, padding.PKCS1v15(), hashes.SHA256())

        results = {
            "issue": median_ms(issue, rounds),
            "sign": median_ms(lambda: sign(ready_csr), rounds),
            "verify": median_ms(verify, rounds),
            "floor": median_ms(floor, rounds),
        }
    label = "EC P-256" if kind is KeyType.EC else "RSA 3072"
    print(f"key type {label}, one core, median of {rounds} rounds")
    for name, ms in results.items():
        ratio = ms / results["floor"]
        print(f"  {name:<7} {ms:7.2f} ms  {1000 / ms:8.0f}/s  {ratio:5.1f}x floor")


if __name__ == "__main__":
    main()
