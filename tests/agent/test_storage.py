"""The agent's output storage on a work directory a payload left behind: which files are
chosen, what is refused, what is kept, and how they are copied back out."""

from __future__ import annotations

import json
import os
import stat
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox_agent.agent.storage import (
    DEFAULT_CAPS,
    Caps,
    Storage,
    StorageError,
    archive_problem,
    chosen,
    list_files,
)
from sandbox_agent.jdl import load_job
from sandbox_agent.policy import compose, load_policy


def outputs_of(jdl: str):  # type: ignore[no-untyped-def]
    return load_job('Executable = "/bin/true";\n' + jdl).outputs


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "QC").mkdir(parents=True)
    (work / ".jalien-token").mkdir()
    (work / ".jalien-token" / "key.pem").write_text("JOB KEY")
    for name in ("stdout", "stderr", "a.root", "QC/b.root", "log.txt"):
        (work / name).write_text(name)
    return work


def test_the_listing_never_enters_the_token_directory_nor_follows_links(
    workdir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.root").write_text("SECRET")
    (workdir / "linked").symlink_to(outside)
    (workdir / "c.root").symlink_to(outside / "secret.root")
    assert list_files(workdir) == ["QC/b.root", "a.root", "log.txt", "stderr", "stdout"]


def test_patterns_match_one_path_component_at_a_time(workdir: Path) -> None:
    entries = outputs_of('Output = {"*.root", "QC/*.root", "missing.txt", "*.none"};')
    names, missing = chosen(entries, list_files(workdir))
    assert names == ["a.root", "QC/b.root"]
    assert missing == ["missing.txt: no such output", "*.none: no such output"]
    archives = outputs_of('OutputArchive = {"logs.zip:std*"};')
    assert chosen(archives, ["logs.zip"]) == (["logs.zip"], [])
    assert chosen(archives, []) == ([], ["logs.zip: the archive was not made"])


def test_an_output_reached_through_a_symlinked_directory_is_not_listed_nor_stored(
    workdir: Path, tmp_path: Path
) -> None:
    """The agent's own check, for a wrapper the payload subverted: the wrapper said
    DONE, but the named output goes through a symlink to the agent's secrets."""
    secrets = tmp_path / "certs"
    secrets.mkdir()
    (secrets / "jobagent.key").write_text("AGENT KEY")
    (workdir / "keys").symlink_to(secrets)
    storage = Storage(tmp_path / "outputs")
    manifest = storage.save(4, 0, "DONE", workdir, outputs_of('Output = {"keys/jobagent.key"};'))
    assert manifest.files == []
    # not even listed: the listing does not follow links; a swap between the listing and
    # the open is openat2's to refuse (tests/agent/test_outputs.py)
    assert manifest.problems == ["keys/jobagent.key: no such output"]
    for stored in (tmp_path / "outputs").rglob("*"):
        if stored.is_file():
            assert b"AGENT KEY" not in stored.read_bytes()


def test_kept_files_carry_their_digest_and_logs_are_kept_apart(
    workdir: Path, tmp_path: Path
) -> None:
    storage = Storage(tmp_path / "outputs")
    manifest = storage.save(9, 1, "DONE", workdir, outputs_of('Output = {"*.root"};'),
                            b"wrapper said", usage={"wall_seconds": 1.5})  # fmt: skip
    import hashlib

    assert [f["name"] for f in manifest.files] == ["a.root"]
    assert manifest.files[0]["sha256"] == "sha256:" + hashlib.sha256(b"a.root").hexdigest()
    assert manifest.logs == ["stdout", "stderr", "wrapper.log"]
    assert storage.log(9, "stdout") == b"stdout"
    assert storage.log(9, "wrapper.log") == b"wrapper said"
    on_disk = json.loads((tmp_path / "outputs" / "9" / "1" / "manifest.json").read_text())
    assert on_disk["usage"] == {"wall_seconds": 1.5}
    assert oct(os.stat(tmp_path / "outputs").st_mode & 0o777) == "0o700"


def test_export_refuses_a_manifest_name_that_leaves_the_target(
    workdir: Path, tmp_path: Path
) -> None:
    storage = Storage(tmp_path / "outputs")
    storage.save(2, 0, "DONE", workdir, outputs_of('Output = {"log.txt"};'))
    manifest_file = tmp_path / "outputs" / "2" / "0" / "manifest.json"
    data = json.loads(manifest_file.read_text())
    data["files"][0]["name"] = "../escaped.txt"
    manifest_file.write_text(json.dumps(data))
    with pytest.raises(StorageError, match=r"^\.\./escaped\.txt: leaves "):
        storage.export(2, tmp_path / "target")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_tree_a_thousand_levels_deep_is_refused_and_removed(tmp_path: Path) -> None:
    """A payload's `mkdir d && cd d` loop must neither crash the agent (recursion) nor
    survive the removal of its work directory."""
    from sandbox_agent.agent.storage import MAX_DEPTH, TooManyFiles
    from sandbox_agent.runtime.workdir import remove_workdir

    work = tmp_path / "work"
    work.mkdir()
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1100):  # by descriptor: the path would pass PATH_MAX
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    with open(os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
        f.write("deep")
    os.close(fd)
    try:
        with pytest.raises(TooManyFiles, match=f"deeper than {MAX_DEPTH} levels"):
            list_files(work)
        entries = outputs_of('Output = {"*.txt"};')
        manifest = Storage(tmp_path / "outputs").save(1, 0, "DONE", work, entries)
        assert manifest.problems == [f"the work directory is deeper than {MAX_DEPTH} levels; "
                                     "outputs were not looked for"]  # fmt: skip
    finally:  # removed whatever happened: pytest's own clean-up would recurse
        assert remove_workdir(work) is None
    assert not work.exists()


# -- caps from the policy, apparent sizes -----------------------------------------------------

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


def caps_for(jdl: str, policy: str = "default", dirs: list[Path] | None = None) -> Caps:
    effective = compose(load_policy(policy, dirs or [SHIPPED]),
                        load_job('Executable = "/bin/true";\n' + jdl))  # fmt: skip
    return Caps.from_policy(effective)


def test_caps_come_from_the_policy_and_the_total_never_passes_the_workdir_size() -> None:
    # the builtin policy's: 1 GiB a file, its 1 GiB work directory in all, 16 MiB a log
    assert Caps(1 << 30, 1 << 30, 16 << 20) == DEFAULT_CAPS
    assert caps_for("") == Caps(1 << 30, 4 << 30, 16 << 20)  # default.toml: 10 GB workdirs
    assert caps_for("", "strict") == Caps(1 << 30, 512 << 20, 16 << 20)
    assert caps_for('WorkDirectorySize = "20MB";').max_total == 20 << 20
    with pytest.raises(ValueError, match=r"Caps\.max_log must be a whole number of bytes"):
        Caps(1, 1, -1)


def allocated(path: Path) -> int:
    """Bytes the files under ``path`` really hold on disk (not their apparent sizes)."""
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def test_a_sparse_output_counts_whole_and_nothing_over_the_caps_is_copied(
    workdir: Path, tmp_path: Path
) -> None:
    """300 MB apparent, a few blocks real: refused by its apparent size under the job's
    20 MB work directory, before a byte is copied."""
    with open(workdir / "sparse.dat", "wb") as sparse:
        sparse.truncate(300 << 20)
    assert allocated(workdir / "sparse.dat") < 1 << 20
    caps = caps_for('WorkDirectorySize = "20MB";')
    storage = Storage(tmp_path / "outputs")
    manifest = storage.save(5, 0, "DONE", workdir, outputs_of('Output = {"sparse.dat", "a.root"};'),
                            caps=caps)  # fmt: skip
    assert [f["name"] for f in manifest.files] == ["a.root"]
    assert manifest.refused == [f"sparse.dat: {300 << 20} bytes is over the output caps"]
    stored = tmp_path / "outputs" / "5" / "0"
    assert sum(p.stat().st_size for p in stored.rglob("*") if p.is_file()) < 1 << 20
    assert allocated(stored) < 1 << 20


def test_a_log_over_its_cap_is_cut_there_and_the_cut_is_a_problem(
    workdir: Path, tmp_path: Path
) -> None:
    (workdir / "stdout").write_bytes(b"x" * 5000)
    with open(workdir / "stderr", "wb") as sparse:  # apparent size counts for logs too
        sparse.truncate(1 << 30)
    caps = Caps(max_file=1 << 20, max_total=1 << 20, max_log=1000)
    storage = Storage(tmp_path / "outputs")
    manifest = storage.save(6, 0, "DONE", workdir, (), caps=caps)
    assert storage.log(6, "stdout") == b"x" * 1000
    assert storage.log(6, "stderr") == b"\0" * 1000
    assert manifest.problems == [
        "log stdout: 5000 bytes; only the first 1000 were kept (outputs.max_log is 1000 bytes)",
        f"log stderr: {1 << 30} bytes; only the first 1000 were kept (outputs.max_log is 1000 "
        "bytes)",
    ]
    assert manifest.refused == []  # a cut log is told, it does not fail the job
    assert json.loads((tmp_path / "outputs" / "6" / "0" / "manifest.json").read_text())[
        "problems"] == manifest.problems  # fmt: skip


def test_the_wrappers_log_cut_by_the_agent_is_a_problem_too(workdir: Path, tmp_path: Path) -> None:
    storage = Storage(tmp_path / "outputs")
    manifest = storage.save(7, 0, "DONE", workdir, (), b"w" * 100, wrapper_log_size=100)
    assert manifest.problems == [] and storage.log(7, "wrapper.log") == b"w" * 100
    manifest = storage.save(8, 0, "DONE", workdir, (), b"w" * 100, wrapper_log_size=5000)
    assert manifest.problems == ["log wrapper.log: 5000 bytes; only the first 100 were kept"]
    assert manifest.refused == []


def test_a_log_the_payload_replaced_with_a_link_is_a_problem(workdir: Path, tmp_path: Path) -> None:
    (workdir / "stdout").unlink()
    (workdir / "stdout").symlink_to(workdir / "log.txt")
    (workdir / "stderr").unlink()  # never made: not a problem
    manifest = Storage(tmp_path / "outputs").save(7, 0, "DONE", workdir, ())
    assert manifest.problems == ["log stdout: reached through a symlink or leaves the work "
                                 "directory"]  # fmt: skip
    assert manifest.logs == []


# -- archives: what the wrapper could have made, or nothing ------------------------------------


def make_zip(path: Path, members: dict[str, bytes], *, mode: int = stat.S_IFREG | 0o644) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zipped.writestr(info, data)
    return path


def patched(path: Path, old: bytes, new: bytes, count: int = -1) -> Path:
    """The zip with header bytes rewritten by hand (names, sizes), as a hostile tool
    would write them; zipfile itself will not."""
    path.write_bytes(path.read_bytes().replace(old, new, count))
    return path


def central_size(path: Path, size: int) -> Path:
    """The first member's uncompressed size in the central directory set to ``size``."""
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02") + 24
    data[at:at + 4] = struct.pack("<I", size)
    path.write_bytes(bytes(data))
    return path


GOOD = {"stdout": b"out\n", "QC/a.log": b"log\n"}
PATTERNS = ["stdout", "*.log", "QC/*.log"]


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (lambda p: make_zip(p, {"../x": b"forged"}), "member '../x' climbs out with '..'"),
        (lambda p: make_zip(p, {"/etc/x": b"forged"}), "member '/etc/x' is an absolute path"),
        (lambda p: make_zip(p, {"QC/../../x.log": b"f"}), "climbs out with '..'"),
        (lambda p: patched(make_zip(p, {"aXb.log": b"f"}), b"aXb", b"a\0b"),
         "member 'a\\x00b.log' holds a NUL"),
        (lambda p: make_zip(p, {"..\\x.log": b"f"}), "holds a backslash"),
        (lambda p: make_zip(p, {"QC//a.log": b"f"}), "has an empty or '.' component"),
        (lambda p: make_zip(p, {"QC/": b""}), "has an empty or '.' component"),
        (lambda p: make_zip(p, {"a\x1b]0;t\x07.log": b"f"}), "holds a control character"),
        (lambda p: make_zip(p, {"secret.txt": b"f"}), "matches none of the entry's patterns"),
        (lambda p: make_zip(p, {".jalien-token/key.pem": b"K"}), "job token's directory"),
        (lambda p: make_zip(p, {"x.log": b"/etc/passwd"}, mode=stat.S_IFLNK | 0o777),
         "is not a regular file"),
        (lambda p: make_zip(p, {"x.log": b"a", "stdout": b"b", "QC/a.log": b"c"} | {}),
         None),
        (lambda p: patched(make_zip(p, {"x.log": b"a", "y.log": b"b"}), b"y.log", b"x.log"),
         "member 'x.log' is in the archive twice"),
        # the local header names another file than the central directory does
        (lambda p: patched(make_zip(p, {"x.log": b"a"}), b"x.log", b"../.x", 1),
         "not a zip the wrapper made (File name in directory"),
        # a bomb: more declared than the caps
        (lambda p: make_zip(p, {"x.log": b"\0" * 5000}), "more than 4096 bytes uncompressed"),
        # a liar: less declared than it inflates to; read back, the CRC gives it away
        (lambda p: central_size(make_zip(p, {"x.log": b"\0" * 3000}), 10),
         "not a zip the wrapper made (Bad CRC-32"),
        (lambda p: p.write_bytes(b"PK\x03\x04 not a zip") and p, "not a zip the wrapper made"),
        (lambda p: make_zip(p, {f"{i}.log": b"" for i in range(11)}), "more than 10 members"),
    ],
)  # fmt: skip
def test_archive_members_are_checked_on_real_zip_files(
    tmp_path: Path, build: Callable[[Path], Path], why: str | None
) -> None:
    path = build(tmp_path / "out.zip")
    found = archive_problem(path, "out.zip", PATTERNS, max_total=4096, max_members=10)
    if why is None:
        assert found is None
    else:
        assert found is not None and found.startswith("out.zip: ") and why in found, found
        assert found.isprintable()


def test_a_forged_archive_is_refused_and_not_kept(workdir: Path, tmp_path: Path) -> None:
    make_zip(workdir / "out.zip", {"../x": b"forged", "/etc/x": b"forged"})
    make_zip(workdir / "good.zip", GOOD)
    entries = outputs_of('Output = {"out.zip:stdout,*.log", "good.zip:stdout,QC/*.log", '
                         '"log.txt"};')  # fmt: skip
    storage = Storage(tmp_path / "outputs")
    manifest = storage.save(8, 0, "DONE", workdir, entries)
    assert [f["name"] for f in manifest.files] == ["good.zip", "log.txt"]
    assert manifest.refused == ["out.zip: member '../x' climbs out with '..'; the archive was "
                                "not kept"]  # fmt: skip
    stored = tmp_path / "outputs" / "8" / "0" / "files"
    assert sorted(p.name for p in stored.iterdir()) == ["0001", "0002"]  # out.zip's copy gone
    assert not any(b"forged" in p.read_bytes() for p in stored.iterdir())
