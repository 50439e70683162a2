"""Binds whose host source this node lacks, through the real pilot.

A path the policy requires (filesystem.required, as a site requires its CVMFS
repositories) that is missing makes the node unhealthy: the job goes back to the queue
untouched, no node fault counted against it, and the pilot says why. A bind that is
missing and not required is left out, and named: in the run's output and in the
signed audit record. This machine has no /cvmfs; the paths are made to be absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import SCRIPT, cli_env, run_cli
from pilot_support import record

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

ABSENT = "/cvmfs-sandbox-agent-test/alice.cern.ch"  # never made: this node lacks it


@pytest.fixture
def home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-binds-"))
    base.chmod(0o711)
    (base / "home" / "policies").mkdir(parents=True)
    yield base / "home"
    shutil.rmtree(base, ignore_errors=True)


def site(home: Path, text: str) -> dict[str, str]:
    (home / "policies" / "site.toml").write_text('extends = "default"\n' + text)
    return cli_env(home)


def job(env: dict[str, str], home: Path, script: str) -> int:
    directory = home.parent / "jdl"
    directory.mkdir(exist_ok=True)
    (directory / "job.sh").write_text(f"#!/bin/sh\n{script}\n")
    (directory / "job.sh").chmod(0o755)
    (directory / "job.jdl").write_text('Executable = "job.sh";\n')
    done = run_cli(env, "submit", directory / "job.jdl")
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def program() -> list[str]:
    return [str(SCRIPT)]


def events(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_a_missing_required_path_stops_the_pilot_before_it_takes_the_job(home: Path) -> None:
    """--when-unhealthy stop (the default): no job is matched, the pilot exits 3 with
    one line naming the path, where the policy requires it and the fix."""
    env = site(home, f'[filesystem]\nread_only = ["{ABSENT}"]\nrequired = ["{ABSENT}"]\n')
    number = job(env, home, "echo ran > ran.txt")
    ran = run_cli(env, "run", "--json", "--policy", "site", "--lease", "30")
    assert ran.returncode == 3, ran.stdout + ran.stderr
    said = events(ran)
    assert not [e for e in said if e["event"] in ("matched", "started", "finished")]
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith(
        f"sandbox-agent: this node is unhealthy: filesystem.required {ABSENT} (missing; "
        "policies/site.toml:4); mount it (for CVMFS: cvmfs_config probe)"
    ), line
    assert line.endswith("the pilot stops (--when-unhealthy stop)")
    now = json.loads(run_cli(env, "status", number, "--json").stdout)
    assert (now["state"], now["resubmission"]) == ("WAITING", 0)  # untouched


def test_a_waiting_pilot_takes_the_job_once_the_path_is_back(home: Path) -> None:
    """--when-unhealthy wait: one event saying why, nothing taken meanwhile; once the
    repository is mounted again (here: made) the job runs and sees it."""
    repository = home.parent / "cvmfs" / "alice.cern.ch"
    env = site(home, f'[filesystem]\nread_only = ["{repository}"]\nrequired = ["{repository}"]\n')
    number = job(env, home, f"ls {repository}")
    pilot = subprocess.Popen(
        [*program(), "run", "--json", "--policy", "site", "--lease", "30",
         "--when-unhealthy", "wait"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert pilot.stdout is not None
        seen = []
        for text in pilot.stdout:
            seen.append(json.loads(text))
            if seen[-1]["event"] == "unhealthy":
                break
        assert seen[-1]["event"] == "unhealthy", seen
        assert seen[-1]["absent"] == [
            {
                "path": str(repository),
                "origin": seen[-1]["absent"][0]["origin"],
                "answer": "missing",
            }
        ]
        assert json.loads(run_cli(env, "status", number, "--json").stdout)["state"] == "WAITING"
        repository.mkdir(parents=True)
        (repository / "bin").mkdir()
        repository.parent.chmod(0o755)
        out, err = pilot.communicate(timeout=120)
    finally:
        if pilot.poll() is None:
            pilot.kill()
            pilot.communicate()
    rest = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in rest]
    assert kinds[0] == "healthy", kinds
    (finished,) = [e for e in rest if e["event"] == "finished"]
    assert (finished["job"], finished["state"]) == (number, "DONE"), err


def test_a_missing_optional_bind_is_named_in_the_output_and_the_record(home: Path) -> None:
    env = site(home, f'[filesystem]\nread_only = ["{ABSENT}"]\n')
    number = job(env, home, f"test -e {ABSENT} && echo there || echo absent")
    ran = run_cli(env, "run", "--json", "--policy", "site", "--lease", "30")
    assert ran.returncode == 0, ran.stderr
    said = events(ran)
    (started,) = [e for e in said if e["event"] == "started"]
    (dropped,) = started["dropped_binds"]
    assert dropped["path"] == ABSENT and dropped["answer"] == "missing"
    assert dropped["origin"].startswith("policies/site.toml:")
    (finished,) = [e for e in said if e["event"] == "finished"]
    assert finished["state"] == "DONE"
    assert record(env, number)["dropped_binds"] == [dropped]
    text = run_cli(env, "run", "--policy", "site", "--lease", "30")  # nothing left: no line
    assert "left out" not in text.stdout
    again = job(env, home, "true")
    shown = run_cli(env, "run", "--policy", "site", "--lease", "30")
    assert (
        f"job {again}: left out, this node lacks them: {ABSENT} (missing; policies/site.toml:"
        in (shown.stdout)
    )


def test_doctor_checks_the_required_paths(home: Path) -> None:
    env = site(
        home, f'[filesystem]\nread_only = ["{ABSENT}", "/usr"]\nrequired = ["{ABSENT}", "/usr"]\n'
    )
    done = run_cli(env, "doctor", "--policy", "site")
    assert done.returncode == 3, done.stdout
    lines = done.stdout.splitlines()
    assert any(x.startswith(f"MISSING  policy site: required {ABSENT}") for x in lines), done.stdout
    assert any(x.startswith("OK       policy site: required /usr") for x in lines), done.stdout
