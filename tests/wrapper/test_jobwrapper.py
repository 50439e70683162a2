"""The JobWrapper run for real, as the agent will run it: its file and handoff.py copied
into a directory of their own, a handoff frame on stdin, status frames read back from
a pipe; once on the host and once inside the real sandbox."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_support import SCRIPT, cli_env, shared_workdir

from sandbox_agent import handoff
from sandbox_agent.wrapper import jobwrapper

PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def frame(**spec: Any) -> bytes:
    fields = {
        "job_id": 42, "resubmission": 1,
        "spec": {"executable": "/bin/sh", "arguments": ["-c", "echo hello"], "input_files": [],
                 "outputs": ["stdout"], "variables": {"Run": "544121"}, **spec},
        "token": {"certificate": "CERT\n", "key": "JOB-KEY\n", "chain": ["CA\n"]},
        "environment": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        "limits": {"wall_time": 60},
    }  # fmt: skip
    return handoff.encode("handoff", fields)


def install(directory: Path) -> Path:
    """What the agent does: the wrapper and the protocol, side by side."""
    directory.mkdir(exist_ok=True)
    shutil.copy(jobwrapper.__file__, directory / "jobwrapper.py")
    shutil.copy(handoff.__file__, directory / "handoff.py")
    return directory / "jobwrapper.py"


def run_wrapper(workdir: Path, data: bytes) -> tuple[int, list[dict[str, Any]], str]:
    script = install(workdir.parent / "wrapper")
    read_end, write_end = os.pipe()
    process = subprocess.Popen([PYTHON, "-I", "-S", str(script), "--status-fd", str(write_end)],
                               cwd=workdir, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                               pass_fds=(write_end,))  # fmt: skip
    os.close(write_end)
    _, stderr = process.communicate(data, timeout=60)
    with os.fdopen(read_end, "rb") as status:
        frames = statuses(status.read())
    return process.returncode, frames, stderr.decode()


def statuses(data: bytes) -> list[dict[str, Any]]:
    stream, out = io.BytesIO(data), []
    while stream.tell() < len(data):
        out.append(handoff.read_frame(stream, "status"))
    return out


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


def test_a_job_runs_to_done_with_its_environment_and_token_files(workdir: Path) -> None:
    script = ("echo hello; echo $ALIEN_PROC_ID $ALIEN_JDL_RUN $HOME; cat $JALIEN_TOKEN_KEY; "
              "ls /proc/self/fd")  # fmt: skip
    code, frames, stderr = run_wrapper(workdir, frame(arguments=["-c", script]))
    assert code == 0, stderr
    assert [f["state"] for f in frames] == ["STARTED", "RUNNING", "DONE"]
    assert frames[-1]["exit_code"] == 0
    out = (workdir / "stdout").read_text().split("\n")
    assert out[:3] == ["hello", f"42 544121 {workdir}", "JOB-KEY"]
    assert sorted(out[3:-1]) == ["0", "1", "2", "3"]  # 3: ls's own; no status descriptor
    token = workdir / jobwrapper.TOKEN_DIR
    assert token.stat().st_mode & 0o777 == 0o700
    assert (token / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (token / "cert.pem").read_text() == "CERT\nCA\n"


@pytest.mark.parametrize(
    ("spec", "states", "exit_code"),
    [
        ({"arguments": ["-c", "exit 3"]}, ["STARTED", "RUNNING", "ERROR_E"], 3),
        ({"validation": ["/bin/sh", "-c", "test -e nothing"]},
         ["STARTED", "RUNNING", "SAVING", "ERROR_V"], 0),
        ({"validation": ["/bin/sh", "-c", "grep -q hello stdout"]},
         ["STARTED", "RUNNING", "SAVING", "DONE"], 0),
        ({"input_files": ["data.root"]}, ["ERROR_IB"], None),
        ({"executable": "/no/such/program"}, ["STARTED", "ERROR_IB"], None),
    ],
)  # fmt: skip
def test_final_states(workdir: Path, spec: dict[str, Any], states: list[str],
                      exit_code: int | None) -> None:  # fmt: skip
    _code, frames, _stderr = run_wrapper(workdir, frame(**spec))
    assert [f["state"] for f in frames] == states
    assert frames[-1].get("exit_code") == exit_code


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00\x05{bad}", b"\xff\xff\xff\xff"])
def test_a_bad_handoff_runs_nothing(workdir: Path, data: bytes) -> None:
    code, frames, stderr = run_wrapper(workdir, data)
    assert code == jobwrapper.EXIT_BAD_HANDOFF
    assert frames == []
    assert stderr.startswith("sandbox-agent wrapper: handoff frame")
    assert stderr.count("\n") == 1
    assert not (workdir / "stdout").exists()


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")
def test_the_wrapper_runs_inside_the_real_sandbox(tmp_path: Path) -> None:
    workdir = shared_workdir()
    try:
        install(workdir / ".wrapper")
        env = cli_env(tmp_path / "home")
        result = subprocess.run(
            [str(SCRIPT), "sandbox", "exec", "--workdir", str(workdir), "--",
             "/usr/bin/python3", "-I", "-S", ".wrapper/jobwrapper.py", "--status-fd", "1"],
            input=frame(arguments=["-c", "echo inside; id -u"]), capture_output=True, env=env,
            timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert [f["state"] for f in statuses(result.stdout)] == ["STARTED", "RUNNING", "DONE"]
        assert (workdir / "stdout").read_text().split() == ["inside", "1000"]
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)
