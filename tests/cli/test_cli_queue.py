"""`submit`, `jobs` and `status` through the real console script, on a queue under a
private --home."""

from __future__ import annotations

import getpass
import hashlib
import json
import re
from pathlib import Path

import pytest
from cli_support import ROOT, cli_env, run_cli


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = cli_env(tmp_path / "home")

    def run(*args: object):  # type: ignore[no-untyped-def]
        return run_cli(env, *args)

    return run


def test_submitted_jobs_are_listed_and_their_history_shown(cli) -> None:  # type: ignore[no-untyped-def]
    assert cli("submit", "samples/hello.jdl").stdout == "1\n"
    second = cli("submit", "samples/fail.jdl", "--priority", "5", "--json")
    assert json.loads(second.stdout) == {"id": 2}
    listed = json.loads(cli("jobs", "--json").stdout)
    assert [(j["id"], j["state"], j["priority"]) for j in listed] == [(1, "WAITING", 0),
                                                                     (2, "WAITING", 5)]  # fmt: skip
    text = cli("jobs").stdout.splitlines()
    assert text[0].split() == ["ID", "STATE", "RESUB", "OWNER", "SUBMITTED"]
    assert text[1].split()[:3] == ["1", "WAITING", "0"]
    status = json.loads(cli("status", "1", "--json").stdout)
    assert [c["state"] for c in status["history"]] == ["WAITING"]
    # stored in its normalized form, hello.sh staged into the catalogue
    assert re.search(r'^Executable = "LF:/local/[^/]+/[0-9a-f]{16}/hello.sh";$', status["jdl"],
                     re.MULTILINE)  # fmt: skip
    assert cli("status", "1").stdout.startswith("job 1: WAITING (resubmission 0, owner ")
    assert cli("jobs", "--state", "done", "--json").stdout.strip() == "[]"


