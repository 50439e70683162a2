"""The shipped profile, compiled by libseccomp and loaded by the real bwrap through the
launcher (``sandbox exec``), stops the calls it must stop and lets ordinary work run,
whether the agent is root or not. The same probe under a profile that allows everything
shows that the filter, not something else, is what refuses them."""

from __future__ import annotations

import errno
import json
import platform
import shutil
from pathlib import Path

import pytest
from cli_support import (
    ROOT,
    cli_env,
    close_scopes,
    delegated_cgroup,
    nobody_program,
    run_cli,
    shared_workdir,
)

PROBE = Path(__file__).with_name("probe_syscalls.py")
PYTHON = "/usr/bin/python3"
# The control: the default policy with a profile that allows every call.
ALLOW_ALL = '{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"]}'
CONTROL = 'extends = "default"\n[process]\nseccomp = "seccomp/allow-all.json"\n'

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe uses x86_64 numbers"),
    pytest.mark.skipif(not Path(PYTHON).exists(), reason="no system python3 to run the probe"),
]

DENIED = {
    "unshare_user": errno.EPERM, "unshare_net": errno.EPERM, "mount": errno.EPERM,
    "ptrace_traceme": errno.EPERM, "personality_exec": errno.EPERM,
    "ioctl_tiocsti": errno.EPERM, "ioctl_tiocsti_high": errno.EPERM, "keyctl": errno.EPERM,
    "bpf": errno.EPERM, "clone3": errno.ENOSYS, "io_uring_setup": errno.EPERM,
    "userfaultfd": errno.EPERM, "perf_event_open": errno.EPERM, "socket_alg": errno.EPERM,
    "socket_vsock": errno.EPERM,
}  # fmt: skip
WORKS = ("personality_query", "socket_unix", "fork", "thread", "socketpair")


def run_probe(tmp_path: Path, *, seccomp: bool, as_nobody: bool = False) -> dict[str, int]:
    workdir = shared_workdir()
    policies = workdir.parent / "policies"  # where an unprivileged agent can read them
    shutil.copytree(ROOT / "policies", policies)
    (policies / "seccomp" / "allow-all.json").write_text(ALLOW_ALL)
    (policies / "control.toml").write_text(CONTROL)
    try:
        shutil.copy(PROBE, workdir / "probe.py")
        (workdir / "probe.py").chmod(0o644)
        env = cli_env(tmp_path / "home", SANDBOX_AGENT_POLICIES=str(policies))
        program = None
        cgroups: list[Path] = []
        if as_nobody:
            how = nobody_program()
            if isinstance(how, str):
                pytest.skip(how)
            program, extra = how
            env.update(extra)
            delegated = delegated_cgroup("seccomp")
            if isinstance(delegated, str):
                pytest.skip(delegated)
            prefix, cgroups = delegated
            program = prefix + program
        result = run_cli(env, "sandbox", "exec", "--policy", "default" if seccomp else "control",
                         "--workdir", workdir, "--", PYTHON, "probe.py",
                         program=program)  # fmt: skip
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)
        close_scopes(list(cgroups))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("as_nobody", [False, True], ids=["agent-as-root", "agent-as-nobody"])
def test_the_filter_denies_and_allows(tmp_path: Path, as_nobody: bool) -> None:
    got = run_probe(tmp_path, seccomp=True, as_nobody=as_nobody)
    wrong = {k: (errno.errorcode.get(got[k], got[k]), errno.errorcode[v])
             for k, v in DENIED.items() if got[k] != v}  # fmt: skip
    assert wrong == {}, f"got, expected: {wrong}"
    assert {k: got[k] for k in WORKS} == dict.fromkeys(WORKS, 0)


def test_without_the_filter_the_same_calls_answer_otherwise(tmp_path: Path) -> None:
    # The control: the answers change without seccomp, so the test above proves the filter.
    got = run_probe(tmp_path, seccomp=False)
    assert got["clone3"] != errno.ENOSYS
    assert got["ptrace_traceme"] == 0
    assert got["ioctl_tiocsti"] != errno.EPERM
    assert got["personality_exec"] == 0
