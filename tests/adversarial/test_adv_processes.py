"""Processes outside the sandbox: ptrace, process_vm_readv, signals and pidfds against a
decoy host process of the sandbox's own host uid (the easiest target there is), and
ptrace and process_vm_readv against the sandbox's pid 1 (bwrap), which a payload must
not steer either. The controls take the PID namespace away, then the sandbox."""

from __future__ import annotations

import pytest
from adversary import ATTACK_PROFILES, PROFILES, attack, names_of, requirements, unsandboxed

pytestmark = requirements

NAMES = names_of("processes")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("profile", ATTACK_PROFILES)
def test_attack_is_blocked(profile: str, name: str) -> None:
    attack(profile).assert_blocked(name)


@pytest.mark.parametrize("profile", PROFILES)
def test_kill_all_reaches_no_host_process(profile: str) -> None:
    # kill(-1, SIGURG) from inside: the decoy (same host uid) must not get it.
    report = attack(profile)
    assert report.decoy_alive
    assert report.decoy_signals == []


@pytest.mark.parametrize("profile", PROFILES)
def test_control_in_the_host_pid_namespace(profile: str) -> None:
    # CONTROL: no PID namespace, the host's /proc bound, no landlock. The decoy can be
    # signalled and given a pidfd. Its environment, descriptors and memory stay closed
    # even so: the payload's user namespace is not the decoy's, and same-uid access
    # across user namespaces needs CAP_SYS_PTRACE over the decoy's (a second layer,
    # also shown here). kill_all is never sent from the host's PID namespace.
    report = attack(profile, "leaky-processes", [*NAMES, "host_environ", "host_mem"])
    leaked = ["signal_host", "pidfd_host"]
    assert report.verdicts(leaked) == dict.fromkeys(leaked, "LEAKED")
    held = ["host_environ", "host_mem", "ptrace_host", "vm_read_host"]
    assert report.verdicts(held) == dict.fromkeys(held, "blocked")
    assert report.result("kill_all") == "n/a"
    assert report.decoy_signals == []


@pytest.mark.parametrize("profile", PROFILES)
def test_control_without_a_sandbox_the_host_process_is_reached(profile: str) -> None:
    # CONTROL: the probe on the host as the decoy's uid attaches to it, reads its memory,
    # signals it and gets a pidfd.
    report = unsandboxed(profile)
    leaked = ["ptrace_host", "vm_read_host", "signal_host", "pidfd_host"]
    assert report.verdicts(leaked) == dict.fromkeys(leaked, "LEAKED")