def test_submit_arguments_are_substituted_before_the_job_is_stored(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    jdl = tmp_path / "args.jdl"
    jdl.write_text('Executable = "/bin/echo"; Arguments = "run $1";\n')
    assert cli("submit", jdl, "544121").returncode == 0
    stored = json.loads(cli("status", "1", "--json").stdout)["jdl"]
    assert '"run 544121"' in stored and "$1" not in stored


def test_submit_says_where_jalien_would_read_the_jdl_otherwise(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    jdl = tmp_path / "ttl.jdl"
    jdl.write_text('Executable = "/bin/true";\nTTL = "two days";\nJobTag = {fast, small};\n')
    done = cli("submit", jdl)
    assert done.returncode == 0 and done.stdout == "1\n"
    assert "TTL 'two days' is not a number of seconds" in done.stderr
    assert "unquoted items are 2 items here, one item to JAliEn" in done.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["status", "9"], "sandbox-agent: job 9: no such job in "),
        (["jobs", "--state", "bogus"], "sandbox-agent: --state bogus: not a job state; use one of"),
        (["submit", ROOT / "tests/jdl/corpus/broken/unclosed_list.jdl"],
         "tests/jdl/corpus/broken/unclosed_list.jdl:3:44: expected ','"),
        (["submit", "no-such.jdl"], "sandbox-agent: no-such.jdl: cannot read the file"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_and_nothing_is_queued(cli, args: list[object], expected: str) -> None:  # type: ignore[no-untyped-def]
    result = cli(*args)
    assert result.returncode == 2
    assert expected in result.stderr.splitlines()[0]
    assert cli("jobs", "--json").stdout.strip() == "[]"


def test_a_queue_file_that_is_not_a_database_is_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "home" / "queue").mkdir(parents=True)
    (tmp_path / "home" / "queue" / "queue.sqlite3").write_text("not a database")
    result = cli("jobs")
    assert result.returncode == 3
    assert result.stderr.startswith("sandbox-agent: ") and result.stderr.count("\n") == 1


# -- staging, and refusing what could never run -----------------------------------------


def _queued(cli) -> list[object]:  # type: ignore[no-untyped-def]
    return json.loads(cli("jobs", "--json").stdout)  # type: ignore[no-any-return]


def test_submit_stages_the_local_executable_into_the_catalogue(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = (ROOT / "samples/hello.sh").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert cli("submit", "samples/hello.jdl").returncode == 0
    stored = json.loads(cli("status", "1", "--json").stdout)["jdl"]
    lfn = f"/local/{getpass.getuser()}/{digest[:16]}/hello.sh"
    assert f'Executable = "LF:{lfn}";' in stored.splitlines()
    listed = json.loads(cli("catalogue", "ls", "--json").stdout)
    assert [(e["lfn"], e["sha256"], e["size"]) for e in listed] == [(lfn, digest, len(data))]
    assert (tmp_path / "home/catalogue/objects" / digest).read_bytes() == data
    # the same script again: the same name, one entry
    assert cli("submit", "samples/hello.jdl").stdout == "2\n"
    assert len(json.loads(cli("catalogue", "ls", "--json").stdout)) == 1


def test_submit_stages_input_files_and_keeps_absolute_programs(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "in.txt").write_text("input")
    jdl = tmp_path / "job.jdl"
    jdl.write_text('Executable = "/bin/cat"; Arguments = "in.txt"; InputFile = "in.txt";')
    assert cli("submit", jdl).returncode == 0
    stored = json.loads(cli("status", "1", "--json").stdout)["jdl"]
    digest = hashlib.sha256(b"input").hexdigest()
    assert 'Executable = "/bin/cat";' in stored
    assert f'InputFile = {{ "LF:/local/{getpass.getuser()}/{digest[:16]}/in.txt" }};' in stored


def test_a_missing_catalogue_name_is_refused_and_nothing_is_queued(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    jdl = tmp_path / "job.jdl"
    jdl.write_text('Executable = "LF:/alice/run.sh";')
    result = cli("submit", jdl)
    assert result.returncode == 2
    assert result.stderr == (
        "sandbox-agent: Executable: LF:/alice/run.sh is not in the catalogue; add it with: "
        "sandbox-agent catalogue add FILE /alice/run.sh\n"
    )
    assert _queued(cli) == []
    # once it is added, the same JDL is accepted as it is
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    assert cli("catalogue", "add", tmp_path / "run.sh", "/alice/run.sh").returncode == 0
    assert cli("submit", jdl).stdout == "1\n"
    assert (
        'Executable = "LF:/alice/run.sh";' in json.loads(cli("status", "1", "--json").stdout)["jdl"]
    )


def test_a_missing_local_executable_is_refused(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    jdl = tmp_path / "job.jdl"
    jdl.write_text('Executable = "hello.sh";')
    result = cli("submit", jdl)
    assert result.returncode == 2
    assert result.stderr == (
        f"sandbox-agent: Executable hello.sh: no such file next to the JDL ({tmp_path}); give "
        "an absolute path for a program inside the sandbox, or an LF: name\n"
    )
    assert _queued(cli) == []


def test_a_job_no_slot_here_can_run_is_refused(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # 4096 is the most CPUCores a JDL may ask for (more is a JDL error); no test node has it
    jdl = tmp_path / "cores.jdl"
    jdl.write_text('Executable = "/bin/true"; CPUCores = 4096;')
    result = cli("submit", jdl)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "sandbox-agent: job refused: no slot here can run it: it asks for 4096 cores; "
        "the slot offers "
    )
    assert result.stderr.count("\n") == 1
    assert _queued(cli) == []


def test_requirements_no_slot_here_meets_are_refused_until_the_site_file_says_so(
    cli, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    jdl = tmp_path / "site.jdl"
    jdl.write_text('Executable = "/bin/true"; Requirements = other.Site == "nowhere";')
    result = cli("submit", jdl)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "sandbox-agent: job refused: no slot here can run it: its Requirements are FALSE: "
        'other.Site == "nowhere"'
    )
    assert _queued(cli) == []
    (tmp_path / "home" / "slot.toml").write_text('Site = "nowhere"\n')
    accepted = cli("submit", jdl)
    assert (accepted.returncode, accepted.stdout) == (0, "1\n")
    assert [j["state"] for j in _queued(cli)] == ["WAITING"]


def test_a_job_the_policy_rejects_is_refused(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    jdl = tmp_path / "long.jdl"
    jdl.write_text('Executable = "/bin/true"; TTL = 7200;')  # strict allows at most 3600 s
    result = cli("submit", jdl, "--policy", "strict")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "sandbox-agent: job refused: the policy strict rejects it: TTL 7200 s is above the "
        "site maximum 3600 s"
    )
    assert _queued(cli) == []
    assert cli("submit", jdl).stdout == "1\n"  # the default policy allows it
    unknown = cli("submit", jdl, "--policy", "no-such-policy")
    assert unknown.returncode == 2 and "no policy named 'no-such-policy'" in unknown.stderr
    assert len(_queued(cli)) == 1


def test_catalogue_add_and_ls(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.txt").write_bytes(b"alpha")
    (tmp_path / "b.txt").write_bytes(b"beta")
    digest = hashlib.sha256(b"alpha").hexdigest()
    added = cli("catalogue", "add", tmp_path / "a.txt", "/alice/a.txt")
    assert added.stdout == f"LF:/alice/a.txt  5 bytes  sha256 {digest}\n"
    assert cli("catalogue", "add", tmp_path / "a.txt", "LF:/alice/a.txt").returncode == 0
    assert cli("catalogue", "add", tmp_path / "b.txt", "/bob/b.txt").returncode == 0
    taken = cli("catalogue", "add", tmp_path / "b.txt", "/alice/a.txt")
    assert taken.returncode == 2
    assert taken.stderr.startswith(
        "sandbox-agent: LF:/alice/a.txt is already in the catalogue with other content"
    )
    bad = cli("catalogue", "add", tmp_path / "b.txt", "/alice/../b")
    assert bad.returncode == 2 and "contains '..'" in bad.stderr
    assert [e["lfn"] for e in json.loads(cli("catalogue", "ls", "--json").stdout)] == [
        "/alice/a.txt", "/bob/b.txt"]  # fmt: skip
    only = json.loads(cli("catalogue", "ls", "/alice/", "--json").stdout)
    assert [(e["lfn"], e["size"], e["sha256"], e["owner"]) for e in only] == [
        ("/alice/a.txt", 5, digest, getpass.getuser())]  # fmt: skip
    text = cli("catalogue", "ls", "/bob").stdout.splitlines()
    assert text[0].split() == ["SIZE", "OWNER", "ADDED", "SHA256", "LFN"]
    assert text[1].split()[0] == "4" and text[1].split()[-1] == "/bob/b.txt"
    assert len(text) == 2
