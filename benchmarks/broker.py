"""Matches per second at the broker, with 8 agents at once, against the queue alone.

    .venv/bin/python benchmarks/broker.py [--agents N] [--jobs N]

For each store (SQLite; PostgreSQL too when a server is installed: a throwaway one is
started, as the tests do), starts `sandbox-agent broker serve` on a fresh home, queues
the jobs, and starts N agent processes that each match jobs over HTTPS with mutual TLS
(a kept connection each, as a pilot's client keeps one) until none is left; the rate is
the jobs over the time from the agents' common start to the last agent's end. The
baseline, in the same run: the same number of matches straight on that store, one
process, no HTTP or TLS. Target (issue 7): 200 matches/s or more with 8 agents.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sandbox_agent.broker.client import BrokerClient
from sandbox_agent.queue import open_queue

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pg_support import fresh_database, running_server

SCRIPT = Path(sys.executable).parent / "sandbox-agent"
SLOT = {"CPUCores": 1, "Memory": 2048, "Disk": 1000, "TTL": 3600}


def agent(url: str, certs: str, number: int, start: float, counts: list[int]) -> None:
    while time.time() < start:  # all agents begin together
        time.sleep(0.001)
    home = Path(certs)
    client = BrokerClient(url, home / "jobagent.pem", home / "jobagent.key", home / "ca.pem")
    matched = 0
    while client.match(f"bench-{number}", SLOT, 600) is not None:
        matched += 1
    counts[number] = matched
    client.close()


def queue(where: Path | str, jobs: int) -> None:
    with open_queue(where) as store:
        for _ in range(jobs):
            store.submit('Executable = "/bin/true";\n', owner="bench")


def store_alone(where: Path | str, jobs: int) -> float:
    """Matches per second straight on the store: the baseline."""
    queue(where, jobs)
    with open_queue(where) as store:
        started = time.perf_counter()
        while store.match("baseline", lambda _job: True, 600) is not None:
            pass
        return jobs / (time.perf_counter() - started)


def through_broker(base: Path, db: str | None, agents: int, jobs: int) -> tuple[float, list[int]]:
    """Matches per second through a broker, ``agents`` processes at once."""
    home = base / "home"
    env = {"SANDBOX_AGENT_HOME": str(home), "PATH": "/usr/bin:/bin"}
    subprocess.run([str(SCRIPT), "certs", "init"], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    queue(db or home / "queue", jobs)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(SCRIPT), "broker", "serve", "--listen", f"127.0.0.1:{port}"]
    server = subprocess.Popen(command + (["--db", db] if db else []), env=env,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        counts = multiprocessing.Manager().list([0] * agents)
        start = time.time() + 1.0
        workers = [multiprocessing.Process(target=agent, args=(
            f"https://localhost:{port}", str(home / "certs"), n, start, counts))
            for n in range(agents)]  # fmt: skip
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.time() - start
    finally:
        server.terminate()
        server.wait()
    if sum(counts) != jobs:
        raise SystemExit(f"matched {sum(counts)} of {jobs} jobs")
    return jobs / elapsed, sorted(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2000)
    options = parser.parse_args()
    print(f"{options.jobs} jobs, {options.agents} agents over HTTPS with mutual TLS")
    with contextlib.ExitStack() as stack:
        base = Path(tempfile.mkdtemp(prefix="sandbox-agent-bench-"))
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        stores: list[tuple[str, str | None, str | None]] = [("SQLite", None, None)]
        try:
            server = stack.enter_context(contextlib.contextmanager(running_server)())
        except BaseException as exc:
            print(f"  (PostgreSQL skipped: {exc})")
        else:
            stores.append(("PostgreSQL", server, server))
        for number, (name, server_dsn, _) in enumerate(stores):
            where: Path | str = base / f"baseline-{number}"
            db = None
            if server_dsn is not None:
                where = stack.enter_context(contextlib.contextmanager(fresh_database)(server_dsn))
                db = stack.enter_context(contextlib.contextmanager(fresh_database)(server_dsn))
            baseline = store_alone(where, options.jobs)
            rate, counts = through_broker(base / f"broker-{number}", db, options.agents,
                                          options.jobs)  # fmt: skip
            print(f"  {name:<10} broker {rate:6.0f} matches/s (each agent: {counts})")
            print(f"  {name:<10} alone  {baseline:6.0f} matches/s (one process, no HTTP)"
                  f"  ratio {rate / baseline:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
