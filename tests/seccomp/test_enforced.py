"""The shipped profile, compiled by libseccomp and loaded by the real bwrap, stops the
calls it must stop and lets ordinary work run. The same probe without the filter shows
that the filter, not something else, is what refuses them."""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import bwrap
from sandbox_agent.seccomp.compile import bpf_fd, compile_profile

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("probe_syscalls.py")
PYTHON = "/usr/bin/python3"

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


def run_probe(workdir: Path, *, seccomp: bool, as_nobody: bool = False) -> dict[str, int]:
    shutil.copy(PROBE, workdir / "probe.py")
    if as_nobody:
        # The pilot is not root at most sites: the same sandbox, started by nobody.
        workdir.chmod(0o777)
        (workdir / "probe.py").chmod(0o644)
    effective = compose(load_policy("default", [ROOT / "policies"]))
    plan = bwrap.render(effective, [PYTHON, "probe.py"], workdir=str(workdir),
                        environ=dict(os.environ))  # fmt: skip
    argv = list(plan.argv)
    at = argv.index("--seccomp")
    fds: tuple[int, ...] = ()
    if seccomp:
        fd = bpf_fd(compile_profile(ROOT / "policies" / "seccomp" / "default.json").bpf)
        argv[at + 1] = str(fd)
        fds = (fd,)
    else:
        del argv[at : at + 2]
    if as_nobody:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                pass_fds=fds, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    finally:
        for fd in fds:
            os.close(fd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("as_nobody", [False, True], ids=["agent-as-root", "agent-as-nobody"])
def test_the_filter_denies_and_allows(as_nobody: bool) -> None:
    if as_nobody and (os.geteuid() != 0 or shutil.which("setpriv") is None):
        pytest.skip("switching to nobody needs root and setpriv")
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
        got = run_probe(Path(scratch), seccomp=True, as_nobody=as_nobody)
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
