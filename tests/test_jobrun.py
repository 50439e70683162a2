"""One job end to end from the agent's side, with the real bwrap, seccomp, landlock and
cgroup: the JobWrapper started in the sandbox from the agent's private copies, the
handoff written, the states read back, one final state decided."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, shared_workdir

from sandbox_agent.agent.jobrun import handoff_fields, run_job
from sandbox_agent.jdl import load_job
from sandbox_agent.policy import compose, load_policy

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

TOKEN = {"certificate": "CERT\n", "key": "JOB-KEY\n", "chain": []}


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = shared_workdir()
    if os.geteuid() == 0:
        os.chown(directory, 65534, 65534)
    yield directory
    shutil.rmtree(directory.parent, ignore_errors=True)


def run(workdir: Path, jdl: str, policy_text: str = 'extends = "default"\n', **kwargs: object):  # type: ignore[no-untyped-def]
    policies = workdir.parent / "policies"
    shutil.copytree(ROOT / "policies", policies, dirs_exist_ok=True)
    (policies / "site.toml").write_text(policy_text)
    spec = load_job(jdl)
    effective = compose(load_policy("site", [policies]), spec)
    fields = handoff_fields(spec, 7, 0, TOKEN, {"PATH": "/usr/bin:/bin"}, effective)
    return run_job(effective, fields, workdir, log=workdir.parent / "wrapper.log",
                   interval=0.2, **kwargs)  # type: ignore[arg-type]  # fmt: skip


def test_a_job_runs_to_done_inside_the_sandbox(workdir: Path) -> None:
    script = "echo $ALIEN_PROC_ID; id -u; cat $JALIEN_TOKEN_KEY"
    result = run(workdir, f'Executable = "/bin/sh"; Arguments = "-c \'{script}\'";')
    log = (workdir.parent / "wrapper.log").read_text()
    assert (result.state, result.exit_code) == ("DONE", 0), (result.detail, log)
    assert result.states == ["STARTED", "RUNNING", "DONE"]
    assert (workdir / "stdout").read_text().split() == ["7", "1000", "JOB-KEY"]
    assert result.session is not None and result.session.landlock  # confined, and said so


def test_a_failing_payload_ends_in_error_e(workdir: Path) -> None:
    result = run(workdir, 'Executable = "/bin/sh"; Arguments = "-c \'exit 4\'";')
    assert (result.state, result.exit_code) == ("ERROR_E", 4)


def test_a_missing_executable_ends_in_error_ib(workdir: Path) -> None:
    result = run(workdir, 'Executable = "/no/such/program";')
    assert result.state == "ERROR_IB"


def test_a_job_past_its_wall_time_is_expired(workdir: Path) -> None:
    policy = 'extends = "default"\n[limits]\nwall_time = { default = 2 }\n'
    result = run(workdir, 'Executable = "/bin/sleep"; Arguments = "60";', policy)
    assert result.state == "EXPIRED"
    assert result.detail == "killed: ran past its wall time (2)"
    assert result.states == ["STARTED", "RUNNING"]  # the wrapper had no say in it


def test_a_job_past_its_memory_is_in_error(workdir: Path) -> None:
    policy = 'extends = "default"\n[limits]\nmemory = { default = "128MB" }\n'
    result = run(workdir, 'Executable = "/usr/bin/python3"; '
                          'Arguments = "-c \'x = bytearray(512 << 20)\'";', policy)  # fmt: skip
    assert result.state == "ERROR_E"
