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
    # of the host-wide /proc files the renderer masks, those this kernel has
    "/proc/cmdline": "file", "/proc/config.gz": "file", "/proc/kallsyms": "file",
    "/proc/sys/kernel/random/boot_id": "file", "/proc/keys": "file", "/proc/acpi": "dir",
})  # fmt: skip
JOB = load_job(
    'Executable = "/bin/sh"; MemorySize = "4GB";\nReadOnlyBinds = { "/cvmfs/alice.cern.ch" };'
)
# The payload's argv as the renderer gets it: a shell snippet, which no JDL Arguments
# spells (JAliEn splits them on white space, quotes kept).
PAYLOAD = [JOB.executable, "-c", "echo $ALIEN_PROC_ID"]


def plan_for(name: str, **kwargs: object):  # type: ignore[no-untyped-def]
    effective = compose(load_policy(name, [ROOT / "policies"]), JOB)
    return bwrap.render(effective, PAYLOAD, workdir="/srv/work/7", host=HOST, **kwargs)


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
    with pytest.raises(
        Unenforceable,
        match=r"network\.mode: none needs the job.s own network namespace; set namespaces"
        r"\.net = \"required\"",
    ):
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
    # no network: landlock denies TCP too (--no-tcp); egress leaves TCP to the relay
    plan = landlock_plan('extends = "default"\n[process]\nlandlock = "required"\n'
                         '[network]\nmode = "none"\nallow = []\n', HOST, tmp_path)  # fmt: skip
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


def test_host_wide_proc_files_are_masked_where_the_kernel_has_them(tmp_path: Path) -> None:
    argv = list(plan_for("default").argv)
    proc = argv.index("--proc")
    masks = argv[proc + 2 : argv.index("--bind", proc)]
    files = [argv[i + 2] for i in range(proc, len(argv) - 2)
             if argv[i : i + 2] == ["--ro-bind", "/dev/null"]]  # fmt: skip
    assert files == ["/proc/cmdline", "/proc/config.gz", "/proc/kallsyms",
                     "/proc/sys/kernel/random/boot_id", "/proc/keys"]  # fmt: skip
    assert masks[-6:] == ["--perms", "0555", "--tmpfs", "/proc/acpi", "--remount-ro", "/proc/acpi"]
    assert len(masks) == 3 * len(files) + 6  # nothing else between /proc and the work dir
    # what this kernel lacks is not masked: bwrap cannot mount over a missing path
    assert "/proc/sched_debug" in bwrap.MASKED_PROC and "/proc/sched_debug" not in argv
    # the host's own /proc bound instead of a private one: nothing is masked
    text = ('extends = "default"\n[namespaces]\npid = "off"\n[filesystem]\nproc = "off"\n'
            'read_only = ["/proc"]\ndeny = ["/root", "/home", "/sys"]\n')  # fmt: skip
    plan = landlock_plan(text, FixedHost({**HOST.table, "/proc": "dir"}), tmp_path)
    assert "/dev/null" not in plan.argv and "/proc/acpi" not in plan.argv


@pytest.mark.parametrize("name", ["default", "gpu"])
def test_bwraps_options_end_at_its_own_double_dash(name: str) -> None:
    plan = plan_for(name)
    end = bwrap.options_end(plan.argv)
    assert plan.argv[end - 2 : end + 1] == ("--info-fd", str(bwrap.INFO_FD), "--")
    assert plan.argv[end + 1 : end + 4] == ("/usr/bin/python3", "-I", "-S")


def test_a_value_that_reads_as_double_dash_does_not_end_the_options() -> None:
    # without the landlock step the variables are bwrap's --setenv: a value "--" (from
    # the agent's environment) is a value, not the end of the options
    effective = compose(load_policy("default", [ROOT / "policies"]), JOB)
    plan = bwrap.render(effective, ["/bin/true"], workdir="/srv/work/7",
                        host=FixedHost(HOST.table, landlock=0), environ={"LANG": "--"})  # fmt: skip
    first = plan.argv.index("--")
    assert plan.argv[first - 2 : first] == ("--setenv", "LANG")
    end = bwrap.options_end(plan.argv)
    assert end > first and plan.argv[end - 2 : end] == ("--info-fd", str(bwrap.INFO_FD))
    assert plan.argv[end + 1 :] == ("/bin/true",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(("bwrap", "--unshare-pid", "--bogus", "--", "/bin/true"), "'--bogus' is not one"),
     (("bwrap", "--unshare-pid", "/bin/true"), "'/bin/true' is not one"),
     (("bwrap", "--ro-bind", "/usr", "/usr"), "not followed by '--'")],
)  # fmt: skip
def test_options_the_launcher_cannot_place_are_refused(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bwrap.options_end(argv)


def test_the_wrappers_files_come_on_descriptors_not_from_a_directory_of_the_agent() -> None:
    import sys

    from sandbox_agent.runtime.plan import AGENT_FILES

    plan = plan_for("default", wrapper=True)
    assert plan.agent_files == {} and not any(AGENT_FILES in word for word in plan.argv)
    end = bwrap.options_end(plan.argv)
    carried = {plan.argv[i + 2]: int(plan.argv[i + 1]) for i in range(end)
               if plan.argv[i] == "--ro-bind-data"}  # fmt: skip
    tag = sys.implementation.cache_tag
    lib = bwrap.WRAPPER_DIR
    assert {path: plan.fd_contents[fd] for path, fd in carried.items()} == {
        bwrap.CONFINE_PATH: "confine",
        f"{lib}/jobwrapper.py": "wrapper", f"{lib}/__pycache__/jobwrapper.{tag}.pyc": "wrapper.pyc",
        f"{lib}/handoff.py": "handoff", f"{lib}/__pycache__/handoff.{tag}.pyc": "handoff.pyc",
        f"{lib}/packaging.py": "packaging",
        f"{lib}/__pycache__/packaging.{tag}.pyc": "packaging.pyc",
    }  # fmt: skip
    # every descriptor is declared, each read-only (0444) in bwrap's own tmpfs
    assert set(plan.fds) == set(plan.fd_contents)
    for fd in carried.values():
        at = plan.argv.index(str(fd), 0, end)
        assert plan.argv[at - 3 : at - 1] == ("--perms", "0444")
    # nothing but the host's userland and the work directory is bound from the host
    sources = {plan.argv[i + 1] for i in range(end) if plan.argv[i] in ("--bind", "--ro-bind")}
    assert sources == {"/usr", "/cvmfs/alice.cern.ch", "/etc/alternatives",
                       "/etc/ca-certificates", "/etc/ld.so.cache", "/etc/ld.so.conf",
                       "/etc/ld.so.conf.d", "/etc/nsswitch.conf", "/etc/ssl/certs", "/dev/null",
                       "/srv/work/7"}  # fmt: skip
