"""The local file catalogue (content-addressed objects, an SQLite index) and the staging
of a job's local files into it at submit."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from sandbox_agent.agent.staging import StagingError, stage
from sandbox_agent.catalogue import MAX_LFN, Catalogue, CatalogueError, check_lfn, staged_lfn
from sandbox_agent.jdl import load_job, render_jdl
from sandbox_agent.policy.reach import Deny

NO_DENY = Deny()  # these tests are about staging itself: tests/policy/test_reach.py judges paths


@pytest.fixture
def catalogue(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Catalogue(tmp_path / "catalogue") as cat:
        yield cat


def _file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- the catalogue ---------------------------------------------------------------


def test_add_get_place_round_trip_keeps_the_bytes_and_the_digest(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    data = b"#!/bin/sh\necho hello\n" * 1000
    source = _file(tmp_path, "hello.sh", data)
    entry = catalogue.add_file(source, "/alice/hello.sh", "alice")
    digest = hashlib.sha256(data).hexdigest()
    assert (entry.lfn, entry.sha256, entry.size, entry.owner) == (
        "/alice/hello.sh", digest, len(data), "alice"
    )  # fmt: skip
    assert catalogue.get("/alice/hello.sh") == entry
    work = tmp_path / "work"
    work.mkdir()
    assert catalogue.place("/alice/hello.sh", work, "run.sh", 0o750) == entry
    assert (work / "run.sh").read_bytes() == data
    assert _mode(work / "run.sh") == 0o750
    # the object and the index are private, written through no symlink
    obj = catalogue.directory / "objects" / digest
    assert obj.read_bytes() == data and _mode(obj) == 0o600
    assert _mode(catalogue.directory) == 0o700 and _mode(catalogue.directory / "objects") == 0o700
    assert _mode(catalogue.path) == 0o600
    assert not [p for p in obj.parent.iterdir() if p.name.startswith(".tmp-")]


def test_the_index_survives_reopening_and_is_in_wal_mode(tmp_path: Path) -> None:
    source = _file(tmp_path, "a", b"abc")
    with Catalogue(tmp_path / "c") as cat:
        entry = cat.add_file(source, "/a", "alice")
    with Catalogue(tmp_path / "c") as cat:
        assert cat.get("/a") == entry
        mode = cat._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_entries_by_prefix_in_lfn_order(catalogue: Catalogue, tmp_path: Path) -> None:
    source = _file(tmp_path, "a", b"abc")
    for lfn in ("/b/2", "/a/1", "/b/1", "/bc"):
        catalogue.add_file(source, lfn, "alice")
    assert [e.lfn for e in catalogue.entries()] == ["/a/1", "/b/1", "/b/2", "/bc"]
    assert [e.lfn for e in catalogue.entries("/b/")] == ["/b/1", "/b/2"]
    assert catalogue.entries("/zzz") == []
    with pytest.raises(CatalogueError, match="must start with '/'"):
        catalogue.entries("b")


def test_the_same_lfn_takes_the_same_content_again_but_not_other_content(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    first = catalogue.add_file(_file(tmp_path, "a", b"one"), "/x", "alice")
    again = catalogue.add_file(_file(tmp_path, "b", b"one"), "/x", "bob")
    assert again == first  # the existing entry, its owner kept
    with pytest.raises(CatalogueError) as info:
        catalogue.add_file(_file(tmp_path, "c", b"two"), "/x", "alice")
    message = str(info.value)
    assert "LF:/x is already in the catalogue with other content" in message
    assert "\n" not in message and "another LFN" in message
    assert catalogue.get("/x").sha256 == hashlib.sha256(b"one").hexdigest()
    # the refused content left no object behind
    names = {p.name for p in (catalogue.directory / "objects").iterdir()}
    assert names == {hashlib.sha256(b"one").hexdigest()}


def test_a_missing_lfn_says_how_to_add_it(catalogue: Catalogue) -> None:
    with pytest.raises(CatalogueError) as info:
        catalogue.get("/alice/x")
    assert str(info.value) == (
        "LF:/alice/x is not in the catalogue; add it with: sandbox-agent catalogue add FILE "
        "/alice/x"
    )


@pytest.mark.parametrize(
    ("lfn", "fragment"),
    [
        ("relative/x", "must start with '/'"),
        ("", "must start with '/'"),
        ("/", "empty component"),
        ("/a//b", "empty component"),
        ("/a/b/", "empty component"),
        ("/a/./b", "contains '.'"),
        ("/a/../b", "contains '..'"),
        ("/a/\x00b", "control character"),
        ("/a/\nb", "control character"),
        ("/" + "a" * MAX_LFN, f"use at most {MAX_LFN}"),
    ],
)
def test_lfn_rules(lfn: str, fragment: str) -> None:
    with pytest.raises(CatalogueError) as info:
        check_lfn(lfn)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value) and "\x00" not in str(info.value)


def test_lfn_rules_accept_plain_names() -> None:
    assert check_lfn("/alice/data/2024/x.root") == "/alice/data/2024/x.root"
    assert check_lfn("/" + "a" * (MAX_LFN - 1)) == "/" + "a" * (MAX_LFN - 1)
    assert check_lfn("/a/..b/c.d") == "/a/..b/c.d"


def test_a_bad_lfn_is_refused_before_anything_is_stored(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    with pytest.raises(CatalogueError, match=r"'\.\.'"):
        catalogue.add_file(_file(tmp_path, "a", b"x"), "/a/../b", "alice")
    assert catalogue.entries() == []
    assert list((catalogue.directory / "objects").iterdir()) == []


def test_the_size_cap(tmp_path: Path) -> None:
    with Catalogue(tmp_path / "c", max_file=10) as cat:
        assert cat.add_file(_file(tmp_path, "ten", b"x" * 10), "/ten", "alice").size == 10
        with pytest.raises(CatalogueError) as info:
            cat.add_file(_file(tmp_path, "eleven", b"x" * 11), "/eleven", "alice")
        assert "is 11 bytes, above the catalogue's limit of 10 bytes" in str(info.value)
        assert [e.lfn for e in cat.entries()] == ["/ten"]


def test_a_fifo_is_refused_without_waiting_for_a_writer(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def add() -> None:
        try:
            catalogue.add_file(fifo, "/fifo", "alice")
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=add, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock it before failing, so the test run ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("adding a FIFO blocked waiting for a writer")
    assert len(outcome) == 1 and isinstance(outcome[0], CatalogueError)
    assert "is not a regular file" in str(outcome[0])
    assert catalogue.entries() == []


def test_a_directory_or_a_missing_file_is_refused(catalogue: Catalogue, tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="is not a regular file"):
        catalogue.add_file(tmp_path, "/dir", "alice")
    with pytest.raises(CatalogueError, match="cannot read the file"):
        catalogue.add_file(tmp_path / "nothing", "/nothing", "alice")


def test_place_refuses_an_existing_target(catalogue: Catalogue, tmp_path: Path) -> None:
    catalogue.add_file(_file(tmp_path, "a", b"new"), "/a", "alice")
    work = tmp_path / "work"
    work.mkdir()
    (work / "a").write_bytes(b"old")
    with pytest.raises(CatalogueError, match="the target must not exist yet"):
        catalogue.place("/a", work, "a", 0o644)
    assert (work / "a").read_bytes() == b"old"
    # nor a symlink planted under the target's name, dangling or not
    (work / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CatalogueError):
        catalogue.place("/a", work, "link", 0o644)
    assert not (tmp_path / "elsewhere").exists()


def test_place_refuses_a_symlinked_directory(catalogue: Catalogue, tmp_path: Path) -> None:
    catalogue.add_file(_file(tmp_path, "a", b"data"), "/a", "alice")
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "work").symlink_to(real)
    with pytest.raises(CatalogueError, match="not a symlink"):
        catalogue.place("/a", tmp_path / "work", "a", 0o644)
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_place_refuses_a_name_that_is_not_plain(
    catalogue: Catalogue, tmp_path: Path, name: str
) -> None:
    catalogue.add_file(_file(tmp_path, "a", b"data"), "/a", "alice")
    with pytest.raises(CatalogueError, match="not a plain file name"):
        catalogue.place("/a", tmp_path, name, 0o644)


def test_place_refuses_setuid_bits(catalogue: Catalogue, tmp_path: Path) -> None:
    catalogue.add_file(_file(tmp_path, "a", b"data"), "/a", "alice")
    with pytest.raises(CatalogueError, match="within 0o777"):
        catalogue.place("/a", tmp_path, "b", 0o4755)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("damage", [b"evil", b"dat", b"datax"])
def test_a_corrupted_object_never_reaches_a_job(
    catalogue: Catalogue, tmp_path: Path, damage: bytes
) -> None:
    entry = catalogue.add_file(_file(tmp_path, "a", b"data"), "/a", "alice")
    (catalogue.directory / "objects" / entry.sha256).write_bytes(damage)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(CatalogueError) as info:
        catalogue.place("/a", work, "a", 0o644)
    assert "LF:/a: its stored object does not match the catalogue" in str(info.value)
    assert "catalogue add FILE /a" in str(info.value)
    assert list(work.iterdir()) == []  # the partial copy is gone
    # adding the good file again repairs the object
    catalogue.add_file(_file(tmp_path, "again", b"data"), "/a", "alice")
    catalogue.place("/a", work, "a", 0o644)
    assert (work / "a").read_bytes() == b"data"


def test_a_missing_object_is_one_line(catalogue: Catalogue, tmp_path: Path) -> None:
    entry = catalogue.add_file(_file(tmp_path, "a", b"data"), "/a", "alice")
    (catalogue.directory / "objects" / entry.sha256).unlink()
    with pytest.raises(CatalogueError, match="cannot be read") as info:
        catalogue.place("/a", tmp_path, "b", 0o644)
    assert "\n" not in str(info.value)


def test_a_catalogue_file_that_is_not_a_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "catalogue.sqlite3").write_text("not a database" * 100)
    with pytest.raises(CatalogueError, match="is not a usable catalogue database"):
        Catalogue(tmp_path / "c")


def test_a_symlinked_catalogue_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "c").symlink_to(tmp_path / "real")
    with pytest.raises(CatalogueError, match="not a symlink"):
        Catalogue(tmp_path / "c")
    assert list((tmp_path / "real").iterdir()) == []


# -- staging -----------------------------------------------------------------------


def _job(jdl_dir: Path, text: str):  # type: ignore[no-untyped-def]
    (jdl_dir / "job.jdl").write_text(text)
    return load_job(text, source=str(jdl_dir / "job.jdl"))


def test_staging_replaces_local_files_by_catalogue_names(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    jobdir = tmp_path / "job"
    (jobdir / "data").mkdir(parents=True)
    _file(jobdir, "run.sh", b"#!/bin/sh\n")
    _file(jobdir, "check.sh", b"#!/bin/sh\nexit 0\n")
    _file(jobdir / "data", "in.txt", b"input")
    public = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-catalogue-"))
    public.chmod(0o755)  # named by its absolute path, a file must be readable by others
    elsewhere = _file(public, "abs.txt", b"absolute")
    catalogue.add_file(_file(tmp_path, "c", b"cat"), "/alice/cat.txt", "alice")
    inputs = f'"data/in.txt", "{elsewhere}", "LF:/alice/cat.txt"'
    spec = _job(jobdir, f'Executable = "run.sh"; ValidationCommand = "check.sh"; '
                        f"InputFile = {{{inputs}}};")  # fmt: skip
    staged = stage(spec, jobdir, catalogue, "alice", NO_DENY)

    def lfn(data: bytes, name: str) -> str:
        return staged_lfn("alice", hashlib.sha256(data).hexdigest(), name)

    assert staged.executable == "LF:" + lfn(b"#!/bin/sh\n", "run.sh")
    assert staged.executable.startswith("LF:/local/alice/")
    assert len(staged.executable.split("/")[3]) == 16
    assert staged.validation_command == "LF:" + lfn(b"#!/bin/sh\nexit 0\n", "check.sh")
    assert [(f.name, f.catalogue) for f in staged.input_files] == [
        (lfn(b"input", "in.txt"), True),
        (lfn(b"absolute", "abs.txt"), True),
        ("/alice/cat.txt", True),
    ]
    assert catalogue.get(lfn(b"input", "in.txt")).size == 5
    # the normalized JDL names the staged files, and reads back to the same spec
    text = render_jdl(staged)
    assert f'"LF:{lfn(b"input", "in.txt")}"' in text and '"run.sh"' not in text
    assert load_job(text) == staged
    # staging again is the same names, no error
    assert stage(spec, jobdir, catalogue, "alice", NO_DENY) == staged


def test_an_absolute_program_is_left_alone(catalogue: Catalogue, tmp_path: Path) -> None:
    spec = _job(tmp_path, 'Executable = "/bin/sleep"; ValidationCommand = "/bin/true";')
    assert stage(spec, tmp_path, catalogue, "alice", NO_DENY) == spec
    assert catalogue.entries() == []


def test_a_missing_relative_executable_is_refused(catalogue: Catalogue, tmp_path: Path) -> None:
    spec = _job(tmp_path, 'Executable = "hello.sh";')
    with pytest.raises(StagingError) as info:
        stage(spec, tmp_path, catalogue, "alice", NO_DENY)
    assert str(info.value) == (
        f"Executable hello.sh: no such file next to the JDL ({tmp_path}); give an absolute "
        "path for a program inside the sandbox, or an LF: name"
    )


@pytest.mark.parametrize(
    ("jdl", "expected"),
    [
        ('Executable = "LF:/alice/nope.sh";',
         "Executable: LF:/alice/nope.sh is not in the catalogue; add it with: "
         "sandbox-agent catalogue add FILE /alice/nope.sh"),
        ('Executable = "/bin/true"; ValidationCommand = "LF:/alice/v.sh";',
         "ValidationCommand: LF:/alice/v.sh is not in the catalogue;"),
        ('Executable = "/bin/true"; InputFile = "LF:/alice/in.txt";',
         "InputFile: LF:/alice/in.txt is not in the catalogue;"),
        ('Executable = "/bin/true"; InputFile = "LF:alice/in.txt";',
         "InputFile: LFN 'alice/in.txt' must start with '/'"),
        ('Executable = "/bin/true"; ValidationCommand = "check.sh";',
         "ValidationCommand check.sh: no such file next to the JDL"),
        ('Executable = "/bin/true"; InputFile = "nothing.txt";',
         "InputFile nothing.txt: no such file in "),
        ('Executable = "/bin/true"; InputFile = "/no/such/file";',
         "InputFile /no/such/file: no such file; check the path"),
        ('Executable = "run.sh"; InputFile = "sub/run.sh";',
         "InputFile sub/run.sh: lands on run.sh in the work directory, as Executable run.sh "
         "does; rename one of them"),
        ('Executable = "run.sh"; ValidationCommand = "LF:/alice/run.sh";',
         "ValidationCommand LF:/alice/run.sh: lands on run.sh in the work directory"),
        # (the same name twice is one item, as to JAliEn; two files of one name collide)
        ('Executable = "/bin/true"; InputFile = {"run.sh", "sub/run.sh"};',
         "InputFile sub/run.sh: lands on run.sh in the work directory, as InputFile run.sh"),
        ('Executable = "/bin/true"; InputFile = "sub/stdout";',
         "InputFile sub/stdout: its name stdout is reserved in the work directory"),
        ('Executable = "/bin/true"; InputFile = "LF:/alice/stderr";',
         "InputFile LF:/alice/stderr: its name stderr is reserved"),
        # a hidden name: refused as such (private here) or as the token's own name
        ('Executable = ".jalien-token";', "Executable .jalien-token: "),
        ('Executable = "sub";', "Executable sub: "),
    ],
)  # fmt: skip
def test_staging_refusals_name_the_key_and_the_path(
    catalogue: Catalogue, tmp_path: Path, jdl: str, expected: str
) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("run.sh", "sub/run.sh", "sub/stdout", ".jalien-token"):
        _file(tmp_path, name, b"x")
    catalogue.add_file(_file(tmp_path, "other", b"y"), "/alice/run.sh", "alice")
    catalogue.add_file(_file(tmp_path, "other2", b"z"), "/alice/stderr", "alice")
    before = catalogue.entries()
    with pytest.raises(StagingError) as info:
        stage(_job(tmp_path, jdl), tmp_path, catalogue, "alice", NO_DENY)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)
    assert catalogue.entries() == before  # a refused job stages nothing


def test_a_directory_given_as_a_file_is_refused(catalogue: Catalogue, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(StagingError, match="is not a regular file"):
        stage(_job(tmp_path, 'Executable = "sub";'), tmp_path, catalogue, "alice", NO_DENY)


def test_an_owner_that_cannot_be_a_name_component_is_refused(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    _file(tmp_path, "run.sh", b"x")
    with pytest.raises(StagingError, match="owner 'a/b'"):
        stage(_job(tmp_path, 'Executable = "run.sh";'), tmp_path, catalogue, "a/b", NO_DENY)
