"""Denied system calls, and the ways around a filter: each call of the probe's
"syscalls" group must fail, and for the calls the shipped profile denies the answer
must be the filter's (EPERM), through the 64-bit, the 32-bit (int 0x80) and the x32
ABIs. The controls load a profile that allows everything, then drop the sandbox."""

from __future__ import annotations

import re

import pytest
from adversary import ATTACK_PROFILES, PROFILES, attack, names_of, requirements, unsandboxed

pytestmark = requirements

NAMES = names_of("syscalls")
# Denied by the shipped profile: every errno in the probe's answer must be EPERM.
FILTERED = ["unshare_user", "unshare_mount", "keyctl", "bpf", "perf_event_open",
            "userfaultfd", "io_uring_setup", "open_by_handle_at", "chroot", "settimeofday",
            "sethostname", "int80_x86", "x32"]  # fmt: skip


def errnos(detail: str) -> list[str]:
    return re.findall(r": (E[A-Z]+)\b", detail)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("profile", ATTACK_PROFILES)
def test_attack_is_blocked(profile: str, name: str) -> None:
    attack(profile).assert_blocked(name)


@pytest.mark.parametrize("name", FILTERED)
@pytest.mark.parametrize("profile", PROFILES)
def test_the_filter_answers(profile: str, name: str) -> None:
    detail = attack(profile).detail(name)
    got = errnos(detail)
    assert got, detail
    assert set(got) == {"EPERM"}, detail


@pytest.mark.parametrize("profile", PROFILES)
def test_tiocsti_is_filtered_and_nothing_reached_the_terminal(profile: str) -> None:
    report = attack(profile)
    detail = report.detail("tiocsti")
    # on a terminal, and on /dev/null where only a filter says EPERM (the kernel: ENOTTY)
    assert "fd 0 (a tty) 0x5412: EPERM" in detail
    assert "fd 0 (a tty) 0x100005412: EPERM" in detail
    assert "no tty (/dev/null) 0x5412: EPERM" in detail
    assert "no tty (/dev/null) 0x100005412: EPERM" in detail
    assert b"@" not in report.terminal


@pytest.mark.parametrize("profile", PROFILES)
def test_setns_into_its_own_namespace_is_filtered(profile: str) -> None:
    assert "setns(own net): EPERM" in attack(profile).detail("setns_host")


@pytest.mark.parametrize("profile", PROFILES)
def test_control_without_the_filter_calls_get_through(profile: str) -> None:
    # CONTROL: a profile that allows every call of every ABI. keyctl and the 32-bit
    # calls now succeed; what still fails answers with the kernel's own errno, not the
    # filter's: --disable-userns says ENOSPC, the missing x32 ABI ENOSYS, TIOCSTI on
    # /dev/null ENOTTY (and on the terminal EPERM: the launcher's new session left the
    # payload no controlling terminal, a layer that holds without the filter).
    report = attack(profile, "leaky-syscalls", NAMES)
    assert report.result("keyctl") == "LEAKED"
    if errnos(report.detail("int80_x86")) != ["ENOSYS"] * 4:  # a kernel without ia32
        assert report.result("int80_x86") == "LEAKED", report.detail("int80_x86")
    assert "unshare: ENOSPC" in report.detail("unshare_user")
    assert "no tty (/dev/null) 0x5412: ENOTTY" in report.detail("tiocsti")
    assert report.result("tiocsti") == "blocked"
    changed = [n for n in FILTERED if set(errnos(report.detail(n))) != {"EPERM"}]
    assert len(changed) >= len(FILTERED) // 2, changed


@pytest.mark.parametrize("profile", PROFILES)
def test_control_without_a_sandbox_tiocsti_injects(profile: str) -> None:
    # CONTROL: on the host, with the terminal as its controlling terminal, the probe's
    # TIOCSTI pushes its byte into the terminal, and the terminal echoes it.
    report = unsandboxed(profile)
    assert report.result("tiocsti") == "LEAKED", report.detail("tiocsti")
    assert b"@" in report.terminal
