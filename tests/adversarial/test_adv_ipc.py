"""Shared memory of host processes: a SysV segment (mode 0666, holding a secret) and a
file in the host's /dev/shm. The controls share the host's IPC namespace, then drop
the sandbox."""

from __future__ import annotations

import pytest
from adversary import ATTACK_PROFILES, PROFILES, attack, names_of, requirements, unsandboxed

pytestmark = requirements

NAMES = names_of("ipc")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("profile", ATTACK_PROFILES)
def test_attack_is_blocked(profile: str, name: str) -> None:
    attack(profile).assert_blocked(name)


@pytest.mark.parametrize("profile", PROFILES)
def test_control_in_the_host_ipc_namespace(profile: str) -> None:
    # CONTROL: the host's IPC namespace: the segment is found and its secret read.
    report = attack(profile, "leaky-ipc", NAMES)
    assert report.result("sysv_shm") == "LEAKED"
    assert "the secret" in report.detail("sysv_shm")
    assert report.result("host_shm") == "blocked"  # /dev/shm is still the sandbox's own


@pytest.mark.parametrize("profile", PROFILES)
def test_control_without_a_sandbox_shared_memory_is_read(profile: str) -> None:
    report = unsandboxed(profile)
    assert report.verdicts(NAMES) == dict.fromkeys(NAMES, "LEAKED")
