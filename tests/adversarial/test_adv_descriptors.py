"""Descriptors of the agent: the agent is started holding fd 9 on a root-only file with
a secret (as an agent holds its token or a socket); the payload must find nothing open
but 0-2. The control starts the probe the same way without the sandbox and reads it."""

from __future__ import annotations

import pytest
from adversary import CANARY_FD, PROFILES, attack, requirements, unsandboxed

pytestmark = requirements


@pytest.mark.parametrize("profile", PROFILES)
def test_inherited_descriptor_is_blocked(profile: str) -> None:
    report = attack(profile)
    report.assert_blocked("inherited_fds")
    assert f"fstat({CANARY_FD}): EBADF" in report.detail("inherited_fds")


@pytest.mark.parametrize("profile", PROFILES)
def test_control_without_a_sandbox_the_descriptor_is_read(profile: str) -> None:
    # CONTROL: the same start (the shell that opens fd 9, then exec), the probe instead
    # of the agent: it finds fd 9 and reads the secret through it, though the file is
    # root's and the probe runs as the sandbox's host uid.
    report = unsandboxed(profile)
    assert report.result("inherited_fds") == "LEAKED"
    assert f"fd {CANARY_FD} -> " in report.detail("inherited_fds")
    assert "the secret" in report.detail("inherited_fds")
