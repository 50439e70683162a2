"""A JDL that names the pilot's key, submitted on the pilot's own account (the README's
quick-start flow), as root and as an unprivileged pilot: `submit` refuses it with one
line naming the entry and the reason, and neither the catalogue nor the queue ever holds
a byte of the key. The same for `catalogue add` and for a submit to a broker."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import cli_env, nobody_program, run_cli

NOBODY = 65534


@dataclass
class Pilot:
    """The pilot's account: its home (with its authority and jobagent token), a user's
    job directory it was handed, and how it runs the CLI."""

    base: Path
    home: Path
    jobs: Path
    run: Callable[..., object]

    def secrets(self) -> list[bytes]:
        return [(self.home / "certs" / n).read_bytes() for n in ("jobagent.key", "ca.key")]

    def stored(self) -> list[bytes]:
        """Every byte the home's catalogue and queue hold."""
        found = []
        for path in self.home.rglob("*"):
            if path.is_file() and not path.is_symlink() and "certs" not in path.parts:
                found.append(path.read_bytes())
        return found


@pytest.fixture(params=["root", "nobody"])
def pilot(request: pytest.FixtureRequest) -> Iterator[Pilot]:
    program: list[str] | None = None
    extra: dict[str, str] = {}
    if request.param == "nobody":
        found = nobody_program()
        if isinstance(found, str):
            pytest.skip(found)
        program, extra = found
    elif os.geteuid() != 0:
        pytest.skip("the root pilot needs root")
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-staging-"))
    base.chmod(0o755)
    home, jobs = base / "home", base / "jobs"
    jobs.mkdir()
    (jobs / "data.txt").write_text("the user's data\n")
    if request.param == "nobody":
        os.chown(base, NOBODY, NOBODY)
        os.chown(jobs, NOBODY, NOBODY)
        os.chown(jobs / "data.txt", NOBODY, NOBODY)
    env = cli_env(home, **extra)

    def run(*args: object):  # type: ignore[no-untyped-def]
        return run_cli(env, *args, program=program)

    made = run("certs", "init")
    assert made.returncode == 0, made.stderr  # type: ignore[attr-defined]
    try:
        yield Pilot(base, home, jobs, run)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def submit_refused(pilot: Pilot, jdl_text: str, *words: str) -> str:
    jdl = pilot.jobs / "steal.jdl"
    jdl.write_text(jdl_text)
    result = pilot.run("submit", jdl)
    assert result.returncode == 2, result.stdout  # type: ignore[attr-defined]
    (line,) = result.stderr.splitlines()  # type: ignore[attr-defined]
    for word in words:
        assert word in line
    listed = pilot.run("jobs", "--json")
    assert listed.stdout.strip() == "[]"  # type: ignore[attr-defined]
    stored = pilot.stored()
    for secret in pilot.secrets():
        assert not any(secret in data for data in stored)
    return str(line)


def test_an_input_naming_the_key_by_its_absolute_path_is_refused(pilot: Pilot) -> None:
    for name in ("jobagent.key", "ca.key"):
        key = pilot.home / "certs" / name
        line = submit_refused(pilot, f'Executable = "/bin/cat";\nInputFile = {{"{key}"}};\n')
        assert line.startswith(f"sandbox-agent: InputFile {key}: reaches ")
        assert "no job may read" in line


def test_an_input_reaching_the_key_through_dotdot_is_refused(pilot: Pilot) -> None:
    jdl = 'Executable = "/bin/cat";\nInputFile = {"../home/certs/jobagent.key"};\n'
    line = submit_refused(pilot, jdl)
    assert line.startswith("sandbox-agent: InputFile ../home/certs/jobagent.key: leaves ")


def test_an_innocent_name_that_is_a_symlink_to_the_key_is_refused(pilot: Pilot) -> None:
    link = pilot.jobs / "innocent.txt"
    link.symlink_to(pilot.home / "certs" / "jobagent.key")
    line = submit_refused(pilot, 'Executable = "/bin/cat";\nInputFile = {"innocent.txt"};\n')
    assert line.startswith("sandbox-agent: InputFile innocent.txt: leaves ")
    # and as the executable the agent stages and places
    line = submit_refused(pilot, 'Executable = "innocent.txt";\n')
    assert line.startswith("sandbox-agent: Executable innocent.txt: leaves ")


def test_a_hard_link_to_the_key_is_refused(pilot: Pilot) -> None:
    if pilot.home.stat().st_dev != pilot.jobs.stat().st_dev:
        pytest.skip("the job directory is on another filesystem than the home")
    os.link(pilot.home / "certs" / "jobagent.key", pilot.jobs / "linked.txt")
    line = submit_refused(pilot, 'Executable = "/bin/cat";\nInputFile = {"linked.txt"};\n')
    assert line.startswith("sandbox-agent: InputFile linked.txt: is a hard link to ")
    assert str(pilot.home / "certs" / "jobagent.key") in line


