"""The caps collect holds (storage.Caps feeds them: outputs.max_file, outputs.max_total,
outputs.max_log), on real files: sizes are apparent (a sparse file counts whole), a
file exactly at a cap is kept, one byte over is refused (or, for logs, cut there), the
total counts only what was kept, and a file that grows while it is copied is cut at
the cap it was checked against."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sandbox_agent.agent import outputs
from sandbox_agent.agent.outputs import collect
from sandbox_agent.agent.storage import Caps

CHUNK = 1 << 20  # the copy reads this much at a time: caps beyond it take several reads


@pytest.fixture
def work(tmp_path: Path) -> Path:
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir


def made(work: Path, name: str, size: int, *, sparse: bool = False) -> bytes:
    """A file of ``size`` apparent bytes: written (a pattern, so a copy from the wrong
    offset shows) or sparse (a hole, no block on disk). Returns its content."""
    path = work / name
    if sparse:
        with path.open("wb") as f:
            f.truncate(size)
        assert path.stat().st_blocks * 512 < size or size == 0  # a real hole
        return bytes(size)
    data = (name.encode() + b"0123456789abcdef" * 64)[:64] * (size // 64 + 1)
    path.write_bytes(data[:size])
    return data[:size]


def run(work: Path, names: list[str], caps: Caps, *, log: bool = False, store: str = "store"):  # type: ignore[no-untyped-def]
    """collect as storage.save calls it: outputs within max_file / max_total, logs each
    within max_log (two of them: 2 * max_log in all) and cut."""
    if log:
        return collect(work, names, work.parent / store, max_file=caps.max_log,
                       max_total=2 * caps.max_log, cut=True)  # fmt: skip
    return collect(work, names, work.parent / store, max_file=caps.max_file,
                   max_total=caps.max_total)  # fmt: skip


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def kept(got: list[outputs.Collected]) -> dict[str, bytes]:
    for item in got:
        data = item.stored.read_bytes()
        assert (item.size, item.sha256) == (len(data), sha(data))
    return {item.name: item.stored.read_bytes() for item in got}


@pytest.mark.parametrize("sparse", [False, True], ids=["written", "sparse"])
def test_one_output_at_its_cap_is_kept_and_one_byte_over_is_refused(
    work: Path, sparse: bool
) -> None:
    cap = 1000
    under, at = made(work, "under", cap - 1, sparse=sparse), made(work, "at", cap, sparse=sparse)
    made(work, "over", cap + 1, sparse=sparse)
    got, problems = run(work, ["under", "at", "over"], Caps(cap, 10 * cap, 0))
    assert kept(got) == {"under": under, "at": at}
    assert problems == [f"over: {cap + 1} bytes is over the output caps"]


def test_a_sparse_file_counts_whole_however_little_disk_it_holds(work: Path) -> None:
    with (work / "huge").open("wb") as f:
        f.truncate(1 << 40)  # a terabyte of hole
    assert (work / "huge").stat().st_blocks == 0
    made(work, "small", 10)
    got, problems = run(work, ["huge", "small"], Caps(1 << 30, 1 << 30, 0))
    assert list(kept(got)) == ["small"]
    assert problems == [f"huge: {1 << 40} bytes is over the output caps"]
    assert [p.name for p in (work.parent / "store").iterdir()] == ["0001"]  # nothing copied


def test_the_total_counts_what_was_kept_up_to_exactly_the_cap(work: Path) -> None:
    sizes = {"a": 600, "b": 500, "c": 400, "d": 1, "e": 0}
    data = {name: made(work, name, size) for name, size in sizes.items()}
    got, problems = run(work, list(sizes), Caps(1000, 1000, 0))
    # b would pass 1000 with a and is refused; c then fills the total exactly; d is one
    # byte over it; an empty file fits however full
    assert kept(got) == {"a": data["a"], "c": data["c"], "e": b""}
    assert problems == ["b: 500 bytes is over the output caps",
                        "d: 1 bytes is over the output caps"]  # fmt: skip
    assert sum(item.size for item in got) == 1000


@pytest.mark.parametrize("first", [999, 1000, 1001])
def test_the_total_is_one_cap_for_all_even_when_each_file_is_allowed_more(
    work: Path, first: int
) -> None:
    one, two = made(work, "one", first), made(work, "two", 2000 - first)
    got, problems = run(work, ["one", "two"], Caps(5000, 2000, 0))
    assert kept(got) == {"one": one, "two": two}
    assert problems == []
    made(work, "three", 1)
    got, problems = run(work, ["one", "two", "three"], Caps(5000, 2000, 0), store="again")
    assert list(kept(got)) == ["one", "two"]
    assert problems == ["three: 1 bytes is over the output caps"]


def test_a_log_over_its_cap_keeps_its_first_bytes_and_the_second_what_is_left(
    work: Path,
) -> None:
    # max_log 100: each log up to 100 bytes, the two up to 200 together
    first = made(work, "first", 150)
    second = made(work, "second", 100)
    third = made(work, "third", 120)
    fourth = made(work, "fourth", 1)
    made(work, "empty", 0)
    got, problems = run(work, ["first", "second", "third", "fourth", "empty"], Caps(0, 0, 100),
                        log=True)  # fmt: skip
    # first cut at 100; second exactly at its cap (100 left of 200); third: nothing left
    # of the total, refused rather than kept as an empty file; so is fourth; an empty
    # one is kept, empty
    assert kept(got) == {"first": first[:100], "second": second, "empty": b""}
    assert problems == ["first: 150 bytes; only the first 100 were kept",
                        "third: 120 bytes is over the output caps",
                        "fourth: 1 bytes is over the output caps"]  # fmt: skip
    assert len(third) == 120 and len(fourth) == 1


@pytest.mark.parametrize("size", [99, 100, 101])
def test_a_log_is_cut_at_exactly_its_cap(work: Path, size: int) -> None:
    data = made(work, "stdout", size)
    got, problems = run(work, ["stdout"], Caps(0, 0, 100), log=True)
    assert kept(got) == {"stdout": data[:100]}
    assert problems == ([f"stdout: {size} bytes; only the first 100 were kept"]
                        if size > 100 else [])  # fmt: skip


@pytest.mark.parametrize("left", [1, 50])
def test_a_log_the_total_leaves_room_for_is_cut_to_that_room(work: Path, left: int) -> None:
    one, two = made(work, "one", 70), made(work, "two", 90)
    got, problems = collect(work, ["one", "two"], work.parent / "store", max_file=100,
                            max_total=70 + left, cut=True)  # fmt: skip
    assert kept(got) == {"one": one, "two": two[:left]}
    assert problems == [f"two: 90 bytes; only the first {left} were kept"]


def test_a_stored_file_is_never_written_through_a_name_already_there(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store is new and the agent's, so its names are free; were one taken (a link
    # to a file of the agent's planted there), the copy must fail rather than write
    # the payload's bytes into that file.
    made(work, "out", 10)
    secret = work.parent / "agent.key"
    secret.write_bytes(b"the agent's key")
    real_copy = outputs._copy

    def planted_then_copied(fd: int, target: Path, room: int) -> tuple[str, int]:
        os.link(secret, target)
        return real_copy(fd, target, room)

    monkeypatch.setattr(outputs, "_copy", planted_then_copied)
    with pytest.raises(FileExistsError):
        collect(work, ["out"], work.parent / "store", max_file=100, max_total=100)
    assert secret.read_bytes() == b"the agent's key"


@pytest.mark.parametrize("sparse", [False, True], ids=["written", "sparse"])
def test_a_cut_beyond_one_read_stops_at_the_cap(work: Path, sparse: bool) -> None:
    cap = 2 * CHUNK + 5  # three reads: the last one must ask for 5 bytes only
    data = made(work, "stdout", 3 * CHUNK, sparse=sparse)
    got, problems = run(work, ["stdout"], Caps(0, 0, cap), log=True)
    assert kept(got) == {"stdout": data[:cap]}
    assert problems == [f"stdout: {3 * CHUNK} bytes; only the first {cap} were kept"]


@pytest.mark.parametrize(("start", "cap"), [(100, 150), (CHUNK, CHUNK + 5)],
                         ids=["one-read", "several-reads"])  # fmt: skip
def test_a_file_that_grows_while_it_is_copied_is_cut_at_its_cap(
    work: Path, monkeypatch: pytest.MonkeyPatch, start: int, cap: int
) -> None:
    # Checked at `start` bytes, within the cap; by the time it is copied it has grown
    # (a process the agent did not know of, a file system that lies): never more than
    # the cap is copied, and the total counts what was copied, not what was checked.
    made(work, "grows", start)
    made(work, "next", 10)
    real_copy = outputs._copy
    grown: list[bytes] = []

    def growing_then_copied(fd: int, target: Path, room: int) -> tuple[str, int]:
        if not grown:
            with (work / "grows").open("ab") as f:
                f.write(b"g" * (3 * cap))
            grown.append((work / "grows").read_bytes())
        return real_copy(fd, target, room)

    monkeypatch.setattr(outputs, "_copy", growing_then_copied)
    got, problems = collect(work, ["grows", "next"], work.parent / "store", max_file=cap,
                            max_total=cap + 9)  # fmt: skip
    assert len(grown[0]) == start + 3 * cap
    assert kept(got) == {"grows": grown[0][:cap]}
    assert problems == ["next: 10 bytes is over the output caps"]  # 9 left after `cap`
