"""Real jobs need the network: through the real pilot, as root and as an unprivileged
pilot, the shipped production policy (egress) lets a job fetch its input from a test
host over HTTP, while the node's own services, a host the site denies and a host at the
metadata address stay out of reach.

Every destination is a test host the test makes (tests/agent/pilot_world.py), and the
whole test, pilot included, runs in a network namespace of its own with no route off
this machine: even if a defence failed, no packet could leave it."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_support import ROOT, SCRIPT, cli_env, run_cli, unprivileged_or_skip
from networld import needs
from pilot_support import FETCH, INPUT, REACH, job, pilot, record

pytestmark = pytest.mark.skipif(needs("bwrap") is not None, reason=str(needs("bwrap")))


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
