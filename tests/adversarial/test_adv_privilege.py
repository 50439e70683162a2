"""Privilege from inside: capabilities kept, no_new_privs and the filter missing,
setuid-root and file-capability binaries, raw sockets, mount, chown to root, device
nodes. The controls keep a capability, then run the probe without a sandbox."""

from __future__ import annotations

import os

import pytest
from adversary import ATTACK_PROFILES, PROFILES, attack, names_of, requirements, unsandboxed

pytestmark = requirements

NAMES = names_of("privilege")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("profile", ATTACK_PROFILES)
def test_attack_is_blocked(profile: str, name: str) -> None:
    attack(profile).assert_blocked(name)


@pytest.mark.parametrize("profile", PROFILES)
def test_setuid_binaries_were_really_tried(profile: str) -> None:
    # "blocked" must mean setuid binaries ran and gained nothing, on nosuid mounts.
    detail = attack(profile).detail("setuid_exec")
    assert "secure exec: []" in detail
    assert "no privilege: 0;" not in detail
    assert "nosuid" in detail


@pytest.mark.parametrize("profile", PROFILES)
def test_control_a_kept_capability_is_seen(profile: str) -> None:
    # CONTROL: CAP_NET_RAW kept. The probe sees it. It still opens no raw socket: bwrap's
    # --disable-userns puts the payload in a nested user namespace that owns no network
    # namespace, so the capability is worth nothing there (a layer under cap-drop).
    report = attack(profile, "leaky-privilege", NAMES)
    assert report.result("capabilities") == "LEAKED"
    assert report.result("raw_socket") == "blocked"


@pytest.mark.parametrize("profile", PROFILES)
def test_control_without_a_sandbox_setuid_raises_privilege(profile: str) -> None:
    # CONTROL: on the host, as the sandbox's host uid, su and passwd run as secure
    # (privilege-raising) execs, nothing sets no_new_privs or a filter, and the bounding
    # set is full.
    report = unsandboxed(profile)
    leaked = ["setuid_exec", "no_new_privs", "capabilities"]
    assert report.verdicts(leaked) == dict.fromkeys(leaked, "LEAKED")


def test_control_host_root_opens_a_raw_socket() -> None:
    if os.geteuid() != 0:
        pytest.skip("a raw socket on the host needs root")
    report = unsandboxed("agent-as-root", ["raw_socket"], uid=0)
    assert report.result("raw_socket") == "LEAKED"
