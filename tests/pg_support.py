"""A real PostgreSQL server for the tests that run the queue on it: a throwaway cluster
made with the installed server's initdb, listening on loopback only, stopped and removed
when its fixture ends. Each test gets a database of its own.

`make test` installs the server (Debian's postgresql package, by scripts/setup-host.sh);
without one the PostgreSQL tests skip and say so."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_counter = itertools.count(1)


def _bin() -> Path | None:
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    versions = [(int(p.parents[1].name), p) for p in found if p.parents[1].name.isdigit()]
    return max(versions)[1].parent if versions else None


def _as_owner(command: list[str], owner: str | None) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the postgres user."""
    return ["runuser", "-u", owner, "--", *command] if owner else command


def running_server() -> Iterator[str]:
    """The DSN of a running throwaway server's maintenance database (the body of a
    session fixture: the server stops when the generator is closed)."""
    binaries = _bin()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; "
                    "make test installs it)")  # fmt: skip
    owner = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        owner = "postgres"
    base = Path(tempfile.mkdtemp(prefix="sandbox-agent-pg-"))
    data = base / "data"
    if owner:
        shutil.chown(base, owner)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def run(*command: str) -> None:
        argv = _as_owner([str(binaries / command[0]), *command[1:]], owner)
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr.strip()[-500:]}")

    run("initdb", "-D", str(data), "-A", "trust", "-U", "sandbox", "--no-sync")
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
    run("pg_ctl", "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start")
    try:
        yield f"postgresql://sandbox@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_owner([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast",
                                  "-w", "stop"], owner), check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(server: str) -> Iterator[str]:
    """A new empty database on ``server`` for one test (a fixture's body), dropped after."""
    import psycopg

    name = f"queue_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
