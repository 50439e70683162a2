"""Fixtures: the committed TEST CA (certs-test/), copied so its keys are private (0600)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from sandbox_agent.tokens import (
    Identity,
    Role,
    Token,
    TokenAuthority,
    TokenVerifier,
    files,
    new_key,
)

CERTS = Path(__file__).resolve().parents[2] / "certs-test"


def private_copy(names: list[str], directory: Path) -> Path:
    """Copy certs-test files into a 0700 directory, keys 0600 (git keeps no modes)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    for name in names:
        target = directory / name
        shutil.copyfile(CERTS / name, target)
        target.chmod(0o600 if name.endswith(".key") else 0o644)
    return directory


@pytest.fixture
def authority(tmp_path: Path) -> TokenAuthority:
    """The TEST authority, able to mint fresh tokens now."""
    names = ["ca.pem", "signing.pem", "signing.key"]
    return TokenAuthority.load(private_copy(names, tmp_path / "ca"))


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(files.load_certificates(CERTS / "ca.pem"))


def fixture_chain(name: str) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    """A committed token: its certificate and the chain presented with it."""
    certs = files.load_certificates(CERTS / f"{name}.pem")
    return certs[0], tuple(certs[1:])


@pytest.fixture
def mint(authority: TokenAuthority) -> Callable[..., Token]:
    """Mint a token the normal way, from the TEST authority, valid now."""

    def make(identity: Identity, **kwargs: object) -> Token:
        key = new_key()
        issued = authority.issue(identity, key.public_key(), **kwargs)  # type: ignore[arg-type]
        return Token(issued.certificate, issued.chain, key)

    return make


JOBAGENT = Identity(Role.JOBAGENT)
