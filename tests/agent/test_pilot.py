"""The pilot end to end through the console script, with the real bwrap, seccomp,
landlock, cgroups and token authority: submit, run, status, outputs, logs, kill.

Every job here really runs in the sandbox; every state asserted is the one the queue
recorded. Homes live under /tmp with mode 0711, because as root the sandbox runs as
uid 65534, which must reach the work directories."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import (
    ROOT,
    SCRIPT,
    cli_env,
    run_cli,
    unprivileged_or_skip,
)

from sandbox_agent.limits.cgroups import PREFIX, discover
from sandbox_agent.tokens import Role, TokenAuthority, load_token
from sandbox_agent.tokens.files import load_certificates

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

CLI = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-pilot-"))
    base.chmod(0o711)
    yield base / "home"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cli(home: Path) -> CLI:
    env = cli_env(home)

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args)

    return run


def write_jdl(home: Path, name: str, text: str, **files: str) -> Path:
    """A JDL (and the local files it names) in a directory of its own under home's parent."""
    directory = home.parent / f"jdl-{name}"
    directory.mkdir(exist_ok=True)
    for file_name, content in files.items():
        (directory / file_name.replace("_", ".")).write_text(content)
        (directory / file_name.replace("_", ".")).chmod(0o755)
    path = directory / f"{name}.jdl"
    path.write_text(text)
    return path


def sh(script: str) -> str:
    """A shell script's text, for a ``job.sh`` written beside a JDL (``Executable =
    "job.sh"``): a payload's script is never an ``Arguments = "-c '...'"``, which JAliEn
    splits on white space, quotes kept."""
    return f"#!/bin/sh\n{script}\n"


def submit(cli: CLI, jdl: Path | str, *args: str) -> int:
    result = cli("submit", jdl, *args)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def status(cli: CLI, job: int) -> dict[str, Any]:
    return json.loads(cli("status", job, "--json").stdout)


def history(cli: CLI, job: int) -> list[str]:
    return [change["state"] for change in status(cli, job)["history"]]


