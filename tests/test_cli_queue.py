"""`submit`, `jobs` and `status` through the real console script, on a queue under a
private --home."""

from __future__ import annotations

import json
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
    assert 'Executable = "hello.sh";' in status["jdl"]  # stored in its normalized form
    assert cli("status", "1").stdout.startswith("job 1: WAITING (resubmission 0, owner ")
    assert cli("jobs", "--state", "done", "--json").stdout.strip() == "[]"


def test_submit_arguments_are_substituted_before_the_job_is_stored(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    jdl = tmp_path / "args.jdl"
    jdl.write_text('Executable = "/bin/echo"; Arguments = "run $1";\n')
    assert cli("submit", jdl, "544121").returncode == 0
    stored = json.loads(cli("status", "1", "--json").stdout)["jdl"]
    assert '"run 544121"' in stored and "$1" not in stored


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
