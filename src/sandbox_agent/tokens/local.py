"""The embedded default's token authority under HOME/certs: made on first use, its
jobagent and broker tokens kept valid. ``certs init`` and the pilot share this, so a
newcomer's first ``sandbox-agent run`` works without a separate step."""

from __future__ import annotations

import fcntl
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_agent.tokens import files
from sandbox_agent.tokens.authority import TokenAuthority
from sandbox_agent.tokens.errors import TokenError
from sandbox_agent.tokens.files import Token, write_token
from sandbox_agent.tokens.keys import KeyType, new_key
from sandbox_agent.tokens.roles import Identity, Role


@dataclass
class Prepared:
    authority: TokenAuthority
    made: list[str] = field(default_factory=list)  # "authority", and the roles issued
    replaced: list[str] = field(default_factory=list)  # "role (why the old one was unusable)"


def ensure_authority(
    target: Path,
    *,
    kind: KeyType = KeyType.EC,
    intermediate: bool = True,
    broker_hosts: tuple[str, ...] = ("localhost",),
) -> Prepared:
    """Load the authority in ``target`` or make it; (re)issue the jobagent and broker
    tokens that are missing or unusable. Raises TokenError, ValueError or OSError. Two
    callers at once (two pilots' first runs, certs init) take turns on a lock file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure(target, kind, intermediate, broker_hosts)


def _ensure(
    target: Path, kind: KeyType, intermediate: bool, broker_hosts: tuple[str, ...]
) -> Prepared:
    if (target / files.CA_CERT).exists():
        prepared = Prepared(TokenAuthority.load(target))
    else:
        prepared = Prepared(TokenAuthority.create(target, kind=kind, intermediate=intermediate),
                            ["authority"])  # fmt: skip
    authority = prepared.authority
    for role in (Role.JOBAGENT, Role.BROKER):
        problem = token_problem(authority, target, role.value)
        if problem is None:
            continue
        if problem != "missing":
            prepared.replaced.append(f"{role.value} ({problem})")
        for path in (files.cert_path(target, role.value), files.key_path(target, role.value)):
            path.unlink(missing_ok=True)
        key = new_key(kind)
        issued = authority.issue(
            Identity(role),
            key.public_key(),
            dns_names=broker_hosts if role is Role.BROKER else (),
            ip_addresses=("127.0.0.1", "::1") if role is Role.BROKER else (),
        )
        write_token(target, role.value, Token(issued.certificate, issued.chain, key))
        prepared.made.append(role.value)
    return prepared


def token_problem(authority: TokenAuthority, directory: Path, name: str) -> str | None:
    """Why NAME.pem/NAME.key cannot be used as they are (missing, mismatched, expired,
    revoked by the authority's CRL, key open to others), or None when they can."""
    cert_file, key_file = files.cert_path(directory, name), files.key_path(directory, name)
    if not cert_file.exists() and not key_file.exists():
        return "missing"
    try:
        token = files.load_token(cert_file, key_file)
        crl_file = directory / files.CRL
        crl = files.load_crl(crl_file) if crl_file.exists() else None
        authority.verifier(crl).verify(token.certificate, token.chain, role=Role(name))
    except TokenError as exc:
        return str(exc)
    return None
