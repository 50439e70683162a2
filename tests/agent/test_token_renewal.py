"""A pilot's jobagent token over its life, through the console script with a real
broker (`broker serve`) and jobs in the real sandbox: a short-lived token is renewed
at the broker between jobs and the pilot runs jobs past its first token's expiry; a
refused or impossible renewal leaves the pilot on its token, said once; when the
token's time left is why no job runs, the pilot's last line names the token.

Tokens live seconds here (`--token-margin 1` keeps one second of each back); nothing
asserts how long anything took, only what happened and in which order."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_support import SCRIPT, cli_env, run_cli
from token_support import aged

from sandbox_agent.agent.pilot import renewal_due
from sandbox_agent.broker.client import BrokerClient
from sandbox_agent.tokens import (
    Identity,
    Role,
    Token,
    TokenAuthority,
    files,
    fingerprint,
    identity_of,
    load_token,
    new_key,
)
from sandbox_agent.tokens.certificates import CLOCK_SKEW, ca_certificate, sign_certificate

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")


@dataclass
class Site:
    base: Path
    url: str

    @property
    def certs(self) -> Path:
        return self.base / "broker-home" / "certs"

    def alice(self) -> BrokerClient:
        tokens = self.base / "broker-home" / "tokens"
        return BrokerClient(self.url, tokens / "user-alice.pem", tokens / "user-alice.key",
                            self.certs / "ca.pem", attempts=1)  # fmt: skip

    def node_token(self, *, issued_ago: float, left: float) -> tuple[Path, Path, Token]:
        """A jobagent token of the site's authority for one node, issued ``issued_ago``
        seconds ago (its notBefore CLOCK_SKEW earlier, as the authority sets it), that
        expires ``left`` seconds from now (negative: expired)."""
        token = aged(TokenAuthority.load(self.certs), issued_ago=timedelta(seconds=issued_ago),
                     left=timedelta(seconds=left))  # fmt: skip
        cert, key_file = files.write_token(self.base / "node-token", "node-017", token)
        return cert, key_file, token

    def pilot(self, cert: Path, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
        ran = run_cli(cli_env(self.base / "node-home"), "run", "--json", "--lease", "30",
                      "--token-margin", "1", "--broker", self.url, "--cert", cert, "--key",
                      key, "--ca", self.certs / "ca.pem", *args)  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        return ran


@pytest.fixture
def start_site() -> Iterator[Callable[..., Site]]:
    """Start a broker with `broker serve` options of the test's; stopped after it."""
    started: list[tuple[subprocess.Popen[str], Path]] = []

    def start(*options: str) -> Site:
        base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-renew-"))
        base.chmod(0o711)  # the pilot's sandbox (uid 65534 as root) reaches its work area
        env = cli_env(base / "broker-home")
        for args in (("certs", "init"), ("certs", "issue", "--role", "user", "--user", "alice")):
            made = run_cli(env, *args)
            assert made.returncode == 0, made.stderr
        command = [str(SCRIPT), "broker", "serve", "--listen", "127.0.0.1:0", *options]
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        started.append((process, base))
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first.startswith("broker: https://127.0.0.1:"), first
        stderr = process.stderr  # read on, or a full pipe would stall it
        threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
        return Site(base, first.split()[1].replace("127.0.0.1", "localhost"))

    yield start
    for process, base in started:
        process.terminate()
        assert process.wait(timeout=10) == 0
        shutil.rmtree(base, ignore_errors=True)


