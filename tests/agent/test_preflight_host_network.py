"""The pilot's preflight under network.mode = "host": what the job may reach of the
node's network is granted by the policy, so the pilot takes work and says what was
granted; a leak of anything else (here a secret variable let in) still stops it."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, cli_env, run_cli

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

POLICIES = {
    "host-network": 'extends = "default"\n[namespaces]\nnet = "off"\n[network]\nmode = "host"\n',
    "host-network-leaky": 'extends = "host-network"\n[process.environment]\n'
    'allow = { append = ["SANDBOX_AGENT_SELFTEST_SECRET"] }\n',
}


@pytest.fixture
def home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-pilot-net-"))
    base.chmod(0o711)  # as root the sandbox runs as uid 65534, which must reach the work area
    shutil.copytree(ROOT / "policies", base / "home" / "policies")
    for name, text in POLICIES.items():
        (base / "home" / "policies" / f"{name}.toml").write_text(text)
    yield base / "home"
    shutil.rmtree(base, ignore_errors=True)


def states(env: dict[str, str]) -> list[str]:
    return [job["state"] for job in json.loads(run_cli(env, "jobs", "--json").stdout)]


def test_under_host_network_the_preflight_grants_the_network_and_the_pilot_runs_a_job(
    home: Path,
) -> None:
    env = cli_env(home)
    assert run_cli(env, "submit", "samples/hello.jdl").returncode == 0
    ran = run_cli(env, "run", "--once", "--json", "--policy", "host-network")
    assert ran.returncode == 0, ran.stderr
    events = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [e["event"] for e in events][:3] == ["agent", "preflight", "matched"]
    preflight = events[1]
    assert preflight["leaked"] == []
    granted = preflight["granted"]
    assert any(
        line.startswith('tcp_connect: granted by network.mode = "host" (') for line in granted
    )
    assert any("tcp listener received" in line for line in granted)  # what the host saw
    assert all('network.mode = "host" (policies/host-network.toml:' in line for line in granted)
    assert [e["state"] for e in events if e["event"] == "finished"] == ["DONE"]
    assert states(env) == ["DONE"]
    # for a person: what was granted is said on the preflight's line, never hidden
    assert run_cli(env, "submit", "samples/hello.jdl").returncode == 0
    text = run_cli(env, "run", "--once", "--policy", "host-network")
    assert text.returncode == 0, text.stderr
    line = next(line for line in text.stdout.splitlines() if line.startswith("preflight: "))
    assert f"none got through; {len(granted)} granted by the policy: " in line, line


def test_under_host_network_a_credential_leak_still_stops_the_pilot(home: Path) -> None:
    env = cli_env(home)
    assert run_cli(env, "submit", "samples/hello.jdl").returncode == 0
    ran = run_cli(env, "run", "--once", "--policy", "host-network-leaky")
    assert ran.returncode == 3, ran.stderr
    assert ran.stderr.startswith("sandbox-agent: preflight: the sandbox leaked (env_self: ")
    assert len(ran.stderr.splitlines()) == 1
    assert "matched" not in ran.stdout
    assert states(env) == ["WAITING"]  # untouched
