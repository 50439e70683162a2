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
