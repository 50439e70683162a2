"""Host information from inside the sandbox: bwrap's own argv (the sandbox's pid 1 is a
fork of it), the sources of the sandbox's mounts, and the host-wide files of /proc.
Each attack of the probe's "hostinfo" group must be blocked with the agent as root and
as nobody, through ``sandbox exec`` and through the pilot's own path (``selftest``: the
JobWrapper, its files and the landlock step, as a job gets them); the controls show
the same probe seeing them once a defence is taken away."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from adversary import (
    ATTACK_PROFILES,
    PROBE,
    PROFILES,
    PYTHON,
    attack,
    names_of,
    requirements,
    unsandboxed,
)
from cli_support import (
    ROOT,
    SCRIPT,
    cli_env,
    close_scopes,
    delegated_cgroup,
    nobody_program,
    run_cli,
)

from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import bwrap
from sandbox_agent.runtime.launch import SANDBOX_HOST_UID
from sandbox_agent.runtime.plan import RealHost
from sandbox_agent.selftest.stage import hexed
from sandbox_agent.wrapper.probe import RUNNER, probe_files

pytestmark = requirements

NAMES = names_of("hostinfo")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("profile", ATTACK_PROFILES)
def test_attack_is_blocked(profile: str, name: str) -> None:
    attack(profile).assert_blocked(name)


def _pilot_selftest(profile: str, base: Path) -> dict[str, str]:
    """``selftest --json`` of the hostinfo attacks, the agent's home and temporary
    directory (where the launcher made its private directory of files) side by side in
    ``base``: the probe looks for the home's path, which names both."""
    home = base / "home"
    tmp = home / "tmp"
    tmp.mkdir(parents=True)
    shutil.copytree(ROOT / "policies", home / "policies")
    program: list[str] = [str(SCRIPT)]
    extra: dict[str, str] = {}
    cgroups: list[Path] = []
    if profile == "agent-as-nobody":
        how = nobody_program()
        if isinstance(how, str):
            pytest.skip(how)
        program, extra = how
        delegated = delegated_cgroup(f"adv-hostinfo-{os.getpid()}")
        if isinstance(delegated, str):
            pytest.skip(delegated)
        prefix, cgroups = delegated
        program = prefix + program
        for path in (home, tmp, home / "policies"):
            os.chown(path, SANDBOX_HOST_UID, SANDBOX_HOST_UID)
    try:
        done = run_cli(cli_env(home, TMPDIR=str(tmp), **extra), "selftest", "--json", *NAMES,
                       program=program)  # fmt: skip
    finally:
        close_scopes(list(cgroups))
    assert done.returncode in (0, 1), done.stderr
    answer = json.loads(done.stdout)
    return {row["attack"]: f"{row['result']}: {row['detail']}" for row in answer["attacks"]}


@pytest.mark.parametrize("profile", PROFILES)
def test_through_the_pilot_nothing_of_the_agent_is_named(profile: str) -> None:
    # The pilot's own sandbox: the JobWrapper's files, which the launcher once put in a
    # directory of TMPDIR and bound in (mountinfo named it), and bwrap's argv, which named
    # the job's work directory under the agent's home.
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="adv-hostinfo-"))
    base.chmod(0o711)
    try:
        got = _pilot_selftest(profile, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert set(got) == set(NAMES)
    assert [f"{name}: {got[name]}" for name in NAMES if not got[name].startswith("blocked")] == []


@pytest.mark.parametrize("profile", PROFILES)
def test_control_a_bound_directory_of_the_agent_shows_in_the_mount_table(profile: str) -> None:
    # CONTROL: a copy of the agent's certificate directory bound read-only (the real one
    # is denied): its host path is the source of a mount, which the probe must see.
    report = attack(profile, "leaky-credentials", NAMES)
    assert report.result("mount_sources") == "LEAKED", report.detail("mount_sources")
    assert "decoy-home" in report.detail("mount_sources")


@pytest.mark.parametrize("profile", PROFILES)
def test_control_without_a_sandbox_the_host_wide_files_are_read(profile: str) -> None:
    # CONTROL: the probe on the host, as the sandbox's host uid: /proc/cmdline and the
    # rest are readable there, as they were inside before the masks.
    report = unsandboxed(profile, ["host_wide_proc"])
    assert report.result("host_wide_proc") == "LEAKED", report.detail("host_wide_proc")
    assert "/proc/cmdline" in report.detail("host_wide_proc")


class _NoLandlock(RealHost):
    """This host, without the landlock step (its descriptor is the launcher's to fill)."""

    def landlock_abi(self) -> int:
        return 0


def _direct(argv: list[str], workdir: Path) -> dict[str, dict[str, str]]:
    """The probe run by bwrap started straight from ``argv`` (a rendered plan without its
    descriptors), as the launcher started it before --args: every option on the argv."""
    drop: list[str] = []
    if os.geteuid() == 0:
        drop = ["setpriv", f"--reuid={SANDBOX_HOST_UID}", f"--regid={SANDBOX_HOST_UID}",
                "--clear-groups"]  # fmt: skip
    done = subprocess.run([*drop, *argv], capture_output=True, text=True, timeout=120,
                          check=False, env={})  # fmt: skip
    assert done.returncode == 0, done.stderr
    results: dict[str, dict[str, str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def test_control_options_on_the_argv_show_the_host_paths_and_unmasked_proc() -> None:
    # CONTROL: the default policy's plan started the old way, every option on bwrap's
    # argv, and without the /proc masks: the same probe sees the work directory's host
    # path in pid 1's command line and reads /proc/cmdline.
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="adv-hostinfo-"))
    base.chmod(0o711)
    workdir = base / "work"
    workdir.mkdir()
    workdir.chmod(0o777)
    probe = workdir / PROBE
    probe.mkdir()
    for source in probe_files():
        shutil.copy(source, probe / source.name)
    try:
        effective = compose(load_policy("default", [ROOT / "policies"]))
        config = json.dumps({"agent_paths": [hexed(workdir)]})
        command = [PYTHON, "-I", "-S", f"{PROBE}/{RUNNER}", "--json", config, *NAMES]

        plan = bwrap.render(effective, command, workdir=str(workdir), environ={},
                            host=_NoLandlock())  # fmt: skip
        argv = list(plan.argv)
        for flag in ("--seccomp", "--info-fd"):
            at = argv.index(flag)
            del argv[at : at + 2]
        masked = _direct(argv, workdir)
        assert masked["runtime_argv"]["result"] == "LEAKED", masked["runtime_argv"]
        assert str(workdir) in masked["runtime_argv"]["detail"]
        assert masked["host_wide_proc"]["result"] == "blocked", masked["host_wide_proc"]
        unmasked = _direct(_without_masks(argv), workdir)
        assert unmasked["host_wide_proc"]["result"] == "LEAKED", unmasked["host_wide_proc"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _without_masks(argv: list[str]) -> list[str]:
    """``argv`` without the words that mask /proc (everything after --proc /proc up to the
    next option that is not a mask)."""
    out: list[str] = []
    at = 0
    while at < len(argv):
        if argv[at] == "--ro-bind" and argv[at + 1] == "/dev/null":
            at += 3
        elif argv[at : at + 2] == ["--perms", "0555"] and argv[at + 3] in bwrap.MASKED_PROC_DIRS:
            at += 6  # --perms 0555 --tmpfs DIR --remount-ro DIR
        else:
            out.append(argv[at])
            at += 1
    return out
