"""Renewing a jobagent token: the authority's rules (the caller's own key, its line's
origin kept, the site's lifetime and limit, never an expired or revoked token), the
origin URI a renewed token carries, and the atomic write-back of a renewed token's
certificate file."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from token_support import aged

from sandbox_agent.tokens import (
    Identity,
    IssuanceRefused,
    JobScope,
    MalformedToken,
    Origin,
    RenewalPolicy,
    Role,
    Token,
    TokenAuthority,
    TokenRevoked,
    TokenVerifier,
    files,
    identity_of,
    new_key,
    origin_of,
)
from sandbox_agent.tokens.certificates import CLOCK_SKEW
from sandbox_agent.tokens.keys import same_key

R = "urn:sandbox-agent:role:"
O = "urn:sandbox-agent:origin:"  # noqa: E741


def csr(*uris: str) -> x509.CertificateSigningRequest:
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(san, critical=False)
        .sign(new_key(), hashes.SHA256())
    )


def renew(authority: TokenAuthority, token: Token, **policy: timedelta) -> x509.Certificate:
    issued = authority.renew_jobagent_token(
        token.certificate, token.chain, policy=RenewalPolicy(**policy)
    )
    return issued.certificate


# -- the origin a renewed token names ------------------------------------------------------


def test_a_renewed_token_keeps_its_key_and_the_origin_of_its_line(
    authority: TokenAuthority, mint: Callable[..., Token]
) -> None:
    first = mint(Identity(Role.JOBAGENT), lifetime=timedelta(hours=1))
    renewed = renew(authority, first)
    assert same_key(first.key, renewed)
    assert renewed.serial_number != first.certificate.serial_number
    assert renewed.not_valid_after_utc > first.certificate.not_valid_after_utc
    origin = identity_of(renewed).origin
    assert origin == origin_of(first.certificate, identity_of(first.certificate))
    assert origin is not None and origin.serial == first.certificate.serial_number
    # renewing a renewal names the first token, not the one in between
    again = renew(authority, Token(renewed, first.chain, first.key))
    assert identity_of(again).origin == origin
    verified = TokenVerifier([authority.root]).verify(again, first.chain, role=Role.JOBAGENT)
    assert verified.identity.role is Role.JOBAGENT


@pytest.mark.parametrize(
    ("uris", "message"),
    [
        ((R + "job", "urn:sandbox-agent:job:1:0", "urn:sandbox-agent:user:u", O + "a:1"),
         "a job token must not name an origin"),
        ((R + "broker", O + "a:1"), "a broker token must not name an origin"),
        ((R + "user", "urn:sandbox-agent:user:u", O + "a:1"), "a user token must not name"),
        ((R + "jobagent", O + "a:1", O + "b:1"), "at most one origin, this one names 2"),
        ((R + "jobagent", O + "xyz:1"), "malformed origin URI"),
        ((R + "jobagent", O + "A:1"), "malformed origin URI"),
        ((R + "jobagent", O + "0:1"), "origin serial must be 1"),
    ],
)  # fmt: skip
def test_an_origin_is_a_jobagent_tokens_alone_and_well_formed(
    uris: tuple[str, ...], message: str
) -> None:
    with pytest.raises(MalformedToken, match=message):
        identity_of(csr(*uris))


def test_no_other_role_is_issued_with_an_origin() -> None:
    with pytest.raises(ValueError, match="only a jobagent token"):
        Identity(Role.JOB, JobScope(1, 0, "u"), origin=Origin(1, 0))
    assert identity_of(csr(R + "jobagent", O + "ff:12")).origin == Origin(255, 12)


# -- what the authority refuses ------------------------------------------------------------


def test_only_a_valid_jobagent_token_is_renewed(
    authority: TokenAuthority, mint: Callable[..., Token]
) -> None:
    job = mint(Identity(Role.JOB, JobScope(7, 0, "testuser")))
    with pytest.raises(IssuanceRefused, match="a jobagent token is needed here"):
        renew(authority, job)
    user = mint(Identity(Role.USER, user="alice"))
    with pytest.raises(IssuanceRefused, match="this is a user token"):
        renew(authority, user)


def test_an_expired_token_is_never_renewed_even_within_the_clock_skew(
    authority: TokenAuthority, mint: Callable[..., Token]
) -> None:
    token = mint(Identity(Role.JOBAGENT), lifetime=timedelta(hours=1))
    end = token.certificate.not_valid_after_utc
    authority.clock = lambda: end + timedelta(minutes=1)  # the verifier still takes it
    TokenVerifier([authority.root], clock=authority.clock).verify(token.certificate, token.chain)
    with pytest.raises(IssuanceRefused, match=r"expired at .*an expired token is never renewed"):
        renew(authority, token)
    authority.clock = lambda: end + timedelta(minutes=10)  # past the skew as well
    with pytest.raises(IssuanceRefused, match="cannot be renewed: token expired"):
        renew(authority, token)


def test_a_revoked_token_and_every_renewal_of_it_are_refused(
    authority: TokenAuthority, mint: Callable[..., Token]
) -> None:
    first = mint(Identity(Role.JOBAGENT), lifetime=timedelta(hours=1))
    renewed = renew(authority, first)
    crl = authority.revocation_list({first.certificate.serial_number})
    # the first token revoked: its renewal is revoked with it, wherever it is verified
    with pytest.raises(TokenRevoked, match=f"renews serial {first.certificate.serial_number:x}"):
        TokenVerifier([authority.root], crl=crl).verify(renewed, first.chain)
    with pytest.raises(IssuanceRefused, match="revoked"):
        authority.renew_jobagent_token(renewed, first.chain, policy=RenewalPolicy(), crl=crl)
    # revoking a renewal leaves the line's other tokens alone
    only = authority.revocation_list({renewed.serial_number})
    TokenVerifier([authority.root], crl=only).verify(first.certificate, first.chain)


def test_the_sites_limit_ends_a_line_and_caps_its_last_renewal(
    authority: TokenAuthority,
) -> None:
    old = aged(authority, issued_ago=timedelta(hours=2), left=timedelta(hours=1))
    with pytest.raises(IssuanceRefused) as refused:
        renew(authority, old, limit=timedelta(hours=1))
    assert str(refused.value).startswith(
        f"the first token of its line (serial {old.certificate.serial_number:x}) was issued at "
    )
    assert "renews a jobagent token for 1 hour after that at most: give the node a new" in str(
        refused.value
    )
    with pytest.raises(IssuanceRefused, match="this site renews no jobagent token"):
        renew(authority, old, limit=timedelta(0))
    capped = renew(authority, old, limit=timedelta(hours=4))  # 2 hours of the line are left
    began = old.certificate.not_valid_before_utc + CLOCK_SKEW
    assert capped.not_valid_after_utc <= began + timedelta(hours=4, seconds=1)
    assert capped.not_valid_after_utc > old.certificate.not_valid_after_utc


def test_a_renewal_that_would_not_outlive_the_token_is_refused(
    authority: TokenAuthority, mint: Callable[..., Token]
) -> None:
    token = mint(Identity(Role.JOBAGENT), lifetime=timedelta(hours=1))
    with pytest.raises(IssuanceRefused, match="no later than this token"):
        renew(authority, token, lifetime=timedelta(minutes=10))


def test_the_renewal_policy_holds_the_role_maximum() -> None:
    with pytest.raises(ValueError, match="at most 2 days"):
        RenewalPolicy(lifetime=timedelta(days=3))
    with pytest.raises(ValueError, match="more than 0"):
        RenewalPolicy(lifetime=timedelta(0))
    with pytest.raises(ValueError, match="0 or more"):
        RenewalPolicy(limit=timedelta(seconds=-1))


# -- writing a renewed token back ------------------------------------------------------------


def written(directory: Path, token: Token) -> Path:
    cert, _key = files.write_token(directory, "jobagent", token)
    return cert


def test_a_renewed_certificate_replaces_the_file_whole_0600_with_its_owner(
    authority: TokenAuthority, mint: Callable[..., Token], tmp_path: Path
) -> None:
    first = mint(Identity(Role.JOBAGENT), lifetime=timedelta(hours=1))
    path = written(tmp_path / "node", first)
    key_before = (tmp_path / "node" / "jobagent.key").read_bytes()
    owner = path.stat().st_uid, path.stat().st_gid
    renewed = Token(renew(authority, first), first.chain, first.key)
    files.replace_certificate(path, first.certificate, renewed)
    loaded = files.load_token(path, tmp_path / "node" / "jobagent.key")  # still a pair
    assert loaded.certificate == renewed.certificate and loaded.chain == first.chain
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (path.stat().st_uid, path.stat().st_gid) == owner
    assert (tmp_path / "node" / "jobagent.key").read_bytes() == key_before
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == ["jobagent.key", "jobagent.pem"]


def test_a_certificate_file_that_changed_or_is_a_link_is_left_alone(
    authority: TokenAuthority, mint: Callable[..., Token], tmp_path: Path
) -> None:
    first = mint(Identity(Role.JOBAGENT), lifetime=timedelta(hours=1))
    path = written(tmp_path / "node", first)
    renewed = Token(renew(authority, first), first.chain, first.key)
    other = mint(Identity(Role.JOBAGENT), lifetime=timedelta(hours=1))
    path.write_bytes(files.pem_bundle([other.certificate, *other.chain]))  # the site's new one
    with pytest.raises(MalformedToken, match="changed since the pilot read it"):
        files.replace_certificate(path, first.certificate, renewed)
    assert files.load_certificates(path)[0] == other.certificate
    link = tmp_path / "node" / "link.pem"
    link.symlink_to(path)
    with pytest.raises(MalformedToken, match="not a regular file"):
        files.replace_certificate(link, other.certificate, renewed)
    assert link.is_symlink()


def test_a_failed_replacement_leaves_the_old_file_and_no_partial_one(
    authority: TokenAuthority,
    mint: Callable[..., Token],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = mint(Identity(Role.JOBAGENT), lifetime=timedelta(hours=1))
    path = written(tmp_path / "node", first)
    before = path.read_bytes()
    renewed = Token(renew(authority, first), first.chain, first.key)

    def full_disk(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        files.replace_certificate(path, first.certificate, renewed)
    assert path.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == ["jobagent.key", "jobagent.pem"]


def test_a_certificate_file_that_holds_the_key_too_is_never_rewritten(
    authority: TokenAuthority, mint: Callable[..., Token], tmp_path: Path
) -> None:
    """A grid-style combined PEM (certificate and key in one file) given as both --cert
    and --key: the renewal would drop the key, so the file is left whole."""
    first = mint(Identity(Role.JOBAGENT), lifetime=timedelta(hours=1))
    path = written(tmp_path / "node", first)
    combined = tmp_path / "node" / "combined.pem"
    combined.write_bytes(path.read_bytes() + (tmp_path / "node" / "jobagent.key").read_bytes())
    combined.chmod(0o600)
    before = combined.read_bytes()
    renewed = Token(renew(authority, first), first.chain, first.key)
    with pytest.raises(MalformedToken, match="holds the key too"):
        files.replace_certificate(combined, first.certificate, renewed)
    assert combined.read_bytes() == before
    assert files.load_token(combined, combined).certificate == first.certificate