def events(ran: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


# -- when a token is renewed ------------------------------------------------------------------


def test_a_token_is_due_for_renewal_once_half_its_lifetime_is_gone() -> None:
    issued = datetime(2030, 1, 1, tzinfo=UTC)
    ca_key, key = new_key(), new_key()
    ca = ca_certificate(common_name="test CA", key=ca_key, not_before=issued - CLOCK_SKEW,
                        not_after=issued + timedelta(days=1))  # fmt: skip
    certificate = sign_certificate(
        identity=Identity(Role.JOBAGENT), public_key=key.public_key(), issuer_key=ca_key,
        issuer_cert=ca, not_before=issued - CLOCK_SKEW, not_after=issued + timedelta(hours=10),
    )  # fmt: skip
    assert not renewal_due(certificate, issued + timedelta(hours=4, minutes=59))
    assert renewal_due(certificate, issued + timedelta(hours=5, minutes=1))
    assert renewal_due(certificate, issued + timedelta(hours=11))  # expired: due, and refused
    # when no job fits the time it leaves: once a tenth of it is gone
    assert not renewal_due(certificate, issued + timedelta(minutes=59), 0.9)
    assert renewal_due(certificate, issued + timedelta(minutes=61), 0.9)


# -- through the broker -------------------------------------------------------------------------


def test_a_short_lived_token_is_renewed_and_the_pilot_runs_jobs_past_its_expiry(
    start_site: Callable[..., Site],
) -> None:
    """The first token has 8 seconds left of 38 (due for renewal), too few for the
    jobs' TTL of 20: every job that runs, runs on a renewed token; the second ends
    after the first token expired (the two sleep 10 seconds after the renewal)."""
    site = start_site("--agent-token-lifetime", "120")
    cert, key, first = site.node_token(issued_ago=30, left=8)
    key_before = key.read_bytes()
    alice = site.alice()
    jobs = [alice.submit('Executable = "/bin/sleep";\nArguments = "5";\nTTL = 20;\n')
            for _ in range(2)]  # fmt: skip
    ran = site.pilot(cert, key, "--max-jobs", "2")
    seen = events(ran)
    renewed = [e for e in seen if e["event"] == "renewed"]
    assert renewed, ran.stdout
    assert renewed[0]["replaces"] == fingerprint(first.certificate)
    assert renewed[0]["written"] is True and renewed[0]["token"] == str(cert)
    assert not [e for e in seen if e["event"] == "renewal_failed"]
    finished = {e["job"]: e["state"] for e in seen if e["event"] == "finished"}
    assert finished == {jobs[0]: "DONE", jobs[1]: "DONE"}
    assert seen[-1]["reason"] == "ran 2 job(s), the --max-jobs given"
    # the last job ended after the first token had expired
    ended = [alice.status(job)["history"][-1] for job in jobs]
    assert all(h["state"] == "DONE" for h in ended)
    assert max(h["time"] for h in ended) > first.certificate.not_valid_after_utc.timestamp()
    # the token file holds the last renewal: same key (its file untouched), 0600, a pair
    now_held = load_token(cert, key)
    assert fingerprint(now_held.certificate) == renewed[-1]["fingerprint"]
    assert now_held.certificate.not_valid_after_utc > first.certificate.not_valid_after_utc
    origin = identity_of(now_held.certificate).origin
    assert origin is not None and origin.serial == first.certificate.serial_number
    assert stat.S_IMODE(cert.stat().st_mode) == 0o600
    assert key.read_bytes() == key_before
    assert sorted(p.name for p in cert.parent.iterdir()) == ["node-017.key", "node-017.pem"]


def test_a_token_too_short_for_the_waiting_job_is_renewed_before_the_pilot_gives_up(
    start_site: Callable[..., Site],
) -> None:
    """A token not yet half gone (a quarter is) whose time left is under the job's TTL:
    no job matches, so the pilot asks once for a fresh token and matches again."""
    site = start_site("--agent-token-lifetime", "120")
    cert, key, first = site.node_token(issued_ago=5, left=15)
    job = site.alice().submit('Executable = "/bin/true";\nTTL = 30;\n')
    seen = events(site.pilot(cert, key, "--max-jobs", "1"))
    assert [e["replaces"] for e in seen if e["event"] == "renewed"] == [
        fingerprint(first.certificate)
    ]
    assert [(e["job"], e["state"]) for e in seen if e["event"] == "finished"] == [(job, "DONE")]


def test_a_refused_renewal_is_said_once_and_the_no_work_line_names_the_token(
    start_site: Callable[..., Site],
) -> None:
    site = start_site("--renew-limit", "0")  # this site renews nothing
    cert, key, first = site.node_token(issued_ago=10, left=40)
    before = cert.read_bytes()
    job = site.alice().submit('Executable = "/bin/true";\nTTL = 600;\n')
    seen = events(site.pilot(cert, key))
    failed = [e for e in seen if e["event"] == "renewal_failed"]
    assert len(failed) == 1, seen
    assert failed[0]["final"] is True and failed[0]["token"] == str(cert)
    assert failed[0]["reason"] == "this site renews no jobagent token: give the node a new one"
    reason = seen[-1]["reason"]
    assert reason.startswith(f"the broker {site.url} has no job this slot can run in the time "
                             f"the jobagent token {cert} leaves (")  # fmt: skip
    expires = stamp(first.certificate.not_valid_after_utc)
    assert f"(CN=JobAgent, serial {first.certificate.serial_number:x}) expires at {expires}" in (
        reason
    )
    assert reason.endswith("the broker did not renew it (this site renews no jobagent token: "
                           "give the node a new one); give this pilot a new or longer-lived "
                           "jobagent token")  # fmt: skip
    assert "\n" not in reason
    assert site.alice().status(job)["job"]["state"] == "WAITING"
    assert cert.read_bytes() == before  # nothing written


def test_an_expired_token_is_not_renewed_and_the_pilot_takes_no_work(
    start_site: Callable[..., Site],
) -> None:
    """Expired 20 seconds ago: within the clock skew the pilot's own check allows, but
    the broker's handshake refuses it, for a renewal as for anything."""
    site = start_site()
    cert, key, first = site.node_token(issued_ago=3600, left=-20)
    job = site.alice().submit('Executable = "/bin/true";\n')
    seen = events(site.pilot(cert, key))
    failed = [e for e in seen if e["event"] == "renewal_failed"]
    assert len(failed) == 1 and failed[0]["final"] is True, seen
    assert "refused this certificate in the TLS handshake" in failed[0]["reason"]
    assert "certificate expired" in failed[0]["reason"]
    reason = seen[-1]["reason"]
    assert reason.startswith(f"no job can run in the time the jobagent token {cert} leaves (0 s)")
    assert f"expires at {stamp(first.certificate.not_valid_after_utc)}" in reason
    assert "the broker did not renew it" in reason and "certificate expired" in reason
    assert not [e for e in seen if e["event"] == "matched"]
    assert site.alice().status(job)["job"]["state"] == "WAITING"


# -- on the home's own queue ---------------------------------------------------------------------


def test_on_the_homes_queue_the_no_work_line_names_a_token_too_short_for_the_job(
    tmp_path: Path,
) -> None:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-renew-"))
    base.chmod(0o711)
    try:
        home = base / "home"
        env = cli_env(home)
        assert run_cli(env, "certs", "init").returncode == 0
        certs = home / "certs"
        authority = TokenAuthority.load(certs)
        key = new_key()
        issued = authority.issue(Identity(Role.JOBAGENT), key.public_key(),
                                 lifetime=timedelta(seconds=90))  # fmt: skip
        for name in ("jobagent.pem", "jobagent.key"):
            (certs / name).unlink()
        files.write_token(certs, "jobagent", Token(issued.certificate, issued.chain, key))
        jdl = base / "long.jdl"
        jdl.write_text('Executable = "/bin/true";\nTTL = 600;\n')
        submitted = run_cli(env, "submit", jdl)
        assert submitted.returncode == 0, submitted.stderr
        ran = run_cli(env, "run", "--json", "--token-margin", "1")
        assert ran.returncode == 0, ran.stderr
        reason = events(ran)[-1]["reason"]
        job = int(submitted.stdout)
        assert reason.startswith(f"1 waiting job(s) this slot cannot run: job {job}: it asks "
                                 "for 600 seconds of TTL; the slot offers ")  # fmt: skip
        assert (
            f"they could run, but not in the time the jobagent token {certs / 'jobagent.pem'}"
            in (reason)
        )
        assert f"expires at {stamp(issued.certificate.not_valid_after_utc)}" in reason
        assert "sandbox-agent certs issue --role jobagent --ttl SECONDS" in reason
        assert not [e for e in events(ran) if e["event"] in ("renewed", "renewal_failed")]
    finally:
        shutil.rmtree(base, ignore_errors=True)
