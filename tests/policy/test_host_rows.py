"""What explain says about this host: enforced, runs without it, or fails closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_agent import hostfacts
from sandbox_agent.hostfacts import Fact
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.policy.explain import explain_json, explain_text, host_rows

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
PRESENT = {key: Fact(True, "here") for key in hostfacts.facts()}


def verdicts(name: str, found: dict[str, Fact]) -> dict[str, str]:
    effective = compose(load_policy(name, [SHIPPED]))
    return {row["key"]: row["verdict"] for row in host_rows(effective, found)}


def test_everything_present_is_enforced() -> None:
    assert set(verdicts("default", PRESENT).values()) == {"available"}


@pytest.mark.parametrize(
    ("policy", "missing", "verdict"),
    [
        ("default", "process.landlock", "runs without it"),  # optional in default
        ("strict", "process.landlock", "fails closed"),  # required in strict
        ("default", "namespaces.cgroup", "runs without it"),
        ("default", "namespaces.user", "fails closed"),
        ("default", "process.seccomp", "fails closed"),
        ("default", "limits.memory", "fails closed"),
    ],
)
def test_missing_facts(policy: str, missing: str, verdict: str) -> None:
    found = {**PRESENT, missing: Fact(False, "not on this host")}
    assert verdicts(policy, found)[missing] == verdict


def test_monitored_limits_do_not_need_the_kernel(tmp_path: Path) -> None:
    for name in ("base.toml",):
        (tmp_path / name).write_text((SHIPPED / name).read_text())
    (tmp_path / "site.toml").write_text(
        'extends = "base"\n[limits]\npids = { default = 10, max = 10, enforcement = "monitored" }\n'
    )
    effective = compose(load_policy("site", [tmp_path]))
    found = {**PRESENT, "limits.pids": Fact(False, "no cgroup")}
    rows = {r["key"]: r for r in host_rows(effective, found)}
    assert rows["limits.pids"]["verdict"] == "not used"


def test_explain_shows_the_host_section_and_json() -> None:
    effective = compose(load_policy("default", [SHIPPED]))
    found = {**PRESENT, "process.landlock": Fact(False, "landlock is disabled")}
    text = explain_text(effective, None, found)
    assert "[this host]" in text
    assert "process.landlock         runs without it  landlock is disabled" in text
    report = explain_json(effective, None, found)
    landlock = next(r for r in report["host"] if r["key"] == "process.landlock")
    assert landlock == {"key": "process.landlock", "needed": "optional", "available": False,
                        "detail": "landlock is disabled", "verdict": "runs without it"}  # fmt: skip


def test_real_host_facts_are_read() -> None:
    found = hostfacts.facts()
    assert set(found) >= {"namespaces.user", "process.landlock", "process.seccomp"}
    # every Linux kernel CI runs on filters system calls; the probe must say so
    assert found["process.seccomp"].available
    assert all(isinstance(f.detail, str) and f.detail for f in found.values())
