"""The agent's credentials from inside the sandbox: its key and certificate directory
by their host paths, its environment, and /proc of processes outside. Each attack of
the probe's "credentials" group must be blocked with the agent as root and as nobody;
the controls show the same probe reading them once a defence is taken away."""

from __future__ import annotations

import json
import os

import pytest
from adversary import ATTACK_PROFILES, PROFILES, attack, names_of, requirements, unsandboxed

pytestmark = requirements

NAMES = names_of("credentials")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("profile", ATTACK_PROFILES)
def test_attack_is_blocked(profile: str, name: str) -> None:
    attack(profile).assert_blocked(name)


@pytest.mark.parametrize("profile", PROFILES)
def test_no_secret_in_anything_the_probe_saw(profile: str) -> None:
    # Whatever the probe read and reported (environment names, file lists, errors),
    # none of the planted secrets is in it.
    report = attack(profile)
    text = json.dumps(report.results)
    assert [s for s in report.secrets if s in text] == []


@pytest.mark.parametrize("profile", PROFILES)
def test_control_credentials_bound_and_variable_passed(profile: str) -> None:
    # CONTROL: a readable copy of the agent's certificate directory bound read-only
    # (the real one is denied, and no policy may bind it) and SECRET_TOKEN allowed
    # through: the probe must read the key, list the directory and find the variable
    # in its own environment and in bwrap's argv (--setenv) and its own environ.
    report = attack(profile, "leaky-credentials", NAMES)
    leaked = ["key_file", "cert_dir", "env_self", "env_procs", "init_environ"]
    assert report.verdicts(leaked) == dict.fromkeys(leaked, "LEAKED")


@pytest.mark.parametrize("profile", PROFILES)
def test_control_without_a_sandbox_the_host_process_is_read(profile: str) -> None:
    # CONTROL: the probe on the host, as the sandbox's host uid, next to the decoy of
    # the same uid: its environment, descriptors and memory are all readable.
    report = unsandboxed(profile)
    leaked = ["env_procs", "host_environ", "host_fd", "host_mem"]
    assert report.verdicts(leaked) == dict.fromkeys(leaked, "LEAKED")


def test_control_root_home_is_listed_by_host_root() -> None:
    # CONTROL for root_home: host root lists /root (the probe on the host as uid 0).
    if os.geteuid() != 0:
        pytest.skip("listing /root as host root needs root")
    report = unsandboxed("agent-as-root", ["root_home"], uid=0)
    assert report.result("root_home") == "LEAKED" or "empty" in report.detail("root_home")
