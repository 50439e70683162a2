"""The agent's output storage on a work directory a payload left behind: which files are
chosen, what is refused, what is kept, and how they are copied back out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sandbox_agent.agent.storage import Storage, StorageError, chosen, list_files
from sandbox_agent.jdl import load_job


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
    # the open is openat2's to refuse (tests/unit/test_outputs.py)
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
    from sandbox_agent.agent.outputs import remove_workdir
    from sandbox_agent.agent.storage import MAX_DEPTH, TooManyFiles

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
