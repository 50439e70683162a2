"""The session's side of egress, with real bwrap: the payload waits until the agent has
plumbed its network, and never runs when that fails."""

from __future__ import annotations

import os
import shutil
import tempfile
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
