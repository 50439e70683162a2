"""Key files: 0600 from creation, never overwritten, refused when others can read them."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import CERTS, private_copy
from cryptography.hazmat.primitives.serialization import Encoding

from sandbox_agent.tokens import (
    InsecureKeyFile,
    KeyMismatch,
    MalformedToken,
    files,
    fingerprint,
    new_key,
)
from sandbox_agent.tokens.keys import (
    load_private_key,
    private_directory,
    same_key,
    write_private_key,
)


def test_written_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "agent.key"
    write_private_key(path, new_key())
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert load_private_key(path).public_key()


def test_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "agent.key"
    write_private_key(path, new_key())
    before = path.read_bytes()
    with pytest.raises(InsecureKeyFile, match="already exists; remove it first"):
        write_private_key(path, new_key())
    assert path.read_bytes() == before


def test_refuses_a_directory_open_to_others(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(InsecureKeyFile) as info:
        write_private_key(shared / "agent.key", new_key())
    assert str(info.value) == (
        f"{shared}: directory for keys is open to others (mode 0755); run: chmod 700 {shared}"
    )
    assert not (shared / "agent.key").exists()


def test_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    directory = private_directory(tmp_path / "keys")
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (directory / "agent.key").symlink_to(victim)
    with pytest.raises(InsecureKeyFile):
        write_private_key(directory / "agent.key", new_key())
    assert victim.read_text() == "untouched"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_refuses_readable_by_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys" / "agent.key"
    write_private_key(path, new_key())
    path.chmod(mode)
    with pytest.raises(InsecureKeyFile) as info:
        load_private_key(path)
    assert str(info.value) == (
        f"{path}: key file is readable by others (mode {mode:04o}); run: chmod 600 {path}"
    )


def test_load_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "keys" / "real.key"
    write_private_key(real, new_key())
    link = tmp_path / "keys" / "link.key"
    link.symlink_to(real)
    with pytest.raises(InsecureKeyFile, match="cannot open the key file"):
        load_private_key(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_load_refuses_a_key_owned_by_someone_else(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "agent.key"
    write_private_key(path, new_key())
    os.chown(path, 65534, 65534)
    with pytest.raises(InsecureKeyFile, match="belongs to uid 65534, not to us"):
        load_private_key(path)


def test_load_refuses_garbage(tmp_path: Path) -> None:
    directory = private_directory(tmp_path / "keys")
    path = directory / "agent.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(MalformedToken, match="not an unencrypted PEM private key"):
        load_private_key(path)


def test_key_mismatch(tmp_path: Path) -> None:
    directory = private_copy(["mismatch.pem", "mismatch.key", "jobagent.pem", "jobagent.key"],
                             tmp_path / "tokens")  # fmt: skip
    with pytest.raises(KeyMismatch) as info:
        files.load_token(directory / "mismatch.pem", directory / "mismatch.key")
    assert "is not the key of" in str(info.value)
    token = files.load_token(directory / "jobagent.pem", directory / "jobagent.key")
    assert len(token.chain) == 1


def test_fingerprint_is_sha256_of_der() -> None:
    cert = files.load_certificates(CERTS / "jobagent.pem")[0]
    der = cert.public_bytes(Encoding.DER)
    assert fingerprint(cert) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_write_token_then_load_it(tmp_path: Path) -> None:
    directory = private_copy(["job-7.pem", "job-7.key"], tmp_path / "src")
    token = files.load_token(directory / "job-7.pem", directory / "job-7.key")
    cert_file, key_file = files.write_token(tmp_path / "out", "copy", token)
    again = files.load_token(cert_file, key_file)
    assert (again.certificate, again.chain) == (token.certificate, token.chain)
    assert same_key(again.key, token.certificate)
    assert key_file.stat().st_mode & 0o777 == 0o600
    shutil.rmtree(tmp_path / "out")
