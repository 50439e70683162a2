"""The shipped policies and seccomp profile are clean by the project's own rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_agent.policy import load_policy
from sandbox_agent.policy.lint import lint
from sandbox_agent.seccomp.profile import SeccompProfile, required_denials

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


@pytest.mark.parametrize("name", ["base", "default", "strict", "gpu"])
def test_shipped_policy_has_no_lint_error(name: str) -> None:
    errors = [f.format() for f in lint(load_policy(name, [SHIPPED])) if f.severity == "error"]
    assert errors == []


def test_shipped_profile_denies_everything_required() -> None:
    profile = SeccompProfile.load(SHIPPED / "seccomp" / "default.json")
    assert profile.default.action == "SCMP_ACT_ERRNO" and profile.default.errno == 1
    missing = [d.describe() for d in required_denials() if not profile.enforces(d)]
    assert missing == []
    assert profile.missing_architectures() == []


def test_only_gpu_has_warnings_and_they_are_the_grants() -> None:
    assert lint(load_policy("default", [SHIPPED])) == []
    assert lint(load_policy("strict", [SHIPPED])) == []
    rules = {f.rule for f in lint(load_policy("gpu", [SHIPPED]))}
    assert rules == {"device"}