def events(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def finished(result: subprocess.CompletedProcess[str]) -> dict[int, dict[str, Any]]:
    return {e["job"]: e for e in events(result) if e["event"] in ("finished", "handed_back")}


def run_pilot(cli: CLI, *args: str) -> subprocess.CompletedProcess[str]:
    result = cli("run", "--json", "--lease", "30", *args)
    assert result.returncode == 0, result.stderr
    return result


# -- jobs to their end --------------------------------------------------------------------


def test_a_trivial_job_runs_to_done_with_its_outputs_logs_and_history(cli: CLI, home: Path) -> None:
    job = submit(cli, "samples/hello.jdl")
    result = run_pilot(cli)
    event = finished(result)[job]
    assert (event["state"], event["exit_code"]) == ("DONE", 0), event
    assert event["wrapper_states"] == ["STARTED", "RUNNING", "SAVING", "DONE"]
    assert history(cli, job) == ["WAITING", "ASSIGNED", "STARTED", "RUNNING", "SAVING", "DONE"]
    assert events(result)[-1] == {"event": "exit", "reason": "the queue has no waiting job"}
    listed = json.loads(cli("outputs", job, "--json").stdout)
    names = {f["name"]: f for f in listed["files"]}
    assert set(names) == {"stdout", "stderr", "hello.txt"}
    target = home.parent / "fetched"
    copied = cli("outputs", job, "--to", target)
    assert copied.returncode == 0, copied.stderr
    for name, item in names.items():
        data = (target / name).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == item["sha256"]
        assert len(data) == item["size"]
    assert cli("logs", job, "--stream", "stdout").stdout == (target / "stdout").read_text()
    # the work directory is gone, and nothing of it is left in the work area
    assert list((home / "work").iterdir()) == []


def test_the_payload_holds_a_job_token_for_its_own_job_and_never_the_agents(
    cli: CLI, home: Path
) -> None:
    key = home / "certs" / "jobagent.key"
    script = (f"cat $JALIEN_TOKEN_CERT > cert.pem; ls -a $HOME > listing; env > env.txt; "
              f"cat {key} > leaked 2>&1; cat $JALIEN_TOKEN_KEY > jobkey 2>&1; true")  # fmt: skip
    jdl = write_jdl(
        home,
        "token",
        'Executable = "job.sh";\nOutput = {"cert.pem", "listing", "env.txt", "leaked", "jobkey"};'
        "\nMasterJobID = 1;",  # a JDL's claim to be another job's subjob is not believed
        job_sh=sh(script),
    )
    submit(cli, jdl)
    job = submit(cli, jdl)
    (home / "slot.toml").write_text('Site = "ALICE::Demo"\n')  # the site's word on its slot
    run_pilot(cli)
    target = home.parent / "out"
    assert cli("outputs", job, "--to", target).returncode == 0
    certs = load_certificates(target / "cert.pem")
    authority = TokenAuthority.load(home / "certs")
    verified = authority.verifier().verify(certs[0], tuple(certs[1:]), role=Role.JOB,
                                           job_id=job, resubmission=0)  # fmt: skip
    assert verified.identity.job is not None and verified.identity.job.job_id == job
    agent = load_token(home / "certs" / "jobagent.pem", home / "certs" / "jobagent.key")
    assert certs[0] != agent.certificate
    text = (target / "env.txt").read_text()
    env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    # JAliEn's JobWrapper's variables: the job, its owner, the slot's Site, its tmp/
    assert {name: env.get(name) for name in ("ALIEN_PROC_ID", "ALIEN_MASTERJOB_ID",
            "ALIEN_USER", "ALIEN_SITE")} == {"ALIEN_PROC_ID": str(job),
        "ALIEN_MASTERJOB_ID": str(job), "ALIEN_USER": getpass.getuser(),
        "ALIEN_SITE": "ALICE::Demo"}  # fmt: skip
    assert env["TMPDIR"] == env["TMP"] == env["HOME"] + "/tmp"
    # its own key is readable, the agent's is not even there; the token lives in its dir
    assert (target / "jobkey").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert "No such file or directory" in (target / "leaked").read_text()
    assert key.read_bytes() not in (target / "leaked").read_bytes()
    assert ".jalien-token" in (target / "listing").read_text().split()
    assert str(home) not in text.replace(str(home / "work"), "")  # no path to the agent's state


def test_the_production_sample_runs_with_staged_inputs_archives_and_validation(
    cli: CLI, home: Path
) -> None:
    home.mkdir()
    shutil.copy(ROOT / "samples" / "slot.toml", home / "slot.toml")
    job = submit(cli, "samples/production/production.jdl")
    event = finished(run_pilot(cli))[job]
    assert event["state"] == "DONE", event
    listed = {f["name"] for f in json.loads(cli("outputs", job, "--json").stdout)["files"]}
    assert listed == {"log_archive.zip", "root_archive.zip", "QC_archive.zip"}
    target = home.parent / "out"
    cli("outputs", job, "--to", target)
    with zipfile.ZipFile(target / "root_archive.zip") as archive:
        assert sorted(archive.namelist()) == ["AO2D.root", "hits.root"]
    with zipfile.ZipFile(target / "log_archive.zip") as archive:
        members = archive.namelist()
        assert {"stdout", "stderr", "sim.log", "config.json"} <= set(members)
        assert not [m for m in members if ".jalien-token" in m]
        assert archive.read("stdout").decode().startswith("run 526641 ")


def test_a_failing_payload_ends_in_error_e_with_its_error_outputs(cli: CLI, home: Path) -> None:
    job = submit(cli, "samples/fail.jdl")
    event = finished(run_pilot(cli))[job]
    assert (event["state"], event["exit_code"]) == ("ERROR_E", 3)
    assert event["files"] == ["log_archive.zip"]  # OutputErrorE, not Output
    target = home.parent / "out"
    cli("outputs", job, "--to", target)
    with zipfile.ZipFile(target / "log_archive.zip") as archive:
        assert {"stdout", "stderr", "fail.log"} <= set(archive.namelist())


def test_a_failing_validation_ends_in_error_v(cli: CLI, home: Path) -> None:
    jdl = write_jdl(
        home,
        "validation",
        'Executable = "/bin/true";\nValidationCommand = "check.sh";\n',
        check_sh="#!/bin/sh\nexit 1\n",
    )
    job = submit(cli, jdl)
    assert finished(run_pilot(cli))[job]["state"] == "ERROR_V"


def test_a_missing_executable_ends_in_error_ib(cli: CLI, home: Path) -> None:
    job = submit(cli, write_jdl(home, "missing", 'Executable = "/no/such/program";'))
    event = finished(run_pilot(cli))[job]
    assert event["state"] == "ERROR_IB"
    assert "/no/such/program" in event["detail"]
    assert history(cli, job)[-2:] == ["STARTED", "ERROR_IB"]  # it never got to run


def test_limits_end_jobs_expired_or_in_error(cli: CLI, home: Path) -> None:
    expired = write_jdl(home, "ttl", 'Executable = "/bin/sleep"; Arguments = "60"; TTL = 2;')
    memory = write_jdl(
        home,
        "memory",
        'Executable = "hog.py"; MemorySize = "256MB";',
        hog_py="#!/usr/bin/python3\nx = bytearray(600 << 20)\n",
    )
    disk = write_jdl(
        home,
        "disk",
        'Executable = "job.sh"; WorkDirectorySize = "20MB";',
        job_sh=sh("head -c 64000000 /dev/zero > big; sleep 30"),
    )
    ids = [submit(cli, path) for path in (expired, memory, disk)]
    done = finished(run_pilot(cli))
    assert done[ids[0]]["state"] == "EXPIRED"
    assert done[ids[0]]["detail"] == "killed: ran past its wall time (2)"
    assert done[ids[1]]["state"] == "ERROR_E"
    assert "memory" in done[ids[1]]["detail"]
    assert done[ids[2]]["state"] == "ERROR_E"
    assert done[ids[2]]["detail"].startswith("killed: its work directory grew past")
    usage = status(cli, ids[1])["usage"]  # `status` shows the last run's resource use
    assert usage["kill_reason"] == "memory"
    assert "wall_seconds" in usage
    assert status(cli, ids[0])["usage"]["processes_peak"] >= 1  # sampled while it slept
    disk_use = status(cli, ids[2])["usage"]  # sampled by the monitor while it ran
    assert disk_use["kill_reason"] == "workdir_size"
    assert disk_use["workdir_bytes_peak"] > 20 * 1000 * 1000  # its limit: it went past
    assert "work directory peak" in cli("status", ids[2]).stdout


# -- stopping, vanishing and competing agents ---------------------------------------------


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_pilot_left() -> Iterator[None]:
    """A pilot a failed test left running is killed (its sandbox dies with it)."""
    yield
    while _STARTED:
        pilot = _STARTED.pop()
        if pilot.poll() is None:
            pilot.kill()
            pilot.communicate()


def start_pilot(home: Path, *args: str) -> subprocess.Popen[str]:
    pilot = subprocess.Popen([str(SCRIPT), "run", "--json", *args], cwd=ROOT, env=cli_env(home),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _STARTED.append(pilot)
    return pilot


def wait_for_state(cli: CLI, job: int, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status(cli, job)["state"] == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job} never reached {state}: {history(cli, job)}")


def processes_with(word: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if word.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_sigterm_hands_the_running_job_back_and_leaves_nothing(cli: CLI, home: Path) -> None:
    seconds = f"{os.getpid() % 1000 + 3000}.5"  # a sleep no other process has
    job = submit(
        cli, write_jdl(home, "long", f'Executable = "/bin/sleep"; Arguments = "{seconds}";')
    )
    pilot = start_pilot(home, "--grace", "2")
    wait_for_state(cli, job, "RUNNING")
    assert processes_with(seconds)  # the payload runs
    pilot.send_signal(signal.SIGTERM)
    out, err = pilot.communicate(timeout=60)
    assert pilot.returncode == 0, err
    assert "Traceback" not in err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[-2]["event"] == "handed_back" and lines[-2]["job"] == job
    assert lines[-1] == {"event": "exit", "reason": "stopped by SIGTERM"}
    now = status(cli, job)
    assert (now["state"], now["resubmission"]) == ("WAITING", 1)
    assert "handed back by agent" in now["history"][-1]["detail"]
    assert processes_with(seconds) == []
    assert list((home / "work").iterdir()) == []


def test_a_job_whose_agent_is_killed_returns_to_the_queue_and_runs_once_more(
    cli: CLI, home: Path
) -> None:
    job = submit(cli, write_jdl(home, "short", 'Executable = "/bin/sleep"; Arguments = "2";'))
    pilot = start_pilot(home, "--lease", "2")
    wait_for_state(cli, job, "RUNNING")
    pilot.send_signal(signal.SIGKILL)  # no teardown, no hand-back: the lease must do it
    pilot.communicate(timeout=30)
    time.sleep(2.5)  # the lease runs out
    second = run_pilot(cli)
    event = finished(second)[job]
    assert (event["state"], event["resubmission"]) == ("DONE", 1)
    # the killed agent could not remove its job's cgroup; the next one did, and no other
    tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]
    swept = events(second)[0]["swept_cgroups"]
    assert len(swept) == 1 and swept[0].startswith(f"job-{tag}-{job}-0-"), swept
    assert not [p for root in discover().roots() for p in root.glob(f"{PREFIX}job-{tag}-*")]
    # nor its work directory, a filesystem still mounted (as root) with its image
    swept = events(second)[0]["swept_workdirs"]
    assert len(swept) == 1 and swept[0].startswith(f"job-{tag}-{job}.0."), swept
    assert list((home / "work").iterdir()) == []
    assert str(home) not in Path("/proc/self/mountinfo").read_text()
    changes = status(cli, job)["history"]
    assert [c["state"] for c in changes].count("ASSIGNED") == 2
    assert any(c["detail"].startswith("node fault 1 of 3: lease expired") for c in changes)


def test_two_agents_on_one_queue_never_run_a_job_twice(cli: CLI, home: Path) -> None:
    jdl = write_jdl(home, "quick", 'Executable = "/bin/sleep"; Arguments = "0.2";')
    jobs = [submit(cli, jdl) for _ in range(8)]
    pilots = [start_pilot(home, "--lease", "30") for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in pilots]
    assert [p.returncode for p in pilots] == [0, 0], outputs
    ran: list[int] = []
    for out, _ in outputs:
        ran += [
            json.loads(line)["job"]
            for line in out.splitlines()
            if json.loads(line)["event"] == "finished"
        ]
    assert sorted(ran) == jobs  # each exactly once, between them
    for job in jobs:
        assert history(cli, job) == ["WAITING", "ASSIGNED", "STARTED", "RUNNING", "SAVING", "DONE"]


def test_a_job_killed_at_the_queue_is_stopped_by_its_agent(cli: CLI, home: Path) -> None:
    job = submit(cli, write_jdl(home, "victim", 'Executable = "/bin/sleep"; Arguments = "120";'))
    pilot = start_pilot(home, "--lease", "3", "--grace", "1")
    wait_for_state(cli, job, "RUNNING")
    assert cli("kill", job, "--reason", "wrong input").returncode == 0
    out, err = pilot.communicate(timeout=60)
    assert pilot.returncode == 0, err
    event = [json.loads(line) for line in out.splitlines()][-2]
    assert (event["job"], event["state"]) == (job, "KILLED")
    assert status(cli, job)["history"][-1]["detail"] == "killed: wrong input"


# -- hostile outputs -------------------------------------------------------------------------


def test_an_output_reached_through_a_symlink_to_the_agents_key_is_refused(
    cli: CLI, home: Path
) -> None:
    """Inside the sandbox the payload builds a harmless file at the path of the agent's
    key (on its own /tmp) and names it through a symlinked directory: the wrapper sees a
    plain file; outside, the same path is the agent's key."""
    certs = home / "certs"
    script = (
        f"mkdir -p {certs} && echo decoy > {certs}/jobagent.key && "
        f"ln -s {certs} keys && cat keys/jobagent.key"
    )
    jdl = write_jdl(
        home,
        "symlink",
        'Executable = "job.sh";\nOutput = {"keys/jobagent.key"};',
        job_sh=sh(script),
    )
    job = submit(cli, jdl)
    event = finished(run_pilot(cli))[job]
    assert cli("logs", job, "--stream", "stdout").stdout == "decoy\n"  # the wrapper's view
    # the wrapper refuses the name (ERROR_S); the agent never lists a link, so a wrapper
    # the payload subverted could not make it keep one either (tests/agent/test_storage.py)
    assert event["state"] == "ERROR_S", event
    assert "keys/jobagent.key" in event["detail"]
    secret = (certs / "jobagent.key").read_bytes()
    for stored in (home / "outputs").rglob("*"):
        if stored.is_file():
            assert secret not in stored.read_bytes()


def test_a_hard_linked_output_is_refused(cli: CLI, home: Path) -> None:
    script = "echo data > result.txt && ln result.txt copy.txt"
    jdl = write_jdl(
        home,
        "hardlink",
        'Executable = "job.sh";\nOutput = {"result.txt"};',
        job_sh=sh(script),
    )
    job = submit(cli, jdl)
    event = finished(run_pilot(cli))[job]
    assert event["state"] == "ERROR_SV"
    assert "result.txt: has 2 hard links" in event["detail"]
    assert json.loads(cli("outputs", job, "--json").stdout)["files"] == []


# -- refusing to start ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("expired-jobagent", "token expired at 2020-01-02"),
        ("not-yet-valid-jobagent", "not valid before"),
        ("revoked-jobagent", "revoked"),
        ("unknown-ca-jobagent", "not issued by a trusted"),
        ("broker", "this is a broker token; a jobagent token is needed"),
        ("mismatch", "is not the key of"),
    ],
)
def test_an_unusable_jobagent_token_is_one_line_exit_3_and_no_job_lost(
    cli: CLI, home: Path, token: str, why: str
) -> None:
    """The test authority (certs-test) as the home's, with a bad token as the agent's."""
    certs = home / "certs"
    shutil.copytree(ROOT / "certs-test", certs)
    for key in certs.glob("*.key"):
        key.chmod(0o600)
    certs.chmod(0o700)
    shutil.copy(certs / f"{token}.pem", certs / "jobagent.pem")
    shutil.copy(certs / f"{token}.key", certs / "jobagent.key")
    job = submit(cli, "samples/hello.jdl")
    result = cli("run")
    assert result.returncode == 3, result.stdout
    assert result.stderr.startswith(f"sandbox-agent: {certs}: the jobagent token is not usable")
    assert why in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert history(cli, job) == ["WAITING"]  # never matched: no job lost


