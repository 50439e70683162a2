"""Many agents, one broker: 8 agents take 1,000 tiny jobs through the protocol a pilot
speaks (match, job token, state reports), and the broker is restarted once in the
middle. Every job must end DONE, run exactly once, none lost: on SQLite, and on a real
PostgreSQL server.

The agents here are threads running the real client over real TLS against the real
`broker serve` process; they do what a pilot does with a job except start a sandbox
(the pilot itself over a broker is tested in test_broker_cli.py)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pg_support
import pytest
from cli_support import SCRIPT, cli_env, run_cli
from cryptography.hazmat.primitives import serialization

from sandbox_agent.broker.client import BrokerClient, BrokerError
from sandbox_agent.queue import open_queue
from sandbox_agent.tokens.request import new_job_request
from sandbox_agent.tokens.roles import JobScope

AGENTS = 8
JOBS = 1000
LEASE = 15  # seconds: longer than a restart; a lease whose match answer was lost in it
# comes back to the queue this long after
SLOT = {"CPUCores": 1, "Memory": 2048, "Disk": 1000, "TTL": 3600}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BrokerProcess:
    """`sandbox-agent broker serve` on a fixed port, so that it can be restarted."""

    def __init__(self, home: Path, port: int, db: str | None) -> None:
        self.home = home
        self.port = port
        self.db = db
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [str(SCRIPT), "broker", "serve", "--listen", f"127.0.0.1:{self.port}"]
        command += ["--db", self.db] if self.db else []
        self.process = subprocess.Popen(command, env=cli_env(self.home),
                                        stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the broker did not start listening")

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        assert self.process.wait(timeout=20) == 0


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    yield from pg_support.running_server()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The broker's queue: its home's SQLite file (None), or a PostgreSQL database."""
    if request.param == "sqlite":
        yield None
    else:
        yield from pg_support.fresh_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def broker_home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="sandbox-agent-many-"))
    home = base / "home"
    assert run_cli(cli_env(home), "certs", "init").returncode == 0
    made = run_cli(cli_env(home), "certs", "issue", "--role", "user", "--user", "alice")
    assert made.returncode == 0, made.stderr
    yield home
    shutil.rmtree(base, ignore_errors=True)


def test_eight_agents_run_a_thousand_jobs_exactly_once_across_a_broker_restart(
    broker_home: Path, db: str | None
) -> None:
    certs, tokens = broker_home / "certs", broker_home / "tokens"
    broker = BrokerProcess(broker_home, free_port(), db)
    broker.start()
    url = f"https://localhost:{broker.port}"
    alice = BrokerClient(url, tokens / "user-alice.pem", tokens / "user-alice.key",
                         certs / "ca.pem")  # fmt: skip
    submitted = [alice.submit('Executable = "/bin/true";\n') for _ in range(JOBS)]
    alice.close()

    ran: list[tuple[int, int]] = []  # (job, resubmission) each time an agent "ran" one
    errors: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def agent(number: int) -> None:
        name = f"agent-{number}"
        client = BrokerClient(url, certs / "jobagent.pem", certs / "jobagent.key",
                              certs / "ca.pem", attempts=100, backoff=0.05,
                              max_backoff=0.2)  # fmt: skip
        idle = 0
        try:
            while not done.is_set():
                try:
                    job = client.match(name, SLOT, LEASE)
                    if job is None:
                        idle += 1
                        if idle > 40:  # nothing for a while: the others have finished
                            return
                        time.sleep(0.1)
                        continue
                    idle = 0
                    job_id, resub = int(job["id"]), int(job["resubmission"])
                    _key, request = new_job_request(JobScope(job_id, resub, "alice"))
                    csr = request.public_bytes(serialization.Encoding.PEM).decode()
                    client.job_token(job_id, name, resub, csr)
                    client.state(job_id, resub, "STARTED", agent=name)
                    with lock:
                        ran.append((job_id, resub))  # the payload would run here
                    for state in ("RUNNING", "SAVING", "DONE"):
                        client.state(job_id, resub, state, agent=name,
                                     exit_code=0 if state == "DONE" else None)  # fmt: skip
                except BrokerError as exc:
                    # none expected: a retried report or match (its answer lost in the
                    # restart) is answered as the first was
                    with lock:
                        errors.append(f"{exc.status}: {exc}")
                    if exc.status is None:
                        return
        finally:
            client.close()

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(AGENTS)]
    for thread in threads:
        thread.start()
    while True:  # restart the broker once a third of the jobs has run
        with lock:
            if len(ran) >= JOBS // 3:
                break
        time.sleep(0.05)
    broker.stop()
    broker.start()
    deadline = time.monotonic() + 300
    with open_queue(db or broker_home / "queue") as store:
        while time.monotonic() < deadline:
            if all(job.state.value == "DONE" for job in store.jobs()):
                break
            time.sleep(0.5)
        done.set()
        for thread in threads:
            thread.join(timeout=60)
        final = Counter(job.state.value for job in store.jobs())
    broker.stop()
    assert errors == []
    assert final == {"DONE": JOBS}  # none lost, and no submit queued twice
    runs = Counter(job for job, _resub in ran)
    assert set(runs) == set(submitted)
    assert [job for job, count in runs.items() if count > 1] == []  # none run twice