def test_the_users_own_files_are_still_staged(pilot: Pilot) -> None:
    jdl = pilot.jobs / "fine.jdl"
    jdl.write_text('Executable = "/bin/cat";\nArguments = "data.txt";\nInputFile = {"data.txt"};\n')
    result = pilot.run("submit", jdl)
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    assert any(b"the user's data" in data for data in pilot.stored())


def test_catalogue_add_of_the_key_is_refused(pilot: Pilot) -> None:
    for named in (pilot.home / "certs" / "jobagent.key", pilot.jobs / "innocent.txt"):
        if named.name == "innocent.txt":
            named.symlink_to(pilot.home / "certs" / "jobagent.key")
        result = pilot.run("catalogue", "add", named, "/local/x/stolen.key")
        assert result.returncode == 2  # type: ignore[attr-defined]
        assert "no job may read" in result.stderr  # type: ignore[attr-defined]
    assert pilot.run("catalogue", "ls", "--json").stdout.strip() == "[]"  # type: ignore[attr-defined]


def test_a_submit_to_a_broker_refuses_the_key_before_sending_anything(pilot: Pilot) -> None:
    issued = pilot.run("certs", "issue", "--role", "user", "--user", "alice")
    assert issued.returncode == 0, issued.stderr  # type: ignore[attr-defined]
    tokens = pilot.home / "tokens"
    ca = pilot.home / "certs" / "ca.pem"
    broker = ["--broker", "https://127.0.0.1:9", "--cert", tokens / "user-alice.pem",
              "--key", tokens / "user-alice.key", "--ca", ca]  # fmt: skip
    jdl = pilot.jobs / "steal.jdl"
    for secret in (pilot.home / "certs" / "jobagent.key", tokens / "user-alice.key"):
        jdl.write_text(f'Executable = "/bin/cat";\nInputFile = {{"{secret}"}};\n')
        result = pilot.run("submit", jdl, *broker)
        assert result.returncode == 2, result.stderr  # type: ignore[attr-defined]
        assert "no job may read" in result.stderr  # type: ignore[attr-defined]
    # the control: a file of the user's own gets past staging, to the (absent) broker
    jdl.write_text('Executable = "/bin/cat";\nInputFile = {"data.txt"};\n')
    result = pilot.run("submit", jdl, *broker)
    assert result.returncode == 3, result.stderr  # type: ignore[attr-defined]


def test_nothing_of_the_agents_home_is_staged(pilot: Pilot) -> None:
    """Beyond its authority: other users' token keys, the queue (every user's JDLs),
    other jobs' outputs. A relative name from a JDL kept inside the home is judged too."""
    issued = pilot.run("certs", "issue", "--role", "user", "--user", "bob")
    assert issued.returncode == 0, issued.stderr  # type: ignore[attr-defined]
    for target in (pilot.home / "tokens" / "user-bob.key", pilot.home / "queue" / "queue.sqlite3"):
        assert target.exists(), target
        jdl = f'Executable = "/bin/cat";\nInputFile = {{"{target}"}};\n'
        submit_refused(pilot, jdl, f"InputFile {target}", f"reaches {pilot.home}",
                       "no job may read")  # fmt: skip
    inside = pilot.home / "tokens" / "x.jdl"
    inside.write_text('Executable = "/bin/cat";\nInputFile = {"user-bob.key"};\n')
    result = pilot.run("submit", inside)
    assert result.returncode == 2  # type: ignore[attr-defined]
    assert "no job may read" in result.stderr  # type: ignore[attr-defined]


def test_the_submitters_environment_and_private_files_elsewhere_are_refused(pilot: Pilot) -> None:
    """/proc/self/environ is the submitter's environment (a WLCG BEARER_TOKEN with it);
    a private file outside the job's directory is no job's input, whatever list of
    secrets it is missing from (shadow's backups, ~/.git-credentials)."""
    submit_refused(pilot, 'Executable = "/bin/cat";\nInputFile = {"/proc/self/environ"};\n',
                   "InputFile /proc/self/environ", "a file of the kernel's (/proc)")  # fmt: skip
    private = pilot.base / "private.conf"
    private.write_text("password = hunter2\n")
    private.chmod(0o600)
    if pilot.home.stat().st_uid != 0:
        os.chown(private, NOBODY, NOBODY)
    submit_refused(pilot, f'Executable = "/bin/cat";\nInputFile = {{"{private}"}};\n',
                   f"InputFile {private}", "is not readable by others (mode 0600")  # fmt: skip
    assert not any(b"hunter2" in data for data in pilot.stored())
