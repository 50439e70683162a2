"""Token errors: each failure its own class, each message one line with the fix."""

from __future__ import annotations


class TokenError(Exception):
    """A certificate or key that cannot be used as the token it claims to be."""

    code = "invalid"


class MalformedToken(TokenError):
    code = "malformed"


class TokenExpired(TokenError):
    code = "expired"


class TokenNotYetValid(TokenError):
    code = "not-yet-valid"


class UnknownIssuer(TokenError):
    code = "unknown-issuer"


class WrongRole(TokenError):
    code = "wrong-role"


class WrongJob(TokenError):
    code = "wrong-job"


class TokenRevoked(TokenError):
    code = "revoked"


class StaleRevocationList(TokenError):
    code = "stale-crl"


class KeyMismatch(TokenError):
    code = "key-mismatch"


class InsecureKeyFile(TokenError):
    code = "insecure-key-file"


class IssuanceRefused(TokenError):
    """The authority will not sign: the caller, the request or the job is not right."""

    code = "refused"
