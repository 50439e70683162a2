"""Tokens: X.509 certificates that carry a role (jobagent, job, broker, user, admin) and
what it names: for a job its scope, for a person their user name.

The agent holds a jobagent token; each job gets a token for its own job id, signed from
a CSR the agent makes with a fresh key; only the job token enters the sandbox. People
hold user tokens (their own jobs) or admin tokens (every job) for the broker. A pilot
renews its jobagent token from the broker before it expires; the renewal names the first
token of its line (its origin), so that revoking that token revokes every renewal.
"""

from sandbox_agent.tokens.authority import Issued, RenewalPolicy, TokenAuthority, origin_of
from sandbox_agent.tokens.errors import (
    InsecureKeyFile,
    IssuanceRefused,
    KeyMismatch,
    MalformedToken,
    TokenError,
    TokenExpired,
    TokenNotYetValid,
    TokenRevoked,
    UnknownIssuer,
    WrongJob,
    WrongRole,
)
from sandbox_agent.tokens.files import Token, load_token, write_token
from sandbox_agent.tokens.keys import KeyType, fingerprint, new_key
from sandbox_agent.tokens.request import job_request, new_job_request
from sandbox_agent.tokens.roles import Identity, JobScope, Origin, Role, identity_of
from sandbox_agent.tokens.verify import TokenVerifier, VerifiedToken

__all__ = [
    "Identity",
    "InsecureKeyFile",
    "IssuanceRefused",
    "Issued",
    "JobScope",
    "KeyMismatch",
    "KeyType",
    "MalformedToken",
    "Origin",
    "RenewalPolicy",
    "Role",
    "Token",
    "TokenAuthority",
    "TokenError",
    "TokenExpired",
    "TokenNotYetValid",
    "TokenRevoked",
    "TokenVerifier",
    "UnknownIssuer",
    "VerifiedToken",
    "WrongJob",
    "WrongRole",
    "fingerprint",
    "identity_of",
    "job_request",
    "load_token",
    "new_job_request",
    "new_key",
    "origin_of",
    "write_token",
]
