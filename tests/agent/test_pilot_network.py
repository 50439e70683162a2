"""Real jobs need the network: through the real pilot, as root and as an unprivileged
pilot, the shipped production policy (egress) lets a job fetch its input from a test
host over HTTP, while the node's own services, a host the site denies and a host at the
metadata address stay out of reach.

Every destination is a test host the test makes (tests/agent/pilot_world.py), and the
whole test, pilot included, runs in a network namespace of its own with no route off
this machine: even if a defence failed, no packet could leave it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import ROOT, SCRIPT, cli_env, run_cli, unprivileged_or_skip
from networld import needs

WORLD = Path(__file__).with_name("pilot_world.py")
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


pytestmark = pytest.mark.skipif(needs("bwrap") is not None, reason=str(needs("bwrap")))


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


@pytest.mark.parametrize("who", ["root", "nobody"])
def test_a_job_fetches_its_input_and_never_reaches_the_node(
    world: list[str], home: Path, who: str
) -> None:
    home.mkdir()
    extra: dict[str, str] = {}
    program, runner = [str(SCRIPT)], [*world, str(SCRIPT)]
    nobody = None
    if who == "nobody":
        nobody = unprivileged_or_skip("pilot-network")
        program, extra = nobody.program, nobody.extra
        runner = [*world, *nobody.prefix, *nobody.program]
    try:
        env = cli_env(home, **extra)
        # the site adds what must stay closed to the shipped policy
        shutil.copytree(ROOT / "policies", home / "policies")
        (home / "policies" / "site.toml").write_text(
            'extends = "default"\n[network]\ndeny = ["10.77.2.0/24"]\n'
        )
        if nobody is not None:
            subprocess.run(["chown", "-R", "65534:65534", str(home)], check=True)

        fetch = run_cli(env, "submit", job(home, "fetch", FETCH), program=program)
        assert fetch.returncode == 0, fetch.stderr
        event = pilot(env, runner)  # the shipped production policy, "default"
        assert (event["state"], event["detail"]) == ("DONE", ""), event
        logs = run_cli(env, "logs", int(fetch.stdout), "--stream", "stdout", program=program)
        assert logs.stdout == f"input {hashlib.sha256(INPUT).hexdigest()}\n"
        network = record(env, int(fetch.stdout))["network"]
        assert (network["mode"], network["connections"], network["refused"]) == ("egress", 1, 0)
        assert network["unresolved"] == []

        reach = run_cli(env, "submit", job(home, "reach", REACH), program=program)
        assert reach.returncode == 0, reach.stderr
        event = pilot(env, runner, "--policy", "site")
        assert event["state"] == "ERROR_E", event  # it got nowhere it needed
        said = run_cli(env, "logs", int(reach.stdout), "--stream", "stdout", program=program)
        seen = dict(line.split(" ", 1) for line in said.stdout.splitlines())
        assert seen == {
            "node_loopback": "ConnectionRefusedError",  # the job's own, empty loopback
            "node": "ConnectionResetError",
            "denied": "ConnectionResetError",
            "metadata": "ConnectionResetError",
            "allowed": "answered",  # the network works; only those are closed
        }, said.stdout
        network = record(env, int(reach.stdout))["network"]
        assert (network["connections"], network["refused"]) == (1, 3)
        shown = run_cli(env, "audit", "show", int(reach.stdout)).stdout
        assert ("network: egress; 1 connection(s) through the agent's relay, 3 refused "
                "(10.77.1.1:7001: 10.77.1.1 is this node's own address; ") in shown  # fmt: skip
        assert network["refusals"] == [
            "10.77.1.1:7001: 10.77.1.1 is this node's own address",
            "10.77.2.2:8000: denied by network.deny 10.77.2.0/24",
            "169.254.169.254:8000: 169.254.169.254 is in 169.254.0.0/16, never reachable "
            "from a job",
        ]
    finally:
        if nobody is not None:
            nobody.remove()
