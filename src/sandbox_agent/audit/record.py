"""The audit record's format: the signed file, how it is signed, read back and verified.

A record (schema ``sandbox-agent/audit-record``, version 1; docs/audit.md) is signed
over its canonical JSON (sorted keys, no spaces, ASCII) with the agent's key (ECDSA
P-256/384 with SHA-256, or RSA PKCS#1 v1.5 with SHA-256), and the signed file carries
the agent's certificate and chain. ``verify`` checks that chain against the CA as it
was when the record was signed, that the certificate is a jobagent token, and the
signature over the record's bytes: a changed byte fails.

The pilot writes records (agent.audit builds them), the broker verifies what pilots
send, and ``audit verify``/``audit show`` read them: so the format lives here, below
all three.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from sandbox_agent.tokens import Role, TokenError, fingerprint
from sandbox_agent.tokens.verify import TokenVerifier
from sandbox_agent.wrapper.handoff import strict_loads

SCHEMA = "sandbox-agent/audit-record"
VERSION = 1
RECORD = "audit.json"  # beside the attempt's outputs and logs
MAX_RECORD = 4 * 1024 * 1024  # bytes of a record file read back


class AuditError(ValueError):
    """A record that is not valid: one line saying why."""


@dataclass(frozen=True)
class Verified:
    record: dict[str, Any]
    agent: str  # the jobagent token's subject
    fingerprint: str


def canonical(record: dict[str, Any]) -> bytes:
    # ASCII: a lone surrogate (a name the payload made of other bytes) still signs
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(record: dict[str, Any], key: Any, certificate: x509.Certificate,
         chain: tuple[x509.Certificate, ...]) -> dict[str, Any]:  # fmt: skip
    """The signed file's content: the record, the signature, the signer's chain."""
    data = canonical(record)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm, value = "ecdsa-sha256", key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        algorithm, value = "rsa-pkcs1v15-sha256", key.sign(data, padding.PKCS1v15(),
                                                           hashes.SHA256())  # fmt: skip
    else:
        raise AuditError("the agent's key is of a type that cannot sign records")
    pem = serialization.Encoding.PEM
    return {"record": record, "signature": {
        "algorithm": algorithm, "value": base64.b64encode(value).decode(),
        "certificate": certificate.public_bytes(pem).decode(),
        "chain": [c.public_bytes(pem).decode() for c in chain]}}  # fmt: skip


def write(path: Path, signed: dict[str, Any]) -> None:
    """Written once, 0600, never through a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(signed, file, indent=1, sort_keys=True)
        file.write("\n")


def load(path: Path) -> dict[str, Any]:
    try:
        # O_NONBLOCK: a FIFO must not hang the reader; it is refused below
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise AuditError(f"{path}: cannot read it ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AuditError(f"{path}: not a regular file; give the record's file")
        try:
            data = file.read(MAX_RECORD + 1)
        except OSError as exc:
            raise AuditError(f"{path}: cannot read it ({exc.strerror})") from None
    return parse(data, str(path))


def parse(data: bytes, where: str) -> dict[str, Any]:
    """A signed record's parts from its bytes (read from a file, or a broker's answer)."""
    if len(data) > MAX_RECORD:
        raise AuditError(f"{where}: over {MAX_RECORD} bytes; not an audit record")
    try:  # strict: no duplicate key, no NaN (a record has neither)
        signed = strict_loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AuditError(f"{where}: not JSON ({exc})") from None
    if not isinstance(signed, dict) or not isinstance(signed.get("record"), dict) or \
            not isinstance(signed.get("signature"), dict):  # fmt: skip
        raise AuditError(f"{where}: not a signed audit record (no record and signature)")
    return signed


def verify(signed: dict[str, Any], anchors: list[x509.Certificate]) -> Verified:
    """The record, if its signer is a jobagent token of ``anchors`` (as they were when
    it was signed) and the signature holds over its bytes; AuditError saying why not."""
    record, signature = signed["record"], signed["signature"]
    if record.get("schema") != SCHEMA or record.get("version") != VERSION:
        raise AuditError(f"not a {SCHEMA} version {VERSION} record")
    try:
        certificate = x509.load_pem_x509_certificate(str(signature["certificate"]).encode())
        chain = [x509.load_pem_x509_certificate(str(c).encode()) for c in signature["chain"]]
        value = base64.b64decode(str(signature["value"]), validate=True)
        signed_at = datetime.fromisoformat(str(record["signed_at"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditError(f"the signature block is malformed ({exc})") from None
    if signed_at.tzinfo is None:
        raise AuditError("signed_at has no time zone; a record says when it was signed in UTC")
    try:
        TokenVerifier(anchors, clock=lambda: signed_at).verify(certificate, chain,
                                                               role=Role.JOBAGENT)  # fmt: skip
    except TokenError as exc:
        raise AuditError(f"the signer is not trusted: {exc}") from None
    public = certificate.public_key()
    data = canonical(record)
    try:
        if signature.get("algorithm") == "ecdsa-sha256" and \
                isinstance(public, ec.EllipticCurvePublicKey):  # fmt: skip
            public.verify(value, data, ec.ECDSA(hashes.SHA256()))
        elif signature.get("algorithm") == "rsa-pkcs1v15-sha256" and \
                isinstance(public, rsa.RSAPublicKey):  # fmt: skip
            public.verify(value, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise AuditError("the signature's algorithm does not match the signer's key")
    except InvalidSignature:
        raise AuditError("the signature does not match the record: it was changed after "
                         "it was signed") from None  # fmt: skip
    subject = certificate.subject.rfc4514_string()
    return Verified(record, subject, fingerprint(certificate))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
