"""Building certificates: the one low-level signing primitive, and the CA profiles.

``sign_certificate`` takes any validity it is given; callers that face users
(``TokenAuthority.issue``) apply the lifetime caps before they call it.  Test fixtures
call it directly to make expired and not-yet-valid tokens.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandbox_agent.tokens.keys import PrivateKey, PublicKey
from sandbox_agent.tokens.roles import Identity, Role, identity_urns, subject_for

CLOCK_SKEW = timedelta(minutes=5)  # notBefore is set this far back


def _key_usage(*, leaf: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not leaf,
        crl_sign=not leaf,
        encipher_only=False,
        decipher_only=False,
    )


def sign_certificate(
    *,
    identity: Identity,
    public_key: PublicKey,
    issuer_key: PrivateKey,
    issuer_cert: x509.Certificate,
    not_before: datetime,
    not_after: datetime,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> x509.Certificate:
    """A token certificate for ``identity``: CA:false, digitalSignature only, clientAuth
    (and serverAuth for the broker), the role/scope URIs in subjectAltName."""
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(u) for u in identity_urns(identity)
    ]
    names += [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.role is Role.BROKER:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_for(identity))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(leaf=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def ca_certificate(
    *,
    common_name: str,
    key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
    issuer_key: PrivateKey | None = None,
    issuer_cert: x509.Certificate | None = None,
) -> x509.Certificate:
    """A root (self-signed, when no issuer is given) or an intermediate CA that may sign
    token certificates only (path length 0 below an intermediate)."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sandbox-agent"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    root = issuer_cert is None
    signer_key = key if root else issuer_key
    assert signer_key is not None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if root else issuer_cert.subject)  # type: ignore[union-attr]
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1 if root else 0), critical=True)
        .add_extension(_key_usage(leaf=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    issuer_public = key.public_key() if root else issuer_cert.public_key()  # type: ignore[union-attr]
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),  # type: ignore[arg-type]
        critical=False,
    )
    return builder.sign(signer_key, hashes.SHA256())
