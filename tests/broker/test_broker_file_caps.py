"""The broker's caps on what a pilot sends for one attempt: per file, per attempt in
files and in bytes (a broker pilot uploads what its store kept; the broker holds its
own line whatever the pilot's policy says)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sandbox_agent.broker.files import ATTEMPT_CAP, FILE_CAP, FileRefused, FileStore


def put(store: FileStore, name: str, data: bytes, attempt: int = 0) -> None:
    store.put(7, attempt, name, data, hashlib.sha256(data).hexdigest())


def test_an_attempt_keeps_at_most_its_cap_in_bytes(tmp_path: Path) -> None:
    store = FileStore(tmp_path, attempt_cap=1000)
    put(store, "outputs/a", b"a" * 600)
    with pytest.raises(FileRefused, match="at most 1000 bytes in all; 600 are kept already") as e:
        put(store, "outputs/b", b"b" * 401)
    assert e.value.status == 413
    assert not (tmp_path / "7" / "0" / "files" / "outputs" / "b").exists()
    put(store, "outputs/b", b"b" * 400)  # exactly the cap
    put(store, "outputs/c", b"c", attempt=1)  # each attempt its own
    assert [f["name"] for f in store.listing(7, 0)] == ["outputs/a", "outputs/b"]


def test_the_default_caps_are_sane() -> None:
    assert FILE_CAP == 64 << 20
    assert ATTEMPT_CAP == (4 << 30) + FILE_CAP  # the builtin outputs.max_total, and logs
