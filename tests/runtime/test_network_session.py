"""The session's side of egress, with real bwrap: the payload waits until the agent has
plumbed its network, and never runs when that fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import egress, session
from sandbox_agent.runtime.launch import SANDBOX_HOST_UID
from sandbox_agent.runtime.render import render

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None or os.geteuid() != 0 or egress.egressns.missing() != [],
    reason="needs root, bwrap, ip and nft",
)


@pytest.fixture
def base() -> Iterator[Path]:
    made = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-egress-"))
    made.chmod(0o711)  # the sandbox's uid 65534 reaches the work directory below
    yield made
    shutil.rmtree(made, ignore_errors=True)


def run(tmp_path: Path, script: str) -> tuple[Path, session.SessionResult]:
    work = tmp_path / "work"
    work.mkdir()
    os.chown(work, SANDBOX_HOST_UID, SANDBOX_HOST_UID)
    effective = compose(load_policy("default", [ROOT / "policies"]))
    plan = render("bwrap", effective, ["/bin/sh", "-c", script], workdir=str(work), environ={})
    assert plan.egress is not None
    return work, session.run(plan, workdir=work)


def test_the_payload_starts_with_its_network_plumbed(base: Path) -> None:
    # the route and the rules are there before the payload's first instruction
    work, result = run(base, "cat /proc/net/route > /workdir/route")
    assert result.outcome.returncode == 0
    routes = (work / "route").read_text().splitlines()[1:]
    assert any(line.split()[0] == "lo" and line.split()[1] == "00000000" for line in routes)
    assert result.egress is not None and result.egress.refused == 0


def test_a_failed_plumbing_kills_the_sandbox_before_its_payload(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> egress.Egress:
        raise egress.EgressError("egress: the namespace helper failed (injected)")

    monkeypatch.setattr(session, "open_egress", refuse)
    with pytest.raises(egress.EgressError, match="injected"):
        run(base, "touch /workdir/ran")
    assert not (base / "work" / "ran").exists()  # the payload never ran


def test_the_payloads_first_connection_already_meets_the_relay(base: Path) -> None:
    # the rules, not only the route, are there before the payload's first instruction:
    # its first connect, to the node's own address, is refused by the relay
    node = next((n for n in egress.node_addresses()
                 if n.version == 4 and not n.network_address.is_loopback), None)  # fmt: skip
    if node is None:
        pytest.skip("this node has no IPv4 address besides its loopback")
    address = node.network_address
    script = (f"exec /usr/bin/python3 -c 'import socket; socket.create_connection("
              f'("{address}", 9), timeout=5).recv(1)\'')  # fmt: skip
    _, result = run(base, script)
    assert result.outcome.returncode != 0  # reset: the node is not reached
    assert result.egress is not None
    assert result.egress.refusals == [f"{address}:9: {address} is this node's own address"]


def test_a_reused_pid_is_not_plumbed() -> None:
    # bwrap reports the job's namespace; a pid that now stands for another is refused
    holder = subprocess.Popen(["unshare", "-n", "sleep", "30"])
    try:
        for _ in range(200):
            if os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.01)
        rules = egress.Rules(allow=[])
        with pytest.raises(egress.EgressError, match="no longer in the job's network namespace"):
            egress.open_egress(holder.pid, rules, user=False, bring_up=True, netns=1)
        inode = os.stat(f"/proc/{holder.pid}/ns/net").st_ino
        egress.open_egress(holder.pid, rules, user=False, bring_up=True, netns=inode).close()
    finally:
        holder.kill()
        holder.wait()

