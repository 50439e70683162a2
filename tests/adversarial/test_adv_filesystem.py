"""Writes outside the work directory: the root, /etc, the host's /usr, /dev, kernel
settings in /proc/sys and /sys, and the cgroup tree (to leave the job's cgroup). The
control binds a host directory writable and the same probe writes there."""

from __future__ import annotations

import pytest
from adversary import ATTACK_PROFILES, PROFILES, attack, names_of, requirements, unsandboxed

pytestmark = requirements

NAMES = names_of("filesystem")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("profile", ATTACK_PROFILES)
def test_attack_is_blocked(profile: str, name: str) -> None:
    attack(profile).assert_blocked(name)


@pytest.mark.parametrize("profile", PROFILES)
def test_the_host_userland_is_read_only_not_missing(profile: str) -> None:
    # /usr and /etc are there and refuse the write (EROFS), rather than being absent
    detail = attack(profile).detail("write_root_fs")
    assert "/usr/probe-planted-" in detail
    assert detail.count("EROFS") >= 4, detail


@pytest.mark.parametrize("profile", PROFILES)
def test_control_a_writable_bind_is_written(profile: str) -> None:
    # CONTROL: a host directory bound writable: the probe's write lands there, while
    # the rest of the filesystem stays read-only.
    report = attack(profile, "leaky-filesystem", NAMES)
    assert report.result("write_extra") == "LEAKED", report.detail("write_extra")
    assert report.result("write_root_fs") == "blocked"


@pytest.mark.parametrize("profile", PROFILES)
def test_control_without_a_sandbox_runtime_binaries_are_closed_to_the_uid(profile: str) -> None:
    # overwrite_runtime has no leaking control: on the host too, the sandbox's host uid
    # cannot open root's binaries for writing. What the control shows is that the probe
    # reached them (EACCES or ETXTBSY, not ENOENT).
    report = unsandboxed(profile)
    assert report.result("overwrite_runtime") in ("blocked", "LEAKED")
    assert "ENOENT" not in report.detail("overwrite_runtime")
