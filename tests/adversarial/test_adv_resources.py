"""Payloads that try to exhaust the node through `sandbox exec`: a fork bomb, memory past
the cap, a disk filled past the work directory's cap, a run past the wall time, and a
daemon left behind. Each runs with the agent as root and as an unprivileged agent in
the cgroup its site delegated; each checks that the job, not the agent, pays."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import (
    ROOT,
    cli_env,
    close_scopes,
    delegated_cgroup,
    nobody_program,
    run_cli,
    running,
    shared_workdir,
)

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")
# A pure cgroup v2 host (the machines of tests/vm); this one is v1
PURE_V2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()

# Small caps so the attacks are quick; the limits are the shipped default's mechanisms.
SMALL = """extends = "default"
[limits]
memory = { default = "128MB" }
pids = { default = 64 }
wall_time = { default = 3 }
workdir_size = { default = "16MB" }
"""
NO_PID_NS = """extends = "small"
[namespaces]
pid = "off"
[filesystem]
proc = "off"
"""


class Sandbox:
    def __init__(self, workdir: Path, as_nobody: bool, name: str) -> None:
        self.workdir = workdir
        policies = workdir.parent / "policies"  # readable by an unprivileged agent
        shutil.copytree(ROOT / "policies", policies)
        (policies / "small.toml").write_text(SMALL)
        (policies / "nopidns.toml").write_text(NO_PID_NS)
        self.env = cli_env(workdir.parent / "home", SANDBOX_AGENT_POLICIES=str(policies))
        self.program: list[str] | None = None
        self.cgroups: list[Path] = []
        if as_nobody:
            how = nobody_program()
            if isinstance(how, str):
                pytest.skip(how)
            delegated = delegated_cgroup(name)
            if isinstance(delegated, str):
                pytest.skip(delegated)
            prefix, self.cgroups = delegated
            self.program = prefix + how[0]
            self.env.update(how[1])

    def run(self, script: str, policy: str = "small") -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, "sandbox", "exec", "--policy", policy, "--workdir",
                       self.workdir, "--", "/bin/sh", "-c", script,
                       program=self.program)  # fmt: skip


@pytest.fixture(params=["agent-as-root", "agent-as-nobody"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    workdir = shared_workdir()
    box = None
    try:
        box = Sandbox(workdir, request.param == "agent-as-nobody", f"res-{os.getpid()}")
        yield box
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)
        close_scopes(box.cgroups if box else [])


def test_fork_bomb_hits_the_pids_cap_and_the_agent_still_forks(sandbox: Sandbox) -> None:
    bomb = ("import os, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n"
            "    except OSError as e:\n        print('refused', n, e.errno); break\n"
            "    if pid == 0:\n        time.sleep(30); os._exit(0)\n    n += 1\n")  # fmt: skip
    (sandbox.workdir / "bomb.py").write_text(bomb)
    result = sandbox.run("/usr/bin/python3 bomb.py")
    words = result.stdout.split()
    assert words[0] == "refused", result.stderr
    assert int(words[1]) < 64 and words[2] == "11"  # EAGAIN: the cgroup's pids.max
    # the agent, outside the job's cgroup, still forks
    assert subprocess.run(["/bin/true"], check=False).returncode == 0


def test_memory_past_the_cap_kills_the_job_not_the_agent(sandbox: Sandbox) -> None:
    result = sandbox.run("/usr/bin/python3 -c 'x = bytearray(512 << 20)'; echo status=$?")
    if PURE_V2:  # memory.oom.group: the kernel ends the whole job, the shell too
        assert "status=" not in result.stdout and result.returncode == 137, result
        assert "the kernel ended the whole job (cgroup v2 memory.oom.group)" in result.stderr
    else:  # v1 kills the allocating process only
        assert "status=137" in result.stdout  # the payload's allocation was killed
        assert result.returncode == 0  # the shell carried on
        assert "the kernel killed the process that allocated" in result.stderr
    assert "Traceback" not in result.stderr  # the agent reported it, it was not killed


def test_memory_kill_of_the_whole_job_is_reported(sandbox: Sandbox) -> None:
    result = sandbox.run("exec /usr/bin/python3 -c 'x = bytearray(512 << 20)'")
    assert result.returncode == 137
    assert "sandbox-agent: killed: used more memory than its limit" in result.stderr


def test_filling_the_disk_past_the_work_directory_cap_is_killed(sandbox: Sandbox) -> None:
    result = sandbox.run("while true; do head -c 1048576 /dev/zero >> fill; done")
    assert result.returncode == 137
    assert "killed: its work directory grew past its size limit" in result.stderr
    # the monitor looks every second: the overshoot is bounded by what a second writes
    assert (sandbox.workdir / "fill").stat().st_size < 4 << 30


def test_running_past_the_wall_time_is_killed(sandbox: Sandbox) -> None:
    result = sandbox.run("sleep 60")
    assert result.returncode == 137
    assert "killed: ran past its wall time (3)" in result.stderr


def test_a_daemon_dies_with_the_pid_namespace(sandbox: Sandbox) -> None:
    marker = f"daemon-{os.getpid()}-{time.monotonic_ns()}"
    result = sandbox.run(daemon(marker))
    assert result.returncode == 0
    assert (sandbox.workdir / "started").read_text() == "yes\n"  # it did start
    assert running(marker) == []


def test_a_daemon_without_a_pid_namespace_is_killed_at_teardown_and_reported(
    sandbox: Sandbox,
) -> None:
    marker = f"daemon-{os.getpid()}-{time.monotonic_ns()}"
    result = sandbox.run(daemon(marker), policy="nopidns")
    assert result.returncode == 0, result.stderr
    assert (sandbox.workdir / "started").read_text() == "yes\n"
    # the daemon, as its sleep or, on a slow emulated kernel, still the bash about to exec
    # it (this policy has no /proc to wait on); either way its command line holds the marker
    assert re.search(r"teardown: killed 1 leftover process\(es\): (sleep|bash)\[", result.stderr)
    assert running(marker) == []


def daemon(marker: str) -> str:
    """A detached process in its own session that outlives the job's main process, which
    ends once the daemon has said it started (up to 30 s: an emulated kernel is slow)."""
    inner = f"echo yes > started; exec -a {marker} sleep 300"
    wait = "i=0; while [ ! -s started ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"
    return f"setsid /bin/bash -c '{inner}' </dev/null >/dev/null 2>&1 & {wait}; exit 0"
