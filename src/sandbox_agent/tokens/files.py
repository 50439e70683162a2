"""Token files: where an authority and its tokens live, and how they are read.

A token is two files: ``NAME.pem`` (the certificate, then the intermediate CAs that
issued it) and ``NAME.key`` (its private key, mode 0600).  An authority directory holds:

    ca.pem        the root certificate: the trust anchor every verifier is given
    ca.key        the root key (a site keeps it offline once signing.key exists)
    signing.pem   the intermediate CA that signs tokens day to day
    signing.key   its key
    jobagent.pem/.key, broker.pem/.key   the tokens `certs init` makes
    crl.pem       the revocation list, once something was revoked
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sandbox_agent.tokens.errors import KeyMismatch, MalformedToken
from sandbox_agent.tokens.keys import (
    PrivateKey,
    load_private_key,
    private_directory,
    same_key,
    write_private_key,
    write_public_file,
)

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SIGNING_CERT = "signing.pem"
SIGNING_KEY = "signing.key"
CRL = "crl.pem"


@dataclass(frozen=True)
class Token:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # the intermediates that issued it, nearest first
    key: PrivateKey


def cert_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.pem"


def key_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.key"


def pem_bundle(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def parse_certificates(data: bytes, where: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise MalformedToken(f"{where}: not a PEM certificate file") from None


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file (a token first, then its chain)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MalformedToken(f"{path}: cannot read the certificate file ({exc.strerror})") from None
    return parse_certificates(data, str(path))


def load_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except OSError as exc:
        raise MalformedToken(f"{path}: cannot read the revocation list ({exc.strerror})") from None
    except ValueError:
        raise MalformedToken(f"{path}: not a PEM certificate revocation list") from None


def load_token(cert_file: Path, key_file: Path) -> Token:
    """A token's certificate, chain and key; refused when the key is not the certificate's."""
    certs = load_certificates(cert_file)
    key = load_private_key(key_file)
    if not same_key(key, certs[0]):
        raise KeyMismatch(
            f"{key_file} is not the key of {cert_file}: the pair does not belong together"
        )
    return Token(certs[0], tuple(certs[1:]), key)


def write_token(directory: Path, name: str, token: Token) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0600, new file) and ``NAME.pem`` in a private directory."""
    private_directory(directory)
    key_file, certificate_file = key_path(directory, name), cert_path(directory, name)
    write_private_key(key_file, token.key)
    write_public_file(certificate_file, pem_bundle([token.certificate, *token.chain]))
    return certificate_file, key_file


def replace_certificate(path: Path, previous: x509.Certificate, token: Token) -> None:
    """Put ``token``'s certificate and chain in ``path`` in place of ``previous`` (a
    renewed token: its key, and so its key file, are the same). The new file is whole
    before it takes the name (a temporary file, 0600 from its creation, synced, then
    renamed over it), with the old file's owner; no partial file is ever left. Refused
    (TokenError, OSError) when ``path`` is no longer a regular file holding ``previous``:
    a link is never followed, and a token the site put there meanwhile is never
    overwritten."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise MalformedToken(f"{path}: not a regular file (a link is not followed)")
    if b"PRIVATE KEY" in path.read_bytes():
        raise MalformedToken(
            f"{path}: holds the key too; a renewal would lose it, so the file is left as "
            "it is (give the key in a file of its own)"
        )
    if load_certificates(path)[0] != previous:
        raise MalformedToken(f"{path}: changed since the pilot read it; left as it is")
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(pem_bundle([token.certificate, *token.chain]))
            file.flush()
            if (info.st_uid, info.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(file.fileno(), info.st_uid, info.st_gid)
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself on disk (best effort)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
