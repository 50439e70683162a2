"""The host's network from inside: TCP to the host's loopback and its own address, UDP
to an echo on loopback, an abstract unix socket. The host counts what arrives, so a
datagram that gets out without an answer still fails the test. The controls share the
host's network, with landlock and then without it."""

from __future__ import annotations

import pytest
from adversary import ATTACK_PROFILES, PROFILES, attack, names_of, requirements

from sandbox_agent.wrapper.confine import abi

pytestmark = requirements

NAMES = names_of("network")
ATTACKS = [n for n in NAMES if n != "listen_inside"]  # listening is reported, not judged


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("profile", ATTACK_PROFILES)
def test_attack_is_blocked(profile: str, name: str) -> None:
    attack(profile).assert_blocked(name)


@pytest.mark.parametrize("profile", PROFILES)
def test_nothing_reached_the_host(profile: str) -> None:
    assert attack(profile).arrived == {"tcp": [], "udp": [], "unix": []}


@pytest.mark.parametrize("profile", PROFILES)
def test_listening_inside_is_reported(profile: str) -> None:
    # allowed or refused (landlock without TCP refuses the bind): either way, said
    report = attack(profile)
    assert report.result("listen_inside") == "n/a"
    assert report.detail("listen_inside").startswith(("allowed", "refused"))


@pytest.mark.parametrize("profile", PROFILES)
def test_control_host_network(profile: str) -> None:
    # CONTROL: the host's network. TCP and UDP get through and arrive; the abstract
    # socket is still refused by landlock's scoping (ABI 6), a second layer.
    report = attack(profile, "leaky-network", NAMES)
    assert report.verdicts(["tcp_connect", "udp_send"]) == {
        "tcp_connect": "LEAKED", "udp_send": "LEAKED"
    }  # fmt: skip
    assert report.arrived["tcp"] and report.arrived["udp"]
    if abi() >= 6:
        assert report.result("unix_abstract") == "blocked"
        assert report.arrived["unix"] == []


@pytest.mark.parametrize("profile", PROFILES)
def test_control_host_network_without_landlock(profile: str) -> None:
    report = attack(profile, "leaky-network-no-landlock", NAMES)
    assert report.result("unix_abstract") == "LEAKED"
    assert report.arrived["unix"]
