"""One job end to end from the agent's side, with the real bwrap, seccomp, landlock and
cgroup: the JobWrapper started in the sandbox from the agent's private copies, the
handoff written, the states read back, one final state decided."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, shared_workdir, shell_script

from sandbox_agent.jdl import load_job
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime.jobrun import handoff_fields, run_job

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
    fields = handoff_fields(spec, 7, 0, TOKEN, {"PATH": "/usr/bin:/bin"}, effective,
                            user="alice", site="ALICE::Test")  # fmt: skip
    return run_job(effective, fields, workdir, interval=0.2, **kwargs)  # type: ignore[arg-type]  # fmt: skip


def script_job(
    workdir: Path, script: str, interpreter: str = "/bin/sh", name: str = "job.sh"
) -> str:
    """A JDL whose payload is ``script``, run by ``interpreter`` from a file in the work
    directory (its current directory): run_job stages nothing, and a bare Executable
    name would be looked up in PATH."""
    shell_script(workdir, name, script, interpreter)
    return f'Executable = "{interpreter}"; Arguments = "{name}";'


def test_a_job_runs_to_done_inside_the_sandbox(workdir: Path) -> None:
    script = "echo $ALIEN_PROC_ID; id -u; cat $JALIEN_TOKEN_KEY"
    result = run(workdir, script_job(workdir, script))
    assert (result.state, result.exit_code) == ("DONE", 0), (result.detail, result.wrapper_log)
    assert result.states == ["STARTED", "RUNNING", "SAVING", "DONE"]
    assert (workdir / "stdout").read_text().split() == ["7", "1000", "JOB-KEY"]
    assert result.session is not None and result.session.landlock  # confined, and said so


def test_a_failing_payload_ends_in_error_e(workdir: Path) -> None:
    result = run(workdir, script_job(workdir, "exit 4"))
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
    hog = script_job(workdir, "x = bytearray(512 << 20)", "/usr/bin/python3", "hog.py")
    result = run(workdir, hog, policy)
    assert result.state == "ERROR_E"
    assert "used more memory than its limit" in result.detail, result.detail  # not a bad hog.py


# -- a wrapper the payload subverted: the real sandbox, the wrapper's source replaced ------

HOSTILE_WRAPPERS = {
    # bytes on the status pipe that are not a frame
    "garbage": "import os; os.write(1, b'\\x00\\x00\\x00\\x05hello'); import sys; sys.exit(0)",
    # a length past the status frame's 64 KiB cap
    "oversized": "import os, struct; os.write(1, struct.pack('>I', 1 << 24) + b'{' * 4096)",
    # nothing at all: the wrapper exits at once
    "silent": "import sys; sys.exit(0)",
    # a well-formed frame claiming a state only the agent may decide
    "forged": (
        "import sys; sys.path.insert(0, '/.sandbox-agent/lib'); import handoff; "
        "handoff.write_frame(sys.stdout.buffer, 'status', {'state': 'EXPIRED'})"
    ),
    # progress, then silence: no final word
    "unfinished": (
        "import sys; sys.path.insert(0, '/.sandbox-agent/lib'); import handoff; "
        "handoff.write_frame(sys.stdout.buffer, 'status', {'state': 'STARTED'})"
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_WRAPPERS))
def test_a_wrapper_that_breaks_the_protocol_ends_the_job_failed(
    workdir: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox_agent.runtime import launch

    real = launch._source
    monkeypatch.setattr(launch, "_source", lambda name: HOSTILE_WRAPPERS[kind].encode()
                        if name == "wrapper" else real(name))  # fmt: skip
    result = run(workdir, 'Executable = "/bin/true";')
    assert result.state == "FAILED", (result.detail, result.wrapper_log)
    expected = {
        "garbage": "the wrapper sent a bad frame",
        "oversized": "the wrapper sent a bad frame: status frame announces 16777216 bytes, "
        "over its cap of 65536",
        "silent": "the wrapper ended without a final state (exit 0)",
        "forged": "the wrapper sent a bad frame: state 'EXPIRED' is not the wrapper's to report",
        "unfinished": "the wrapper ended without a final state (exit 0); its last state was "
        "STARTED",
    }[kind]
    assert result.detail.startswith(expected), result.detail


def test_a_stop_request_gives_the_job_sigterm_then_its_grace(workdir: Path) -> None:
    """The agent's SIGTERM path: every job process but the runtime's gets SIGTERM, has
    the grace to act on it, and is killed once the grace is over."""
    import threading
    import time

    from sandbox_agent.limits.monitor import StopRequest

    stop = StopRequest()

    def stop_once_running() -> None:
        deadline = time.monotonic() + 60
        while not (workdir / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.request("stopped", 5.0)

    script = ("trap 'echo term >> got; sleep 0.3; echo graced >> got' TERM; echo ready > ready; "
              "sleep 30 & wait; sleep 30 & wait")  # fmt: skip
    watcher = threading.Thread(target=stop_once_running)
    watcher.start()
    try:
        result = run(workdir, script_job(workdir, script), stop=stop)
    finally:
        watcher.join()
        stop.close()
    assert result.session is not None
    assert result.session.outcome.reason == "stopped"
    assert result.state == "KILLED"
    # it got SIGTERM (from the agent, and again passed on by the wrapper: the trap may run
    # twice), had the time to act on it, and was then killed: not by its own end
    got = (workdir / "got").read_text().split()
    assert got[0] == "term" and set(got) == {"term", "graced"}, got
    assert result.session.teardown is not None and result.session.teardown.emptied


def test_the_wrapper_files_reach_the_sandbox_ready_compiled(workdir: Path) -> None:
    """The agent ships a .pyc beside each file the sandbox imports: its Python must not
    compile them at every job's start."""
    import sys

    result = run(workdir, 'Executable = "/bin/ls"; Arguments = "/.sandbox-agent/lib/__pycache__";')
    assert result.state == "DONE", (result.detail, result.wrapper_log)
    tag = sys.implementation.cache_tag
    assert (workdir / "stdout").read_text().split() == [
        f"handoff.{tag}.pyc", f"jobwrapper.{tag}.pyc", f"packaging.{tag}.pyc"]  # fmt: skip


def test_the_payload_gets_the_default_signal_actions_back(workdir: Path) -> None:
    """Python ignores SIGPIPE and SIGXFSZ for itself; the wrapper's payload must not
    inherit that (a write past RLIMIT_FSIZE must kill, a closed pipe must end a writer)."""
    result = run(workdir, 'Executable = "/bin/grep"; Arguments = "SigIgn /proc/self/status";')
    assert result.state == "DONE", (result.detail, result.wrapper_log)
    ignored = int((workdir / "stdout").read_text().split()[1], 16)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (signum - 1)), f"{signal.Signals(signum).name} is ignored"
