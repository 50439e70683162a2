"""`sandbox exec` through the real console script and the real bwrap: what a payload
sees, as root and as an unprivileged agent."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from cli_support import cli_env, run_cli

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")


@pytest.fixture
def sandbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    (home / "certs").mkdir(parents=True)
    (home / "certs" / "jobagent.key").write_text("CANARY-AGENT-KEY\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = cli_env(home, SECRET_TOKEN="CANARY-ENV", LANG="C.UTF-8")

    def run(script: str, **kwargs: object):  # type: ignore[no-untyped-def]
        return run_cli(env, "sandbox", "exec", "--workdir", workdir, "--", "/bin/sh", "-c",
                       script, **kwargs)  # fmt: skip

    run.home = home  # type: ignore[attr-defined]
    run.workdir = workdir  # type: ignore[attr-defined]
    run.env = env  # type: ignore[attr-defined]
    return run


def test_exit_code_and_identity(sandbox) -> None:  # type: ignore[no-untyped-def]
    result = sandbox("id -u; id -g; pwd; exit 7")
    assert result.returncode == 7
    assert result.stdout.split() == ["1000", "1000", "/workdir"]


def test_work_directory_is_the_only_writable_place(sandbox) -> None:  # type: ignore[no-untyped-def]
    result = sandbox("echo data > out.txt; touch /usr/x 2>/dev/null && echo USR-WRITABLE; "
                     "touch /etc/x 2>/dev/null && echo ETC-WRITABLE; echo done")  # fmt: skip
    assert result.stdout.split() == ["done"]
    assert (sandbox.workdir / "out.txt").read_text() == "data\n"


def test_agent_secrets_are_not_visible(sandbox) -> None:  # type: ignore[no-untyped-def]
    certs = sandbox.home / "certs"
    result = sandbox(f"env; ls {certs} 2>&1; cat {certs}/jobagent.key 2>&1; ls /root 2>&1; "
                     "cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n'")  # fmt: skip
    assert "CANARY" not in result.stdout
    assert "LANG=C.UTF-8" in result.stdout  # an allowed variable does pass
    assert "SECRET_TOKEN" not in result.stdout


def test_process_hardening(sandbox) -> None:  # type: ignore[no-untyped-def]
    result = sandbox("grep -E '^(Seccomp|NoNewPrivs|CapEff|CapPrm|CapBnd):' /proc/self/status; "
                     "ulimit -c; ulimit -n")  # fmt: skip
    fields = dict(line.split(":\t") for line in result.stdout.splitlines() if ":\t" in line)
    assert fields["Seccomp"] == "2"  # a filter is loaded
    assert fields["NoNewPrivs"] == "1"
    assert fields["CapEff"] == fields["CapPrm"] == "0000000000000000"
    assert result.stdout.splitlines()[-2:] == ["0", "4096"]  # core 0, nofile from default


def test_descriptors_of_the_agent_are_not_inherited(tmp_path: Path, sandbox) -> None:  # type: ignore[no-untyped-def]
    canary = os.open(tmp_path / "canary", os.O_CREAT | os.O_RDWR, 0o600)
    os.set_inheritable(canary, True)
    try:
        result = sandbox(f"ls /proc/self/fd; test -e /proc/self/fd/{canary} && echo LEAKED",
                         program=None)  # fmt: skip
    finally:
        os.close(canary)
    assert "LEAKED" not in result.stdout
    assert set(result.stdout.split()) <= {"0", "1", "2", "3"}  # 3: ls's own directory


def test_missing_runtime_is_one_line_and_exit_3(sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = dict(sandbox.env, PATH=str(tmp_path))
    result = run_cli(env, "sandbox", "exec", "--", "/bin/true",
                     program=[sys.executable, "-m", "sandbox_agent"])  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.strip().startswith("sandbox-agent: cannot enforce: bwrap is not installed")
