"""A revocation list is trusted only when it names the token's issuer AND carries that
issuer's signature, and is fresh; the clock-skew allowance is exactly what it says.
Real certificates and CRLs, made with cryptography by the test authority."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import CERTS, JOBAGENT
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import VerificationError

from sandbox_agent.tokens import (
    Token,
    TokenAuthority,
    TokenExpired,
    TokenNotYetValid,
    TokenVerifier,
    UnknownIssuer,
    files,
    new_key,
)
from sandbox_agent.tokens.certificates import _key_usage
from sandbox_agent.tokens.errors import StaleRevocationList
from sandbox_agent.tokens.roles import identity_urns, subject_for
from sandbox_agent.tokens.verify import DEFAULT_SKEW, VerifiedToken, _reason

NOT_SIGNED_BY_ISSUER = "the revocation list is not signed by the CA that issued this token"


def crl_of(
    authority: TokenAuthority, issuer: x509.Name, key: object, revoked: tuple[int, ...] = ()
) -> x509.CertificateRevocationList:
    """A CRL naming ``issuer``, signed by ``key``: forged where they do not belong together."""
    now = authority.clock()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(now - timedelta(minutes=1))
        .next_update(now + timedelta(days=1))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]


def test_the_issuers_own_crl_is_trusted_and_revokes(
    authority: TokenAuthority, mint: Callable[..., Token]
) -> None:
    # the control for the two forgeries below: a genuine list lets a good token through
    token, revoked = mint(JOBAGENT), mint(JOBAGENT)
    genuine = crl_of(authority, authority.signer.subject, authority.signer_key,
                     (revoked.certificate.serial_number,))  # fmt: skip
    verifier = authority.verifier(genuine)
    assert verifier.verify(token.certificate, token.chain).identity == JOBAGENT
    with pytest.raises(Exception, match="is revoked by the configured CRL"):
        verifier.verify(revoked.certificate, revoked.chain)


def test_a_crl_with_the_issuers_name_but_another_keys_signature_is_refused(
    authority: TokenAuthority, mint: Callable[..., Token]
) -> None:
    # Whoever can write crl.pem could otherwise drop every revocation: the name is public.
    token = mint(JOBAGENT)
    forged = crl_of(authority, authority.signer.subject, new_key())
    with pytest.raises(UnknownIssuer, match=NOT_SIGNED_BY_ISSUER):
        authority.verifier(forged).verify(token.certificate, token.chain)


def test_a_crl_signed_by_the_issuers_key_under_another_name_is_refused(
    authority: TokenAuthority, mint: Callable[..., Token]
) -> None:
    token = mint(JOBAGENT)
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    misnamed = crl_of(authority, other, authority.signer_key)
    with pytest.raises(UnknownIssuer, match=NOT_SIGNED_BY_ISSUER):
        authority.verifier(misnamed).verify(token.certificate, token.chain)


def test_a_crl_is_fresh_until_its_next_update_plus_the_skew(
    authority: TokenAuthority,
) -> None:
    crl = authority.revocation_list(set(), next_update=timedelta(hours=1))
    due = crl.next_update_utc
    assert due is not None
    cert, *rest = files.load_certificates(CERTS / "jobagent.pem")
    chain = tuple(rest)
    anchors = authority.verifier().anchors

    def at(moment: datetime) -> TokenVerifier:
        return TokenVerifier(anchors, crl=crl, clock=lambda: moment)

    for fresh in (due, due + timedelta(minutes=4), due + DEFAULT_SKEW):
        assert at(fresh).verify(cert, chain).identity == JOBAGENT
    with pytest.raises(StaleRevocationList, match="due for renewal"):
        at(due + DEFAULT_SKEW + timedelta(seconds=1)).verify(cert, chain)


def test_the_skew_allowance_is_five_minutes_to_the_second(
    mint: Callable[..., Token],
) -> None:
    assert timedelta(minutes=5) == DEFAULT_SKEW
    token = mint(JOBAGENT, lifetime=timedelta(hours=1))
    start, end = token.certificate.not_valid_before_utc, token.certificate.not_valid_after_utc
    anchors = files.load_certificates(CERTS / "ca.pem")
    second = timedelta(seconds=1)

    def verify_at(moment: datetime) -> object:
        verifier = TokenVerifier(anchors, clock=lambda: moment)
        return verifier.verify(token.certificate, token.chain).identity

    # the edges themselves are inside: a clock exactly five minutes off is allowed
    assert verify_at(start - DEFAULT_SKEW) == JOBAGENT
    assert verify_at(end + DEFAULT_SKEW) == JOBAGENT
    with pytest.raises(TokenNotYetValid):
        verify_at(start - DEFAULT_SKEW - second)
    with pytest.raises(TokenExpired):
        verify_at(end + DEFAULT_SKEW + second)


def test_a_verifier_needs_a_trust_anchor() -> None:
    with pytest.raises(ValueError, match=r"^no trust anchors: give the CA certificate"):
        TokenVerifier([])


def test_a_root_that_signs_tokens_itself_checks_its_own_crl(tmp_path: Path) -> None:
    # no intermediate: the chain is the token and the root, and the root is the issuer
    authority = TokenAuthority.create(tmp_path / "ca", intermediate=False)
    token, revoked = (authority.issue(JOBAGENT, new_key().public_key()) for _ in range(2))
    crl = authority.revocation_list({revoked.certificate.serial_number})
    verifier = authority.verifier(crl)
    assert verifier.verify(token.certificate, token.chain).identity == JOBAGENT
    with pytest.raises(Exception, match="is revoked by the configured CRL"):
        verifier.verify(revoked.certificate, revoked.chain)


def test_a_token_without_basic_constraints_is_not_taken_for_a_ca(
    authority: TokenAuthority,
) -> None:
    # BasicConstraints is optional in a leaf: its absence means "not a CA"
    key, now = new_key(), authority.clock()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject_for(JOBAGENT))
        .issuer_name(authority.signer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(_key_usage(leaf=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in identity_urns(JOBAGENT)]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            authority.signer.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(authority.signer_key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert authority.verifier().verify(cert, authority.chain).identity == JOBAGENT


def test_a_verified_token_cannot_be_changed_afterwards(
    authority: TokenAuthority, mint: Callable[..., Token]
) -> None:
    token = mint(JOBAGENT)
    verified = authority.verifier().verify(token.certificate, token.chain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.fingerprint = "sha256:forged"  # type: ignore[misc]
    assert isinstance(verified, VerifiedToken)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("", "no valid chain"),
        ("   \n ", "no valid chain"),
        ("candidates exhausted\nsecond line", "candidates exhausted"),
        ("bad signature (encountered processing <Certificate(...)>)", "bad signature"),
        ("x" * 300, "x" * 200),
    ],
)
def test_the_chain_error_is_one_short_line(message: str, reason: str) -> None:
    # what the verifier says goes into the UnknownIssuer message: first line, clipped
    assert _reason(VerificationError(message)) == reason


def test_an_unknown_issuer_names_the_verifiers_reason(
    authority: TokenAuthority, tmp_path: Path
) -> None:
    stranger = TokenAuthority.create(tmp_path / "stranger")
    issued = stranger.issue(JOBAGENT, new_key().public_key())
    with pytest.raises(UnknownIssuer) as caught:
        authority.verifier().verify(issued.certificate, issued.chain)
    text = str(caught.value)
    assert text.startswith("not issued by a trusted CA (") and "encountered" not in text
    reason = text.removeprefix("not issued by a trusted CA (").split(")")[0]
    assert reason and reason != "None" and "\n" not in text
