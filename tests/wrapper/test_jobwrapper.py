"""The JobWrapper run for real, as the agent will run it: its file and its siblings
copied into a directory of their own, a handoff frame on stdin, status frames read back
from a pipe; on the host, and once inside the real sandbox."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cli_support import SCRIPT, cli_env, shared_workdir

from sandbox_agent.wrapper import handoff, jobwrapper, packaging

PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
SAVED = ["STARTED", "RUNNING", "SAVING"]  # every job whose payload ran, before its end


def frame(limits: dict[str, int] | None = None, environment: dict[str, str] | None = None,
          **spec: Any) -> bytes:  # fmt: skip
    fields = {
        "job_id": 42, "resubmission": 1, "user": "alice", "site": "ALICE::Demo",
        "spec": {"executable": "/bin/sh", "arguments": ["-c", "echo hello"], "input_files": [],
                 "outputs": ["stdout"], "output_errors": [], "variables": {"Run": "544121"},
                 **spec},
        "token": {"certificate": "CERT\n", "key": "JOB-KEY\n", "chain": ["CA\n"]},
        "environment": environment or {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        "limits": {"wall_time": 60} if limits is None else limits,
    }  # fmt: skip
    return handoff.encode("handoff", fields)


def install(directory: Path) -> Path:
    """What the agent does: the wrapper and its siblings, side by side."""
    directory.mkdir(exist_ok=True)
    for module in (jobwrapper, handoff, packaging):
        shutil.copy(str(module.__file__), directory / Path(str(module.__file__)).name)
    return directory / "jobwrapper.py"


# The wrapper as the agent's sandbox runs it: pid 2 of a PID namespace of its own, under
# bwrap's init, with that namespace's /proc; the host's file system otherwise. Only
# there may it kill the job's other processes, and so make archives.
OWN_PID_NAMESPACE = ["bwrap", "--dev-bind", "/", "/", "--unshare-pid", "--proc", "/proc",
                     "--die-with-parent", "--"]  # fmt: skip
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")


def start_wrapper(workdir: Path, write_end: int, *,
                  own_pids: bool = False) -> subprocess.Popen[bytes]:  # fmt: skip
    script = install(workdir.parent / "wrapper")
    prefix = OWN_PID_NAMESPACE if own_pids else []
    return subprocess.Popen([*prefix, PYTHON, "-I", "-S", str(script), "--status-fd",
                             str(write_end)], cwd=workdir, stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=(write_end,))  # fmt: skip


def run_wrapper(workdir: Path, data: bytes, *,
                own_pids: bool = False) -> tuple[int, list[dict[str, Any]], str]:  # fmt: skip
    read_end, write_end = os.pipe()
    process = start_wrapper(workdir, write_end, own_pids=own_pids)
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


def written(path: Path) -> None:
    """Wait until the payload has written a whole line to ``path`` (no time asserted)."""
    deadline = time.monotonic() + 20
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path.name} never got its line"
        time.sleep(0.02)


def ended(pidfile: Path, wait: float = 20) -> bool:
    """Whether the process ``pidfile`` names has ended (gone, or a zombie nobody reaped
    yet), waiting for it a while: a signal takes effect when the process next runs."""
    stat = Path(f"/proc/{int(pidfile.read_text())}/stat")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if stat.read_text().rpartition(")")[2].split()[0] in ("Z", "X"):
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def members(archive: Path) -> dict[str, bytes]:
    """The archive's members in their stored order, with their contents."""
    with zipfile.ZipFile(archive) as zipped:
        return {name: zipped.read(name) for name in zipped.namelist()}


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
    assert [f["state"] for f in frames] == [*SAVED, "DONE"]
    assert frames[-1]["exit_code"] == 0
    assert "detail" not in frames[-1]
    out = (workdir / "stdout").read_text().split("\n")
    assert out[:3] == ["hello", f"42 544121 {workdir}", "JOB-KEY"]
    assert sorted(out[3:-1]) == ["0", "1", "2", "3"]  # 3: ls's own; no status descriptor
    token = workdir / jobwrapper.TOKEN_DIR
    assert token.stat().st_mode & 0o777 == 0o700
    assert (token / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (token / "cert.pem").read_text() == "CERT\nCA\n"


def test_the_payload_gets_the_variables_jaliens_jobwrapper_sets(workdir: Path) -> None:
    # the policy's environment may not replace them: it comes first
    policy = {"PATH": "/usr/bin:/bin", "HOME": "/root", "ALIEN_USER": "root", "TMP": "/tmp"}
    code, _, stderr = run_wrapper(workdir, frame(environment=policy, arguments=["-c", "env"]))
    assert code == 0, stderr
    env = dict(line.split("=", 1) for line in (workdir / "stdout").read_text().splitlines())
    tmp = str(workdir / "tmp")
    assert {name: env.get(name) for name in ("HOME", "TMP", "TMPDIR", "ALIEN_PROC_ID",
            "ALIEN_MASTERJOB_ID", "ALIEN_USER", "ALIEN_SITE", "ALIEN_JDL_RUN")} == {
        "HOME": str(workdir), "TMP": tmp, "TMPDIR": tmp, "ALIEN_PROC_ID": "42",
        "ALIEN_MASTERJOB_ID": "42", "ALIEN_USER": "alice", "ALIEN_SITE": "ALICE::Demo",
        "ALIEN_JDL_RUN": "544121"}  # fmt: skip
    assert (workdir / "tmp").stat().st_mode & 0o777 == 0o700
    assert env["JALIEN_TOKEN_KEY"] == str(workdir / jobwrapper.TOKEN_DIR / "key.pem")


def test_a_staged_file_named_tmp_leaves_tmpdir_in_the_work_directory(workdir: Path) -> None:
    (workdir / "tmp").write_text("an input of that name")
    code, _, stderr = run_wrapper(workdir, frame(arguments=["-c", "echo $TMPDIR"]))
    assert code == 0, stderr
    assert (workdir / "stdout").read_text() == f"{workdir}\n"
    assert (workdir / "tmp").read_text() == "an input of that name"


NOT_EXECUTABLE = ["-c", "echo exit 0 > check.sh"]  # a validation script without its x bit


@pytest.mark.parametrize(
    ("spec", "states", "exit_code", "detail"),
    [
        ({"arguments": ["-c", "exit 3"]}, [*SAVED, "ERROR_E"], 3, "the executable exited with 3"),
        ({"arguments": ["-c", "kill -9 $$"]}, [*SAVED, "ERROR_E"], -9, "killed by signal 9"),
        ({"validation": ["/bin/sh", "-c", "test -e nothing"]}, [*SAVED, "ERROR_V"], 0,
         "the validation exited with 1"),
        ({"validation": ["/bin/sh", "-c", "grep -q hello stdout"]}, [*SAVED, "DONE"], 0, None),
        ({"validation": ["/no/such/validator"]}, [*SAVED, "ERROR_VN"], 0,
         "cannot run the validation /no/such/validator"),
        ({"arguments": NOT_EXECUTABLE, "validation": ["./check.sh"]}, [*SAVED, "ERROR_VN"], 0,
         "cannot run the validation ./check.sh: Permission denied"),
        ({"validation": ["/bin/sh", "-c", "kill -9 $$"]}, [*SAVED, "ERROR_VT"], 0,
         "the validation was killed by signal 9"),
        ({"outputs": ["*.root@disk=1"]}, [*SAVED, "DONE_WARN"], 0, "no file matches *.root"),
        ({"outputs": ["logs.zip:*.log"]}, [*SAVED, "DONE_WARN"], 0,
         "archive logs.zip: no file matches *.log"),
        ({"outputs": ["stdout", "hello.txt@disk=1", "*.root"]}, [*SAVED, "ERROR_S"], 0,
         "output hello.txt is missing or not a regular file; no file matches *.root"),
        ({"arguments": ["-c", "ln -s stdout hello.txt"], "outputs": ["hello.txt"]},
         [*SAVED, "ERROR_S"], 0, "output hello.txt is missing or not a regular file"),
        ({"arguments": ["-c", "echo hi > hello.txt; echo r > a.root"],
          "outputs": ["hello.txt@disk=1", "*.root"]}, [*SAVED, "DONE"], 0, None),
        ({"input_files": ["data.root"]}, ["STARTED", "ERROR_IB"], None,
         "input files missing or not regular files: data.root"),
        ({"executable": "/no/such/program"}, ["STARTED", "ERROR_IB"], None,
         "cannot run /no/such/program: No such file or directory"),
        ({"executable": "./run.sh"}, ["STARTED", "ERROR_IB"], None,
         "cannot run ./run.sh: No such file or directory"),
    ],
)  # fmt: skip
def test_final_states(workdir: Path, spec: dict[str, Any], states: list[str],
                      exit_code: int | None, detail: str | None) -> None:  # fmt: skip
    _code, frames, _stderr = run_wrapper(workdir, frame(**spec))
    assert [f["state"] for f in frames] == states
    assert frames[-1].get("exit_code") == exit_code
    if detail is None:
        assert "detail" not in frames[-1]
    else:
        assert detail in frames[-1]["detail"]


def test_a_staged_executable_runs_from_the_work_directory(workdir: Path) -> None:
    (workdir / "run.sh").write_text('#!/bin/sh\necho "ran $1"\n')
    (workdir / "run.sh").chmod(0o755)
    (workdir / "data.root").write_text("input")
    spec = {"executable": "./run.sh", "arguments": ["x y"], "input_files": ["data.root"]}
    _code, frames, stderr = run_wrapper(workdir, frame(**spec))
    assert [f["state"] for f in frames] == [*SAVED, "DONE"], stderr
    assert (workdir / "stdout").read_text() == "ran x y\n"  # one argument, no shell


def test_an_input_that_is_a_symlink_is_not_an_input(workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.root").write_text("not staged by the agent")
    (workdir / "data.root").symlink_to(tmp_path / "elsewhere.root")
    (workdir / "sub").mkdir()
    _code, frames, _stderr = run_wrapper(workdir, frame(input_files=["data.root", "sub"]))
    assert [f["state"] for f in frames] == ["STARTED", "ERROR_IB"]
    assert frames[-1]["detail"].endswith("not regular files: data.root, sub")
    assert not (workdir / "stdout").exists()  # nothing ran


def test_the_validation_writes_to_files_and_times_out(workdir: Path) -> None:
    script = "echo checked; echo complaint >&2; sleep 30 & echo $! > sleeper; wait"
    data = frame(limits={"wall_time": 3}, validation=["/bin/sh", "-c", script])
    _code, frames, _stderr = run_wrapper(workdir, data)
    assert [f["state"] for f in frames] == [*SAVED, "ERROR_VT"]
    assert frames[-1]["detail"] == "the validation ran past 3 s and was killed"
    assert ended(workdir / "sleeper")  # its whole process group was killed, not the shell
    assert (workdir / "validation.out").read_text() == "checked\n"
    assert (workdir / "validation.err").read_text() == "complaint\n"


@needs_bwrap
def test_a_successful_job_archives_its_outputs_in_sorted_order(workdir: Path) -> None:
    script = ("echo a > b.log; mkdir QC; echo c > QC/a.log; echo q > QC/q.root; "
              "echo d > data.root; echo out")  # fmt: skip
    outputs = ["log_archive.zip:stdout,*.log,QC/*.log@disk=1", "root.zip:*.root",
               "data.root@disk=1"]  # fmt: skip
    _code, frames, _stderr = run_wrapper(
        workdir, frame(arguments=["-c", script], outputs=outputs,
                       output_errors=["error.zip:stderr"]), own_pids=True)  # fmt: skip
    assert [f["state"] for f in frames] == [*SAVED, "DONE"]
    assert members(workdir / "log_archive.zip") == {"QC/a.log": b"c\n", "b.log": b"a\n",
                                                    "stdout": b"out\n"}  # fmt: skip
    assert list(members(workdir / "log_archive.zip")) == ["QC/a.log", "b.log", "stdout"]
    assert list(members(workdir / "root.zip")) == ["data.root"]  # a wildcard stops at "/"
    assert not (workdir / "error.zip").exists()  # OutputErrorE is for failed jobs


def test_patterns_match_one_path_component_at_a_time() -> None:
    assert packaging.matches("a.root", "*.root")
    assert not packaging.matches("QC/a.root", "*.root")
    assert packaging.matches("QC/a.root", "QC/*.root")
    assert packaging.matches("QC/a.root", "*/a.[rx]oot")
    assert not packaging.matches("QC/a.root", "QC/*/*.root")


@needs_bwrap
def test_a_failed_job_archives_its_output_errors(workdir: Path) -> None:
    script = "echo result > a.root; echo trace > crash.log; echo oops >&2; exit 3"
    spec = {"arguments": ["-c", script], "outputs": ["results.zip:*.root"],
            "output_errors": ["error_logs.zip:stderr,*.log@disk=1", "core*"]}  # fmt: skip
    _code, frames, _stderr = run_wrapper(workdir, frame(**spec), own_pids=True)
    assert [f["state"] for f in frames] == [*SAVED, "ERROR_E"]
    assert frames[-1]["exit_code"] == 3
    # problems saving OutputErrorE are told, but the job's state stays its error
    assert frames[-1]["detail"] == ("the executable exited with 3; saving OutputErrorE: "
                                    "no file matches core*")  # fmt: skip
    assert members(workdir / "error_logs.zip") == {"crash.log": b"trace\n", "stderr": b"oops\n"}
    assert not (workdir / "results.zip").exists()


@needs_bwrap
def test_a_failed_validation_archives_the_output_errors(workdir: Path) -> None:
    spec = {"validation": ["/bin/sh", "-c", "echo bad >&2; exit 2"],
            "outputs": ["out.zip:stdout"], "output_errors": ["val.zip:validation.*"]}  # fmt: skip
    _code, frames, _stderr = run_wrapper(workdir, frame(**spec), own_pids=True)
    assert [f["state"] for f in frames] == [*SAVED, "ERROR_V"]
    assert members(workdir / "val.zip") == {"validation.err": b"bad\n", "validation.out": b""}
    assert not (workdir / "out.zip").exists()


@needs_bwrap
def test_archives_hold_neither_the_token_nor_what_symlinks_point_at(
    workdir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"  # outside the work directory
    secret.write_text("SECRET-OUTSIDE")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "more.txt").write_text("SECRET-IN-A-DIRECTORY")
    victim = tmp_path / "victim.zip"
    victim.write_text("untouched")
    script = (f"ln -s {secret} leak.txt; ln -s {tmp_path}/secrets linked; "
              f"ln -s {victim} all.zip; mkfifo pipe; echo kept > kept.txt")  # fmt: skip
    outputs = ["all.zip:*", "token.zip:.jalien-token/*", ".jalien-token/key.pem"]
    _code, frames, _stderr = run_wrapper(workdir, frame(arguments=["-c", script], outputs=outputs),
                                         own_pids=True)  # fmt: skip
    assert [f["state"] for f in frames] == [*SAVED, "ERROR_S"]
    assert frames[-1]["detail"] == (
        "output .jalien-token/key.pem is missing or not a regular file; "
        "archive token.zip: no file matches .jalien-token/*"
    )
    archived = members(workdir / "all.zip")
    assert list(archived) == ["kept.txt", "stderr", "stdout"]
    assert not any(b"SECRET" in data or b"JOB-KEY" in data for data in archived.values())
    # the link planted at the archive's name was replaced, not written through
    assert not (workdir / "all.zip").is_symlink()
    assert victim.read_text() == "untouched"
    assert not (workdir / "token.zip").exists()


def test_sigterm_to_the_wrapper_stops_the_payload_and_still_reports(workdir: Path) -> None:
    script = "echo working; sleep 30 & echo $! > sleeper; wait; echo finished"
    spec = {"arguments": ["-c", script], "output_errors": ["stdout", "stderr"]}
    read_end, write_end = os.pipe()
    process = start_wrapper(workdir, write_end)
    os.close(write_end)
    assert process.stdin is not None
    process.stdin.write(frame(**spec))
    process.stdin.close()
    with os.fdopen(read_end, "rb") as status:
        frames = [handoff.read_frame(status, "status") for _ in range(2)]
        assert [f["state"] for f in frames] == ["STARTED", "RUNNING"]
        written(workdir / "sleeper")  # the payload is mid-way
        process.send_signal(signal.SIGTERM)  # the wrapper alone: it passes it on
        process.wait(timeout=60)
        frames += statuses(status.read())
    assert [f["state"] for f in frames] == [*SAVED, "ERROR_E"]
    assert frames[-1]["exit_code"] == -signal.SIGTERM
    assert (
        frames[-1]["detail"]
        == "the executable was killed by signal 15 after the wrapper got SIGTERM"
    )
    assert (workdir / "stdout").read_bytes() == b"working\n"
    assert ended(workdir / "sleeper")  # SIGTERM went to the payload's process group


def test_sigterm_before_the_payload_starts_runs_nothing(workdir: Path) -> None:
    fields = handoff.read_frame(io.BytesIO(frame()), "handoff")
    children = jobwrapper.Children()
    children.on_sigterm(signal.SIGTERM, None)  # as if it came while the handoff was read
    reports = io.BytesIO()
    code = jobwrapper.run_job(fields, str(workdir), jobwrapper.Reporter(reports), children)
    assert [f["state"] for f in statuses(reports.getvalue())] == ["STARTED", "ERROR_E"]
    assert code == 128 + signal.SIGTERM
    assert not (workdir / "stdout").exists()


def test_output_entries_are_parsed_as_the_jdl_writes_them() -> None:
    assert packaging.parse("log_archive.zip:stdout,stderr,*.log@disk=1") == (
        "log_archive.zip", ["stdout", "stderr", "*.log"])  # fmt: skip
    assert packaging.parse("hello.txt@disk=1,ALICE::CERN::EOS") == (None, ["hello.txt"])
    assert packaging.parse("*.root") == (None, ["*.root"])


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
            input=frame(arguments=["-c", "echo inside; id -u"], outputs=["out.zip:stdout"]),
            capture_output=True, env=env, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert [f["state"] for f in statuses(result.stdout)] == [*SAVED, "DONE"]
        assert (workdir / "stdout").read_text().split() == ["inside", "1000"]
        assert members(workdir / "out.zip") == {"stdout": b"inside\n1000\n"}
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)


@needs_bwrap
def test_a_tree_a_thousand_levels_deep_does_not_break_the_packing(workdir: Path) -> None:
    """The payload's `mkdir d && cd d` loop: the wrapper's walk is iterative and stops
    at MAX_DEPTH, so the job still ends with its own verdict (a recursive walk raised
    RecursionError and the job ended with no final state)."""
    from sandbox_agent.runtime.workdir import remove_workdir

    script = "i=0; while [ $i -lt 1100 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done"
    try:
        _code, frames, stderr = run_wrapper(
            workdir, frame(arguments=["-c", script], outputs=["all.zip:*", "*/*.none"]),
            own_pids=True)  # fmt: skip
        assert [f["state"] for f in frames] == [*SAVED, "DONE_WARN"], stderr
        assert "Traceback" not in stderr
    finally:  # pytest's own clean-up of old temporary directories would recurse
        assert remove_workdir(workdir / "d") is None


# -- SAVING once the job's other processes are gone --------------------------------------------

FORGE = """python3 - <<'END'
import zipfile
with zipfile.ZipFile("forged.zip", "w") as z:
    z.writestr("../x", "FORGED"); z.writestr("/etc/x", "FORGED")
END
setsid sh -c 'while :; do cp forged.zip .t.zip; mv -f .t.zip out.zip; done' </dev/null \
    >/dev/null 2>&1 &
sleep 0.3; echo made
"""


@needs_bwrap
def test_a_process_the_payload_left_cannot_swap_the_archive(workdir: Path) -> None:
    """A process of its own session renames a forged zip over the archive in a loop:
    it is killed before SAVING, so the archive is the wrapper's own."""
    _code, frames, stderr = run_wrapper(
        workdir, frame(arguments=["-c", FORGE], outputs=["out.zip:stdout"]), own_pids=True)
    assert [f["state"] for f in frames] == [*SAVED, "DONE"], stderr
    assert members(workdir / "out.zip") == {"stdout": b"made\n"}


def test_outside_a_pid_namespace_of_its_own_no_process_is_killed_and_no_archive_made(
    workdir: Path,
) -> None:
    """On the host (as with namespaces.pid off) kill(-1) would reach every process of the
    uid, the pilot's too: the wrapper kills nothing, and fails the archives closed."""
    script = "setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $! > sleeper; echo made"
    _code, frames, _stderr = run_wrapper(
        workdir, frame(arguments=["-c", script], outputs=["out.zip:stdout", "stdout"]))
    try:
        assert [f["state"] for f in frames] == [*SAVED, "ERROR_S"]
        assert frames[-1]["detail"].startswith(
            "archive out.zip: not made: the sandbox has no PID namespace of its own (the "
            "wrapper is pid ")  # fmt: skip
        assert not (workdir / "out.zip").exists()
        assert not ended(workdir / "sleeper", wait=0.5)  # alive: no kill(-1) here
    finally:
        os.kill(int((workdir / "sleeper").read_text()), signal.SIGKILL)


def test_a_proc_of_another_namespace_proves_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "proc"
    (fake / "self").mkdir(parents=True)
    (fake / "self" / "status").write_text(f"Name:\tx\nNSpid:\t{os.getpid() + 1}\t2\n")
    assert jobwrapper.own_pid_namespace(str(fake)) is not None  # not pid 1's child here
    assert "no PID namespace of its own" in str(jobwrapper.end_other_processes(proc=str(fake)))


def lifeline_frame(script: str) -> bytes:
    fields = handoff.read_frame(io.BytesIO(frame(arguments=["-c", script])), "handoff")
    fields.pop("schema"), fields.pop("version")
    return handoff.encode("handoff", {**fields, "lifeline": 1})


@needs_bwrap
def test_the_end_of_the_lifeline_kills_the_job_and_the_wrapper(workdir: Path) -> None:
    """Under a lifeline (a container the engine would run on after its agent died) the
    end of the wrapper's stdin ends the job: every process of its PID namespace killed,
    the wrapper exiting 137."""
    marker = f"{60 + os.getpid() % 1000 / 1000:.3f}"  # a sleep this run alone starts
    script = f"sleep {marker} & echo $! > sleeper; wait"
    read_end, write_end = os.pipe()
    process = start_wrapper(workdir, write_end, own_pids=True)
    os.close(write_end)
    assert process.stdin is not None
    process.stdin.write(lifeline_frame(script))
    process.stdin.flush()  # the agent holds it open
    with os.fdopen(read_end, "rb") as status:
        frames = [handoff.read_frame(status, "status") for _ in range(2)]
        assert [f["state"] for f in frames] == ["STARTED", "RUNNING"]
        written(workdir / "sleeper")
        process.stdin.close()  # the agent is gone
        assert process.wait(timeout=30) == 137
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    assert left.stdout == ""  # its pid is the namespace's: looked for by what it runs
    assert b"the agent is gone" in (process.stderr.read() if process.stderr else b"")


@needs_bwrap
def test_after_its_final_state_the_wrapper_waits_for_the_agent_to_let_it_go(
    workdir: Path,
) -> None:
    """The final state is out, and the wrapper (a container's pid 1) still runs: its
    engine keeps the container's cgroup, which the agent reads, until the agent closes
    the lifeline; then it exits with the job's code."""
    read_end, write_end = os.pipe()
    process = start_wrapper(workdir, write_end, own_pids=True)
    os.close(write_end)
    assert process.stdin is not None
    process.stdin.write(lifeline_frame("exit 3"))
    process.stdin.flush()
    with os.fdopen(read_end, "rb") as status:
        frames = statuses(status.read())  # the wrapper closed its status channel
    assert frames[-1]["state"] == "ERROR_E"
    time.sleep(0.5)
    assert process.poll() is None  # held until the agent says
    process.stdin.close()
    assert process.wait(timeout=30) == 3


def test_sigint_from_the_payload_does_not_end_the_wrapper(workdir: Path) -> None:
    """A container's pid 1 gets only the signals it handles, and Python handles SIGINT:
    the wrapper ignores it, so a payload cannot turn its own error into FAILED."""
    script = "kill -INT $PPID; sleep 0.2; echo after; exit 3"
    _code, frames, stderr = run_wrapper(workdir, frame(arguments=["-c", script]))
    assert "KeyboardInterrupt" not in stderr
    assert [f["state"] for f in frames] == [*SAVED, "ERROR_E"]
    assert frames[-1]["exit_code"] == 3
    assert (workdir / "stdout").read_bytes() == b"after\n"
