"""The exact bwrap argv for a job, against a fixed host; and the real bwrap accepts it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox_agent.jdl import load_job
from sandbox_agent.policy import PolicyRejection, compose, load_policy
from sandbox_agent.runtime import bwrap
from sandbox_agent.runtime.plan import FROM_AGENT, FixedHost, RealHost, Unenforceable

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
# A merged-/usr Debian host: /bin, /lib, /lib64 and /sbin are links into /usr.
HOST = FixedHost({
    "/usr": "dir", "/bin": "symlink:usr/bin", "/sbin": "symlink:usr/sbin",
    "/lib": "symlink:usr/lib", "/lib64": "symlink:usr/lib64", "/etc/alternatives": "dir",
    "/etc/ld.so.cache": "file", "/etc/ld.so.conf": "file", "/etc/ld.so.conf.d": "dir",
    "/etc/localtime": "symlink:/usr/share/zoneinfo/Etc/UTC", "/etc/nsswitch.conf": "file",
    "/etc/ssl/certs": "dir", "/etc/ca-certificates": "dir", "/cvmfs/alice.cern.ch": "dir",
    "/dev/nvidiactl": "file", "/dev/nvidia0": "file", "/usr/bin/python3": "symlink:python3.11",
})  # fmt: skip
JOB = load_job(
    'Executable = "/bin/sh"; Arguments = "-c \'echo $ALIEN_PROC_ID\'"; MemorySize = "4GB";\n'
    'ReadOnlyBinds = { "/cvmfs/alice.cern.ch" };'
)


def plan_for(name: str, **kwargs: object):  # type: ignore[no-untyped-def]
    effective = compose(load_policy(name, [ROOT / "policies"]), JOB)
    return bwrap.render(
        effective, [JOB.executable, *JOB.arguments], workdir="/srv/work/7", host=HOST, **kwargs
    )


@pytest.mark.parametrize("name", ["default", "strict", "gpu"])
def test_golden_argv(name: str) -> None:
    if name == "strict":
        # the job asks for more memory than strict allows: no plan at all
        with pytest.raises(PolicyRejection, match="MemorySize 4GB is above the site maximum"):
            plan_for(name)
        return
    plan = plan_for(name)
    expected = (GOLDEN / f"bwrap-{name}.argv").read_text().splitlines()
    assert list(plan.argv) == expected


def test_agent_environment_never_copied_into_a_rendered_plan() -> None:
    plan = plan_for("default")
    assert f"--env=LANG={FROM_AGENT}" in plan.argv
    with_env = plan_for("default", environ={"LANG": "C.UTF-8", "SECRET": "x"})
    assert "--env=LANG=C.UTF-8" in with_env.argv
    assert not any("SECRET" in word or FROM_AGENT in word for word in with_env.argv)


def test_fail_closed_when_the_network_has_no_namespace(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text('extends = "base"\n[namespaces]\nnet = "off"\n')
    for name in ("base.toml",):
        shutil.copy(ROOT / "policies" / name, tmp_path / name)
    effective = compose(load_policy("site", [tmp_path]))
    with pytest.raises(Unenforceable, match=r"network\.mode none needs namespaces\.net"):
        bwrap.render(effective, ["/bin/true"], workdir="/w", host=HOST)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
class NoLandlock(RealHost):
    def landlock_abi(self) -> int:
        return 0


def test_real_bwrap_runs_the_rendered_argv(tmp_path: Path) -> None:
    # Without the descriptors the launcher fills (the seccomp program, the landlock
    # step: landlock is optional in the default policy), the rest is real.
    effective = compose(load_policy("default", [ROOT / "policies"]))
    probe = "id -u; id -g; echo $PWD; ls /; test -e /root && echo ROOT-VISIBLE; echo $HOME"
    plan = bwrap.render(effective, ["/bin/sh", "-c", probe], workdir=str(tmp_path),
                        environ=dict(os.environ), host=NoLandlock())  # fmt: skip
    assert "--ro-bind-data" not in plan.argv
    argv = list(plan.argv)
    for flag in ("--seccomp", "--info-fd"):
        at = argv.index(flag)
        del argv[at : at + 2]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[:3] == ["1000", "1000", "/workdir"]
    assert "ROOT-VISIBLE" not in lines and "home" not in lines and "root" not in lines
    assert lines[-1] == "/workdir"


def landlock_plan(policy_text: str, host: FixedHost, tmp_path: Path):  # type: ignore[no-untyped-def]
    shutil.copytree(ROOT / "policies", tmp_path, dirs_exist_ok=True)
    (tmp_path / "p.toml").write_text(policy_text)
    effective = compose(load_policy("p", [tmp_path]))
    return bwrap.render(effective, ["/bin/true"], workdir="/srv/w", host=host)


def test_landlock_step_comes_before_the_payload(tmp_path: Path) -> None:
    plan = landlock_plan('extends = "default"\n[process]\nlandlock = "required"\n', HOST,
                         tmp_path)  # fmt: skip
    tail = list(plan.argv[plan.argv.index("--") + 1 :])
    assert tail[:14] == ["/usr/bin/python3", "-I", "-S", bwrap.CONFINE_PATH, "--confirm-fd",
                         str(bwrap.CONFIRM_FD), "--writable", "/workdir", "--writable", "/tmp",
                         "--writable", "/dev", "--no-tcp",
                         "--env=PATH=/usr/local/bin:/usr/bin:/bin"]  # fmt: skip
    assert tail[-2:] == ["--", "/bin/true"]
    # the interpreter of the step gets no variable: bwrap sets none when the step runs
    assert "--setenv" not in plan.argv and "--clearenv" in plan.argv
    assert plan.fd_contents == {bwrap.SECCOMP_FD: "seccomp", bwrap.CONFINE_FD: "confine",
                                bwrap.INFO_FD: "info", bwrap.CONFIRM_FD: "confirm"}  # fmt: skip
    landlock = next(r for r in plan.requirements if r.key == "process.landlock")
    assert landlock.met and landlock.by == "wrapper" and "no TCP" in landlock.how


def test_landlock_without_tcp_rules_on_an_older_kernel(tmp_path: Path) -> None:
    old = FixedHost(HOST.table, landlock=3)
    plan = landlock_plan('extends = "default"\n', old, tmp_path)
    assert "--no-tcp" not in plan.argv and bwrap.CONFINE_PATH in plan.argv


def test_network_host_keeps_tcp(tmp_path: Path) -> None:
    text = 'extends = "default"\n[network]\nmode = "host"\n[namespaces]\nnet = "off"\n'
    plan = landlock_plan(text, HOST, tmp_path)
    assert "--no-tcp" not in plan.argv and bwrap.CONFINE_PATH in plan.argv


@pytest.mark.parametrize(
    ("host", "why"),
    [(FixedHost(HOST.table, landlock=0), "this kernel has no landlock"),
     (FixedHost({k: v for k, v in HOST.table.items() if k != "/usr/bin/python3"}),
      "the sandbox has no /usr/bin/python3 to apply landlock with")],
)  # fmt: skip
def test_landlock_fails_closed_or_is_noted(tmp_path: Path, host: FixedHost, why: str) -> None:
    with pytest.raises(Unenforceable, match=f"^process.landlock: {why}$"):
        landlock_plan('extends = "base"\n', host, tmp_path)
    plan = landlock_plan('extends = "default"\n', host, tmp_path)  # optional there
    assert bwrap.CONFINE_PATH not in plan.argv
    landlock = next(r for r in plan.requirements if r.key == "process.landlock")
    assert not landlock.met and landlock.how == why


def test_a_bind_inside_a_tmpfs_comes_after_it(tmp_path: Path) -> None:
    text = ('extends = "default"\n[filesystem]\nwritable = ["/tmp/shared"]\n'
            'read_only = ["/srv/data/ro"]\ntmpfs = [{ path = "/tmp", size = "1GB" }, '
            '{ path = "/srv/data", size = "1MB" }]\n')  # fmt: skip
    host = FixedHost({**HOST.table, "/srv/data/ro": "dir", "/tmp/shared": "dir"})
    argv = list(landlock_plan(text, host, tmp_path).argv)

    def at(*words: str) -> int:
        return next(i for i in range(len(argv)) if argv[i : i + len(words)] == list(words))

    # a tmpfs mounted after a bind inside it would hide the bind
    assert at("--tmpfs", "/tmp") < at("--bind", "/tmp/shared", "/tmp/shared")
    assert at("--tmpfs", "/srv/data") < at("--ro-bind", "/srv/data/ro", "/srv/data/ro")
