"""The broker through the console script, as a site runs it: `broker serve` on a home
of its own, users submitting with their tokens, and a pilot on another home running the
job in the real sandbox with `run --broker`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import SCRIPT, assert_no_traceback, cli_env, run_cli, shell_script

CLI = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Site:
    base: Path
    url: str
    process: subprocess.Popen[str]
    log: list[str]

    @property
    def certs(self) -> Path:
        return self.base / "broker-home" / "certs"

    def token(self, name: str) -> list[str]:
        """The --broker options that present ``name``'s token, made in the broker's home
        (`certs init` puts the jobagent's in certs/, `certs issue` the users' in tokens/)."""
        where = (
            self.certs if (self.certs / f"{name}.pem").exists() else self.certs.parent / "tokens"
        )
        return ["--broker", self.url, "--cert", where / f"{name}.pem",
                "--key", where / f"{name}.key", "--ca", self.certs / "ca.pem"]  # fmt: skip


def cli_in(home: Path) -> CLI:
    env = cli_env(home)
    return lambda *args: run_cli(env, *args)


@pytest.fixture
def site() -> Iterator[Site]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-broker-"))
    base.chmod(0o711)  # the pilot's sandbox (uid 65534 as root) reaches its work area
    broker_home = base / "broker-home"
    cli = cli_in(broker_home)
    # init makes the authority, a jobagent token and the broker's (localhost, 127.0.0.1)
    for args in (("certs", "init"), ("certs", "issue", "--role", "user", "--user", "alice"),
                 ("certs", "issue", "--role", "user", "--user", "bob")):  # fmt: skip
        made = cli(*args)
        assert made.returncode == 0, made.stderr
    command = [str(SCRIPT), "broker", "serve", "--listen", "127.0.0.1:0"]
    process = subprocess.Popen(command, env=cli_env(broker_home), stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stderr is not None
    first = process.stderr.readline()
    assert first.startswith("broker: https://127.0.0.1:"), first
    url = first.split()[1].replace("127.0.0.1", "localhost")
    log: list[str] = []  # its request log, read as it comes: a full pipe would stall it
    reader = threading.Thread(target=lambda: log.extend(process.stderr or ()), daemon=True)
    reader.start()
    try:
        yield Site(base, url, process, log)
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0  # SIGTERM stops it cleanly
        reader.join(timeout=5)
        shutil.rmtree(base, ignore_errors=True)


def echo_jdl(site: Site) -> Path:
    jdl = site.base / "echo.jdl"
    script = shell_script(site.base, "echo.sh", "echo hello from the broker | tee greeting.txt")
    jdl.write_text(script + 'Output = {"greeting.txt"};\n')
    return jdl


def test_a_user_submits_to_the_broker_and_a_pilot_elsewhere_runs_it(site: Site) -> None:
    users = cli_in(site.base / "alice-home")
    submitted = users("submit", echo_jdl(site), *site.token("user-alice"))
    assert submitted.returncode == 0, submitted.stderr
    job = int(submitted.stdout)
    listed = users("jobs", "--json", *site.token("user-alice"))
    assert [j["id"] for j in json.loads(listed.stdout)] == [job]
    assert json.loads(users("jobs", "--json", *site.token("user-bob")).stdout) == []

    node = cli_in(site.base / "node-home")  # the worker node: its own home, no authority
    ran = node("run", "--json", "--max-jobs", "1", *site.token("jobagent"))
    assert ran.returncode == 0, ran.stderr
    events = [json.loads(line) for line in ran.stdout.splitlines()]
    finished = next(e for e in events if e["event"] == "finished")
    assert (finished["job"], finished["state"]) == (job, "DONE")
    assert finished["wrapper_states"] == ["STARTED", "RUNNING", "SAVING", "DONE"]

    shown = json.loads(users("status", job, "--json", *site.token("user-alice")).stdout)
    assert shown["state"] == "DONE"
    # the agent sent the logs and outputs with the job token; their owner fetches them
    out = users("logs", job, "--stream", "stdout", *site.token("user-alice"))
    assert (out.returncode, out.stdout) == (0, "hello from the broker\n"), out.stderr
    got = users("outputs", job, "--to", site.base / "got", *site.token("user-alice"))
    assert got.returncode == 0, got.stderr
    assert (site.base / "got" / "greeting.txt").read_text() == "hello from the broker\n"
    other = users("logs", job, *site.token("user-bob"))
    assert (other.returncode, other.stderr) == (2, f"sandbox-agent: job {job} is not yours\n")
    # the agent signed the attempt's audit record and sent it; its owner checks and reads it
    shown_audit = users("audit", "show", job, *site.token("user-alice"))
    assert shown_audit.returncode == 0, shown_audit.stderr
    assert shown_audit.stdout.startswith(f"job {job}.0 of alice: DONE exit 0\n")
    assert "(valid)" in shown_audit.stdout.splitlines()[1]
    theirs_audit = users("audit", "show", job, *site.token("user-bob"))
    assert theirs_audit.returncode == 2 and "is not yours" in theirs_audit.stderr
    assert [h["state"] for h in shown["history"]] == [
        "WAITING", "ASSIGNED", "STARTED", "RUNNING", "SAVING", "DONE"]  # fmt: skip
    theirs = users("status", job, *site.token("user-bob"))
    assert (theirs.returncode, theirs.stderr) == (2, f"sandbox-agent: job {job} is not yours\n")
    logged = [json.loads(line) for line in site.log if line.startswith("{")]
    token = next(line for line in logged if line.get("route") == "job_token")
    assert (token["role"], token["status"]) == ("jobagent", 200)


def test_a_user_token_cannot_run_a_pilot(site: Site) -> None:
    node = cli_in(site.base / "node-home")
    ran = node("run", "--once", *site.token("user-alice"))
    assert ran.returncode == 3
    assert "not a usable jobagent token for the broker" in ran.stderr
    assert "a jobagent token is needed" in ran.stderr and len(ran.stderr.splitlines()) == 1


def test_a_jobagent_token_cannot_submit(site: Site) -> None:
    users = cli_in(site.base / "alice-home")
    jdl = site.base / "true.jdl"
    jdl.write_text('Executable = "/bin/true";\n')  # nothing to send first: submit itself
    submitted = users("submit", jdl, *site.token("jobagent"))
    assert submitted.returncode == 2
    assert submitted.stderr.startswith("sandbox-agent: a jobagent token may not call submit")


def test_local_files_go_to_the_broker_and_the_pilot_fetches_them_with_the_job_token(
    site: Site,
) -> None:
    """The production sample: its steering script, validation script and two inputs
    are on the user's machine. Submit sends them; the pilot on another home fetches
    them with the job token and runs them in the sandbox."""
    users = cli_in(site.base / "alice-home")
    submitted = users("submit", "samples/production/production.jdl", *site.token("user-alice"))
    assert submitted.returncode == 0, submitted.stderr
    job = int(submitted.stdout)
    shown = json.loads(users("status", job, "--json", *site.token("user-alice")).stdout)
    digest = hashlib.sha256(Path("samples/production/generator.ini").read_bytes()).hexdigest()
    assert f'"LF:/local/alice/{digest[:16]}/generator.ini"' in shown["jdl"]
    sent = [json.loads(line) for line in site.log if '"route":"put_input"' in line]
    assert [(line["status"], line["user"]) for line in sent] == [(200, "alice")] * 4

    node_home = site.base / "node-home"
    node_home.mkdir()
    shutil.copyfile("samples/slot.toml", node_home / "slot.toml")  # the job's Requirements
    ran = cli_in(node_home)("run", "--json", "--max-jobs", "1", *site.token("jobagent"))
    assert ran.returncode == 0, ran.stderr
    finished = next(e for e in map(json.loads, ran.stdout.splitlines())
                    if e["event"] == "finished")  # fmt: skip
    assert (finished["job"], finished["state"]) == (job, "DONE"), finished
    fetched = [json.loads(line) for line in site.log if '"route":"get_input"' in line]
    assert [(line["status"], line["role"], line["job"]) for line in fetched] == [
        (200, "job", f"{job}.0")] * 4  # fmt: skip
    log = users("outputs", job, "--to", site.base / "got", *site.token("user-alice"))
    assert log.returncode == 0, log.stderr
    with zipfile.ZipFile(site.base / "got" / "log_archive.zip") as archive:
        assert archive.read("sim.log").startswith(b"generator: ")  # it read generator.ini


def test_an_input_the_broker_cannot_give_ends_the_job_error_ib_not_the_pilot(
    site: Site,
) -> None:
    users = cli_in(site.base / "alice-home")
    submitted = users("submit", "samples/production/production.jdl", *site.token("user-alice"))
    assert submitted.returncode == 0, submitted.stderr
    job = int(submitted.stdout)
    digest = hashlib.sha256(Path("samples/production/config.json").read_bytes()).hexdigest()
    (site.base / "broker-home" / "catalogue" / "objects" / digest).write_bytes(b"{}")
    node_home = site.base / "node-home"
    node_home.mkdir()
    shutil.copyfile("samples/slot.toml", node_home / "slot.toml")
    ran = cli_in(node_home)("run", "--json", "--max-jobs", "1", *site.token("jobagent"))
    assert ran.returncode == 0, ran.stderr  # the job's fault, not the node's
    finished = next(e for e in map(json.loads, ran.stdout.splitlines())
                    if e["event"] == "finished")  # fmt: skip
    assert (finished["job"], finished["state"]) == (job, "ERROR_IB")
    assert "config.json" in finished["detail"] and "does not match" in finished["detail"]


def test_a_broker_that_is_not_there_is_one_line_and_exit_3(site: Site) -> None:
    users = cli_in(site.base / "alice-home")
    options = site.token("user-alice")
    options[1] = "https://localhost:1"
    listed = users("jobs", *options)
    assert listed.returncode == 3
    assert "cannot be reached" in listed.stderr and len(listed.stderr.splitlines()) == 1


def test_a_kill_at_the_broker_is_seen_by_its_owner(site: Site) -> None:
    users = cli_in(site.base / "alice-home")
    job = int(users("submit", echo_jdl(site), *site.token("user-alice")).stdout)
    killed = users("kill", job, "--reason", "changed my mind", *site.token("user-alice"))
    assert (killed.returncode, killed.stdout) == (0, f"job {job}: KILLED\n")
    shown = json.loads(users("status", job, "--json", *site.token("user-alice")).stdout)
    assert shown["state"] == "KILLED"
    assert "changed my mind" in shown["history"][-1]["detail"]


def test_broker_options_without_a_broker_or_with_a_readable_key_are_refused(
    site: Site, tmp_path: Path
) -> None:
    users = cli_in(site.base / "alice-home")
    alone = users("jobs", "--cert", site.token("user-alice")[3])
    assert (alone.returncode, alone.stderr) == (2, "sandbox-agent: --cert go with --broker URL\n")
    loose = tmp_path / "alice.key"
    shutil.copyfile(site.token("user-alice")[5], loose)
    loose.chmod(0o644)
    options = site.token("user-alice")
    options[options.index("--key") + 1] = loose
    refused = users("jobs", *options)
    assert refused.returncode == 2 and "chmod 600" in refused.stderr


def test_serve_without_a_broker_token_says_how_to_make_one(tmp_path: Path) -> None:
    cli = cli_in(tmp_path / "home")
    assert cli("certs", "init").returncode == 0
    (tmp_path / "home" / "certs" / "broker.pem").unlink()  # a site that removed it
    served = cli("broker", "serve", "--listen", "127.0.0.1:0")
    assert served.returncode == 2
    assert "no broker token" in served.stderr and "--role broker" in served.stderr
    assert_no_traceback(served)
