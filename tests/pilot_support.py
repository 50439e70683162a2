"""The pilot's network tests' world and jobs, shared by bwrap's (tests/agent) and the
engines' (tests/engines): the site in a box (tests/agent/pilot_world.py), the jobs that
fetch their input from an allowed test host and try every place no job may reach, and
the pilot run to an empty queue."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import run_cli

WORLD = Path(__file__).with_name("agent") / "pilot_world.py"
INPUT = bytes(range(256)) * 8192  # 2 MiB, the job's input on every test host
FETCH = """#!/bin/sh
exec /usr/bin/python3 - <<'EOF'
import hashlib, urllib.request
data = urllib.request.urlopen("http://10.77.1.2:8000/input.dat", timeout=20).read()
open("input.dat", "wb").write(data)
print("input", hashlib.sha256(data).hexdigest())
EOF
"""
# A job that needs what no job may have: it fails, and says what each try met.
REACH = """#!/bin/sh
exec /usr/bin/python3 - <<'EOF'
import socket, sys
got_through = False
for name, host, port in [("node_loopback", "127.0.0.1", 7001), ("node", "10.77.1.1", 7001),
                         ("denied", "10.77.2.2", 8000), ("metadata", "169.254.169.254", 8000),
                         ("allowed", "10.77.1.2", 8000)]:
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"GET /input.dat HTTP/1.0\\r\\n\\r\\n")
            answer = s.recv(64)
        print(name, "answered" if answer else "closed")
        got_through |= bool(answer) and name != "allowed"
    except OSError as e:
        print(name, type(e).__name__)
sys.exit(0 if got_through else 1)
EOF
"""


@pytest.fixture
def home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-network-"))
    base.chmod(0o711)  # the sandbox's uid 65534 reaches the work area below
    yield base / "home"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[list[str]]:
    """The site in a box; yields the prefix that runs a command on its node."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "input.dat").write_bytes(INPUT)
    process = subprocess.Popen(
        ["unshare", "-n", sys.executable, "-I", str(WORLD), str(served)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        yield ["nsenter", f"--net=/proc/{process.pid}/ns/net"]
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def job(home: Path, name: str, script: str) -> Path:
    directory = home.parent / f"jdl-{name}"
    directory.mkdir()
    (directory / "job.sh").write_text(script)
    (directory / "job.sh").chmod(0o755)
    (directory / f"{name}.jdl").write_text('Executable = "job.sh";\nOutput = {"input.dat"};\n')
    return directory / f"{name}.jdl"


def record(env: dict[str, str], number: int) -> dict[str, Any]:
    shown = run_cli(env, "audit", "show", number, "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)  # type: ignore[no-any-return]


def pilot(env: dict[str, str], program: list[str], *args: str) -> dict[str, Any]:
    """The pilot run to an empty queue; its one finished job's event."""
    ran = run_cli(env, "run", "--json", "--lease", "60", *args, program=program)
    assert ran.returncode == 0, ran.stderr
    done = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    finished = [event for event in done if event["event"] == "finished"]
    assert len(finished) == 1, ran.stdout
    return finished[0]