def test_a_work_area_the_sandbox_cannot_reach_is_refused_before_any_match(
    cli: CLI, home: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the sandbox to uid 65534")
    private = home.parent / "private"
    private.mkdir(mode=0o700)
    job = submit(cli, "samples/hello.jdl")
    result = cli("run", "--work-area", private / "work")
    assert result.returncode == 3
    assert "the sandbox runs as uid 65534, which cannot reach it" in result.stderr
    assert history(cli, job) == ["WAITING"]  # never matched


def test_the_pilot_stops_when_no_waiting_job_fits_the_time_left(cli: CLI, home: Path) -> None:
    job = submit(cli, write_jdl(home, "long-ttl", 'Executable = "/bin/true"; TTL = 7200;'))
    result = run_pilot(cli, "--ttl", "600")
    reason = events(result)[-1]["reason"]
    expected = re.escape(f"1 waiting job(s) this slot cannot run: job {job}: it asks for 7200 "
                         "seconds of TTL; the slot offers ") + "5[0-9][0-9]"  # fmt: skip
    assert re.fullmatch(expected, reason), reason
    assert history(cli, job) == ["WAITING"]  # never matched


@pytest.mark.parametrize("landlock", ["required", "off"])
def test_the_payload_cannot_reach_the_wrappers_descriptors(
    cli: CLI, home: Path, landlock: str
) -> None:
    """The wrapper holds the status pipe and the job key; the payload, same uid, tries
    its /proc entries. Undumpable, the wrapper's are closed to it, with landlock or not."""
    shutil.copytree(ROOT / "policies", home / "policies")
    (home / "policies" / "site.toml").write_text(
        f'extends = "default"\n[process]\nlandlock = "{landlock}"\n'
    )
    script = "ls /proc/$PPID/fd; printf garbage > /proc/$PPID/fd/1 && echo FORGED; true"
    jdl = write_jdl(home, "forge", 'Executable = "job.sh";', job_sh=sh(script))
    job = submit(cli, jdl)
    event = finished(run_pilot(cli, "--policy", "site"))[job]
    assert event["state"] == "DONE", event  # the pipe still carries only the wrapper's frames
    assert "FORGED" not in cli("logs", job, "--stream", "stdout").stdout
    errors = cli("logs", job, "--stream", "stderr").stdout
    assert "cannot open directory '/proc/2/fd'" in errors, errors
    assert errors.count("Permission denied") == 2, errors


def test_a_node_without_bwrap_refuses_to_run_and_touches_no_job(cli: CLI, home: Path) -> None:
    job = submit(cli, "samples/hello.jdl")
    env = cli_env(home, PATH="/nonexistent")
    result = run_cli(env, "run")
    assert result.returncode == 3
    assert result.stderr.startswith("sandbox-agent: cannot run jobs here: ")
    assert len(result.stderr.splitlines()) == 1
    assert history(cli, job) == ["WAITING"]  # never matched


def test_results_of_a_job_that_never_ran_and_bad_requests_are_one_line(
    cli: CLI, home: Path
) -> None:
    job = submit(cli, "samples/hello.jdl")
    for args in (("outputs", job), ("logs", job)):
        result = cli(*args)
        assert (result.returncode, result.stderr) == (
            1, f"sandbox-agent: job {job} has no stored outputs or logs yet "
               f"(see: sandbox-agent status {job})\n")  # fmt: skip
    assert cli("logs", job, "--stream", "core").returncode == 2
    assert cli("kill", job).stdout == f"job {job}: KILLED\n"
    again = cli("kill", job)
    assert again.returncode == 1
    assert "KILLED is final" in again.stderr


def test_outputs_are_never_copied_over_an_existing_file(cli: CLI, home: Path) -> None:
    job = submit(cli, "samples/hello.jdl")
    run_pilot(cli)
    target = home.parent / "out"
    target.mkdir()
    (target / "hello.txt").write_text("mine\n")
    result = cli("outputs", job, "--to", target)
    assert result.returncode == 1
    assert result.stderr == (f"sandbox-agent: {target / 'hello.txt'}: exists already; give an "
                             "empty --to directory\n")  # fmt: skip
    assert (target / "hello.txt").read_text() == "mine\n"
    assert sorted(p.name for p in target.iterdir()) == ["hello.txt"]  # nothing half-copied


def test_an_unprivileged_pilot_removes_what_its_payload_locked(home: Path) -> None:
    """As a site runs it without root: the agent as uid 65534 in a delegated cgroup,
    the payload as the same uid, leaving directories it made unreadable."""
    nobody = unprivileged_or_skip("pilot")
    prefix, program, extra = nobody.prefix, nobody.program, nobody.extra
    try:
        home.mkdir()
        os.chown(home, 65534, 65534)
        env = cli_env(home, **extra)
        script = ("mkdir -p locked/deep && echo x > locked/deep/f && chmod 500 locked/deep "
                  "&& chmod 000 locked && id -u")  # fmt: skip
        jdl = write_jdl(home, "locked", 'Executable = "job.sh";', job_sh=sh(script))
        assert run_cli(env, "submit", jdl, program=prefix + program).returncode == 0
        result = run_cli(env, "run", "--json", program=prefix + program)
        assert result.returncode == 0, result.stderr
        event = finished(result)[1]
        assert (event["state"], event["detail"]) == ("DONE", ""), event
        logs = run_cli(env, "logs", "1", "--stream", "stdout", program=program)
        assert logs.stdout == "1000\n"  # the policy's uid inside; 65534 outside
        assert list((home / "work").iterdir()) == []
    finally:
        nobody.remove()


def test_a_sandbox_that_cannot_start_stops_the_pilot_before_it_takes_a_job(
    cli: CLI, home: Path
) -> None:
    """A node fault (here a policy binding a path this host lacks) must not drain the
    queue into FAILED jobs: the preflight's probe meets it first, the pilot stops with
    one line and no job is touched."""
    shutil.copytree(ROOT / "policies", home / "policies")
    missing = f"/var/tmp/sandbox-agent-missing-{os.getpid()}"
    (home / "policies" / "broken.toml").write_text(
        f'extends = "default"\n[filesystem]\nwritable = ["{missing}"]\n'
    )
    first, second = submit(cli, "samples/hello.jdl"), submit(cli, "samples/hello.jdl")
    result = cli("run", "--policy", "broken")
    assert result.returncode == 3
    assert result.stderr.startswith("sandbox-agent: preflight: cannot run the probe (")
    assert f"bwrap: Can't find source path {missing}: No such file or directory" in result.stderr
    assert result.stderr.endswith("a pilot that cannot prove isolation takes no work\n")
    assert len(result.stderr.splitlines()) == 1
    for job in (first, second):
        assert history(cli, job) == ["WAITING"]  # never tried
        assert status(cli, job)["resubmission"] == 0


def test_an_existing_work_area_is_never_changed(cli: CLI, home: Path) -> None:
    shared = home.parent / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /var/tmp
    job = submit(cli, "samples/hello.jdl")
    result = cli("run", "--work-area", shared)
    assert result.returncode == 3
    assert result.stderr == (f"sandbox-agent: {shared}: writable by every user; give "
                             "--work-area a directory of its own, such as "
                             "/var/tmp/sandbox-agent\n")  # fmt: skip
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert history(cli, job) == ["WAITING"]  # never matched
    link = home.parent / "link"
    link.symlink_to(shared)
    assert "not a directory (a symlink is not taken)" in cli("run", "--work-area", link).stderr


def test_a_work_directory_too_deep_to_search_turns_done_into_error_sv(cli: CLI, home: Path) -> None:
    """The wrapper is content (its literal output is there); the agent cannot search the
    whole tree, so it does not vouch for the outputs."""
    script = ("echo x > x.txt; i=0; while [ $i -lt 200 ]; do mkdir d && cd d || exit 1; "
              "i=$((i+1)); done")  # fmt: skip
    jdl = write_jdl(home, "deep", 'Executable = "job.sh";\nOutput = {"x.txt"};',
                    job_sh=sh(script))  # fmt: skip
    job = submit(cli, jdl)
    event = finished(run_pilot(cli))[job]
    assert event["wrapper_states"][-1] == "DONE"
    assert (event["state"], event["detail"]) == (
        "ERROR_SV", "an output was refused: the work directory is deeper than 128 levels; "
        "outputs were not looked for")  # fmt: skip
    assert json.loads(cli("outputs", job, "--json").stdout)["state"] == "ERROR_SV"
    assert list((home / "work").iterdir()) == []


def test_a_local_input_never_staged_is_not_read_by_the_agent(cli: CLI, home: Path) -> None:
    """A JDL queued without `submit` (straight into the store) naming a local file: the
    agent places only catalogue files, so the job misses its input, and the file stays
    unread."""
    from sandbox_agent.queue import Store

    secret = home.parent / "secret.txt"
    secret.write_text("TOP SECRET\n")
    with Store(home / "queue") as store:
        job = store.submit(f'Executable = "/bin/true"; InputFile = {{"{secret}"}};\n',
                           owner="root")  # fmt: skip
    event = finished(run_pilot(cli))[job]
    assert event["state"] == "ERROR_IB"
    assert "secret.txt" in event["detail"]
    for stored in (home / "outputs").rglob("*"):
        if stored.is_file():
            assert b"TOP SECRET" not in stored.read_bytes()


def test_names_the_payload_chose_are_printed_escaped(cli: CLI, home: Path) -> None:
    script = "#!/bin/sh\nprintf x > \"$(printf 'a\\nFORGED  sha256:0  1  b.txt')\"\n"
    jdl = write_jdl(home, "names", 'Executable = "make.sh"; Output = {"*.txt"};',
                    make_sh=script)  # fmt: skip
    job = submit(cli, jdl)
    assert finished(run_pilot(cli))[job]["state"] == "DONE"
    listed = cli("outputs", job).stdout.splitlines()
    assert len(listed) == 2, listed  # the header and one file: no forged line
    assert listed[1].endswith("a\\x0aFORGED  sha256:0  1  b.txt")


def test_an_agent_revoked_while_it_runs_gets_no_more_job_tokens(cli: CLI, home: Path) -> None:
    """The revocation list is read at every job token, not only when the pilot starts.
    The first job runs long enough for the revocation (a CLI run, slow on a loaded CI
    machine) to land before the pilot asks for the second job's token."""
    first = submit(cli, write_jdl(home, "first", 'Executable = "/bin/sleep"; Arguments = "10";'))
    second = submit(cli, "samples/hello.jdl")
    pilot = start_pilot(home)
    wait_for_state(cli, first, "RUNNING")
    revoked = cli("certs", "revoke", home / "certs" / "jobagent.pem")
    assert revoked.returncode == 0, revoked.stderr
    out, err = pilot.communicate(timeout=60)
    assert pilot.returncode == 3, err
    assert err.startswith(f"sandbox-agent: job {second} was handed back: no job token: "
                          "the caller is not a valid jobagent: ")  # fmt: skip
    assert "revoked" in err and len(err.splitlines()) == 1
    ran = [json.loads(line) for line in out.splitlines()]
    assert [(e["job"], e["state"]) for e in ran if e["event"] == "finished"] == [(first, "DONE")]
    now = status(cli, second)
    assert (now["state"], now["resubmission"]) == ("WAITING", 1)
