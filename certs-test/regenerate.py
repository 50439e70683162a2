"""Regenerate the TEST-ONLY certificates in this directory.

    .venv/bin/python certs-test/regenerate.py

Everything here is public: the keys are in the repository. No real site may ever trust
this CA. The fixtures are long-lived (until 2076) so the suite does not rot; they are
made with the low-level signing primitive, which skips the lifetime caps that the
authority applies to real tokens. Tests that need a token made the normal way mint it
at test time from this CA.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from sandbox_agent.tokens import Identity, JobScope, Role, Token, TokenAuthority, files, new_key
from sandbox_agent.tokens.certificates import ca_certificate, sign_certificate
from sandbox_agent.tokens.keys import write_private_key, write_public_file

HERE = Path(__file__).resolve().parent
START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2076, 1, 1, tzinfo=UTC)


def main() -> None:
    work = HERE / ".regenerate"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    authority = _authority(work, "sandbox-agent TEST root CA", "sandbox-agent TEST signing CA")
    rogue = _authority(work / "rogue", "rogue TEST root CA", "rogue TEST signing CA")

    def token(
        name: str,
        identity: Identity,
        *,
        by: TokenAuthority = authority,
        start: datetime = START,
        end: datetime = END,
        **names: tuple[str, ...],
    ) -> Token:
        key = new_key()
        cert = sign_certificate(
            identity=identity,
            public_key=key.public_key(),
            issuer_key=by.signer_key,
            issuer_cert=by.signer,
            not_before=start,
            not_after=end,
            **names,
        )
        made = Token(cert, by.chain, key)
        files.write_token(work, name, made)
        return made

    job7 = JobScope(7, 0, "testuser")
    token("jobagent", Identity(Role.JOBAGENT))
    token(
        "broker", Identity(Role.BROKER), dns_names=("localhost",), ip_addresses=("127.0.0.1", "::1")
    )
    token("job-7", Identity(Role.JOB, job7))
    token("job-8", Identity(Role.JOB, JobScope(8, 0, "testuser")))
    token("job-7-resubmission-1", Identity(Role.JOB, JobScope(7, 1, "testuser")))
    token("user-alice", Identity(Role.USER, user="alice"))
    token("user-bob", Identity(Role.USER, user="bob"))
    token("admin-ops", Identity(Role.ADMIN, user="ops"))
    token(
        "expired-jobagent",
        Identity(Role.JOBAGENT),
        start=datetime(2020, 1, 1, tzinfo=UTC),
        end=datetime(2020, 1, 2, tzinfo=UTC),
    )
    token(
        "not-yet-valid-jobagent",
        Identity(Role.JOBAGENT),
        start=datetime(2070, 1, 1, tzinfo=UTC),
        end=datetime(2070, 1, 2, tzinfo=UTC),
    )
    token("unknown-ca-jobagent", Identity(Role.JOBAGENT), by=rogue)
    revoked = token("revoked-jobagent", Identity(Role.JOBAGENT))
    # A certificate with somebody else's key file next to it.
    token("mismatch", Identity(Role.JOBAGENT))
    files.key_path(work, "mismatch").unlink()
    write_private_key(files.key_path(work, "mismatch"), new_key())
    crl = authority.revocation_list(
        {revoked.certificate.serial_number}, next_update=END - datetime.now(UTC)
    )
    write_public_file(work / files.CRL, crl.public_bytes(Encoding.PEM))
    shutil.copy(work / "rogue" / files.CA_CERT, work / "rogue-ca.pem")
    shutil.rmtree(work / "rogue")

    for old in HERE.glob("*.pem"):
        old.unlink()
    for old in HERE.glob("*.key"):
        old.unlink()
    for made_file in sorted(work.iterdir()):
        shutil.copy(made_file, HERE / made_file.name)
        print(made_file.name)
    shutil.rmtree(work)


def _authority(directory: Path, root_name: str, signing_name: str) -> TokenAuthority:
    directory.mkdir(mode=0o700, exist_ok=True)
    root_key, signing_key = new_key(), new_key()
    root = ca_certificate(
        common_name=root_name, key=root_key, not_before=START, not_after=END + timedelta(days=1)
    )
    signing = ca_certificate(
        common_name=signing_name,
        key=signing_key,
        not_before=START,
        not_after=END + timedelta(days=1),
        issuer_key=root_key,
        issuer_cert=root,
    )
    write_private_key(directory / files.CA_KEY, root_key)
    write_public_file(directory / files.CA_CERT, files.pem_bundle([root]))
    write_private_key(directory / files.SIGNING_KEY, signing_key)
    write_public_file(directory / files.SIGNING_CERT, files.pem_bundle([signing]))
    return TokenAuthority(signing_key, (signing,), root)


if __name__ == "__main__":
    main()
