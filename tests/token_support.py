"""Tokens a test needs that the authority would not issue now: a jobagent token issued
some time ago (its notBefore CLOCK_SKEW earlier, as the authority sets it), expiring at
a chosen moment. Shared by the renewal tests of tokens/, broker/ and agent/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sandbox_agent.tokens import Identity, Role, Token, TokenAuthority, new_key
from sandbox_agent.tokens.certificates import CLOCK_SKEW, sign_certificate


def aged(authority: TokenAuthority, *, issued_ago: timedelta, left: timedelta) -> Token:
    """A jobagent token of ``authority`` issued ``issued_ago`` that expires ``left``
    from now (negative: expired)."""
    key = new_key()
    now = datetime.now(UTC)
    certificate = sign_certificate(
        identity=Identity(Role.JOBAGENT), public_key=key.public_key(),
        issuer_key=authority.signer_key, issuer_cert=authority.signer,
        not_before=now - issued_ago - CLOCK_SKEW, not_after=now + left,
    )  # fmt: skip
    return Token(certificate, authority.chain, key)
