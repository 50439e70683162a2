"""Collecting outputs from a work directory a hostile payload prepared: real files,
real links, the real kernel's openat2 and the fallback without it."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from sandbox_agent.agent.outputs import collect, has_openat2
from sandbox_agent.runtime.workdir import remove_workdir

SECRET = b"-----BEGIN PRIVATE KEY----- agent key\n"
OPENERS = [pytest.param(True, id="openat2"), pytest.param(False, id="by-components")]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "key.pem").write_bytes(SECRET)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "result.txt").write_bytes(b"fine\n")
    return workdir


def run(work: Path, names: list[str], use_openat2: bool, **caps: int):  # type: ignore[no-untyped-def]
    if use_openat2 and not has_openat2():
        pytest.skip("this kernel has no openat2")
    limits = {"max_file": 1 << 20, "max_total": 4 << 20, **caps}
    return collect(work, names, work.parent / "store", use_openat2=use_openat2, **limits)


def stored_bytes(work: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((work.parent / "store").iterdir()))


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_a_plain_output_is_stored_with_its_checksum(work: Path, use_openat2: bool) -> None:
    got, problems = run(work, ["result.txt"], use_openat2)
    assert problems == []
    (item,) = got
    assert (item.name, item.size) == ("result.txt", 5)
    assert item.sha256 == "sha256:" + hashlib.sha256(b"fine\n").hexdigest()
    assert item.stored.read_bytes() == b"fine\n"
    assert item.stored.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("use_openat2", OPENERS)
@pytest.mark.parametrize(
    ("plant", "expected"),
    [
        ("symlink", "reached through a symlink or leaves the work directory"),
        ("hardlink", "has 2 hard links"),
        ("dir-symlink", "reached through a symlink or leaves the work directory"),
        ("fifo", "not a regular file"),
        ("device", "not a regular file"),
        ("directory", "not a regular file"),
        ("missing", "missing"),
    ],
)  # fmt: skip
def test_a_planted_output_is_refused_and_no_secret_is_stored(
    work: Path, use_openat2: bool, plant: str, expected: str
) -> None:
    key = work.parent / "agent" / "key.pem"
    name = "out.txt"
    if plant == "symlink":
        (work / name).symlink_to(key)
    elif plant == "hardlink":
        os.link(key, work / name)
    elif plant == "dir-symlink":
        (work / "sub").symlink_to(key.parent)
        name = "sub/key.pem"
    elif plant == "fifo":
        os.mkfifo(work / name)  # opening it for reading would block a careless agent
    elif plant == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(work / name, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: endless
    elif plant == "directory":
        (work / name).mkdir()
    got, problems = run(work, [name, "result.txt"], use_openat2)
    assert [c.name for c in got] == ["result.txt"]
    assert len(problems) == 1 and problems[0].startswith(f"{name}: {expected}")
    assert SECRET not in stored_bytes(work)


@pytest.mark.parametrize("use_openat2", OPENERS)
def test_outputs_over_the_caps_are_refused(work: Path, use_openat2: bool) -> None:
    (work / "big").write_bytes(b"x" * 2000)
    got, problems = run(work, ["big", "result.txt"], use_openat2, max_file=1000)
    assert [c.name for c in got] == ["result.txt"]
    assert problems == ["big: 2000 bytes is over the output caps"]


def test_the_total_cap_counts_every_output(work: Path) -> None:
    (work / "a").write_bytes(b"a" * 600)
    (work / "b").write_bytes(b"b" * 600)
    got, problems = run(work, ["a", "b"], False, max_total=1000)
    assert [c.name for c in got] == ["a"]
    assert problems == ["b: 600 bytes is over the output caps"]


def test_removing_the_work_directory_does_not_follow_links(work: Path) -> None:
    (work / "link").symlink_to(work.parent / "agent")
    (work / "sub").mkdir()
    (work / "sub" / "deep").symlink_to(work.parent / "agent" / "key.pem")
    remove_workdir(work)
    assert not work.exists()
    assert (work.parent / "agent" / "key.pem").read_bytes() == SECRET
