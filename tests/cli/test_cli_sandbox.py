"""`sandbox exec` through the real console script and the real bwrap: what a payload
sees, as root and as an unprivileged agent."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cli_support import ROOT, SCRIPT, cli_env, nobody_program, run_cli, running

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")


@pytest.fixture
def sandbox(tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    (home / "certs").mkdir(parents=True)
    (home / "certs" / "jobagent.key").write_text("CANARY-AGENT-KEY\n")
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    (policies / "kernelwall.toml").write_text(
        'extends = "default"\n[limits]\nwall_time = { enforcement = "kernel" }\n'
    )
    # As root the sandbox runs as uid 65534, which must reach the work directory: it
    # lives under a directory others may traverse (pytest's tmp_path is private).
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    base.chmod(0o711)
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    workdir = base / "work"
    workdir.mkdir()
    if os.geteuid() == 0:
        os.chown(workdir, 65534, 65534)
    env = cli_env(home, SECRET_TOKEN="CANARY-ENV", LANG="C.UTF-8",
                  SANDBOX_AGENT_POLICIES=str(policies))  # fmt: skip

    def run(script: str, *options: str, **kwargs: object):  # type: ignore[no-untyped-def]
        return run_cli(env, "sandbox", "exec", "--policy", "default", "--workdir", workdir,
                       *options, "--", "/bin/sh", "-c", script, **kwargs)  # fmt: skip

    run.home = home  # type: ignore[attr-defined]
    run.workdir = workdir  # type: ignore[attr-defined]
    run.env = env  # type: ignore[attr-defined]
    return run


def test_exit_code_and_identity(sandbox) -> None:  # type: ignore[no-untyped-def]
    result = sandbox("id -u; id -g; pwd; exit 7")
    assert result.returncode == 7
    assert result.stdout.split() == ["1000", "1000", "/workdir"]


def test_work_directory_is_the_only_writable_place(sandbox) -> None:  # type: ignore[no-untyped-def]
    result = sandbox("echo data > out.txt; touch /usr/x 2>/dev/null && echo USR-WRITABLE; "
                     "touch /etc/x 2>/dev/null && echo ETC-WRITABLE; "
                     "touch /x 2>/dev/null && echo ROOT-WRITABLE; "
                     "touch /dev/planted 2>/dev/null && echo DEV-WRITABLE; "
                     "echo 11 2>/dev/null > /proc/sys/kernel/printk_ratelimit_burst "
                     "&& echo SYSCTL-WRITABLE; touch /tmp/ok /dev/shm/ok && echo done")  # fmt: skip
    assert result.stdout.split() == ["done"]
    assert (sandbox.workdir / "out.txt").read_text() == "data\n"


def test_agent_secrets_are_not_visible(sandbox) -> None:  # type: ignore[no-untyped-def]
    certs = sandbox.home / "certs"
    result = sandbox(f"env; ls {certs} 2>&1; cat {certs}/jobagent.key 2>&1; ls /root 2>&1; "
                     "cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n'")  # fmt: skip
    assert "CANARY" not in result.stdout
    assert "LANG=C.UTF-8" in result.stdout  # an allowed variable does pass
    assert "SECRET_TOKEN" not in result.stdout


def test_process_hardening(sandbox) -> None:  # type: ignore[no-untyped-def]
    result = sandbox("grep -E '^(Seccomp|NoNewPrivs|CapEff|CapPrm|CapBnd):' /proc/self/status; "
                     "ulimit -c; ulimit -n")  # fmt: skip
    fields = dict(line.split(":\t") for line in result.stdout.splitlines() if ":\t" in line)
    assert fields["Seccomp"] == "2"  # a filter is loaded
    assert fields["NoNewPrivs"] == "1"
    assert fields["CapEff"] == fields["CapPrm"] == "0000000000000000"
    assert result.stdout.splitlines()[-2:] == ["0", "4096"]  # core 0, nofile from default


def test_missing_runtime_is_one_line_and_exit_3(sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = dict(sandbox.env, PATH=str(tmp_path))
    result = run_cli(env, "sandbox", "exec", "--policy", "default", "--workdir",
                     sandbox.workdir, "--", "/bin/true",
                     program=[sys.executable, "-m", "sandbox_agent"])  # fmt: skip
    assert result.returncode == 3
    assert result.stderr == (
        "sandbox-agent: cannot enforce: --runtime auto: no runtime works here (bwrap: not on "
        "PATH (Debian/Ubuntu: apt-get install bubblewrap; EL: dnf install bubblewrap))\n"
    )


def test_the_sandbox_is_never_host_root(sandbox) -> None:  # type: ignore[no-untyped-def]
    # A file the payload makes is owned, on the host, by the uid that started bwrap: never
    # root, even when the agent is root (host uid 0 could leave a setuid-root binary for
    # host users, write sysctls and chmod device nodes, capabilities or not).
    result = sandbox("cp /usr/bin/id made && chmod 4755 made && echo ok")
    assert result.stdout.split() == ["ok"]
    made = (sandbox.workdir / "made").stat()
    assert made.st_uid != 0
    assert made.st_uid == (65534 if os.geteuid() == 0 else os.geteuid())


def test_dev_shm_is_small(sandbox) -> None:  # type: ignore[no-untyped-def]
    result = sandbox("df -k /dev/shm | tail -1")
    assert int(result.stdout.split()[1]) <= 64 * 1024


def test_optional_namespaces_are_confirmed_from_bwraps_report(sandbox) -> None:  # type: ignore[no-untyped-def]
    # --unshare-cgroup-try does not promise a namespace: bwrap's report confirms it, and
    # only an unconfirmed one would be named as not enforced
    result = sandbox("readlink /proc/self/ns/cgroup")
    assert result.returncode == 0
    assert result.stdout.strip() != os.readlink("/proc/self/ns/cgroup")
    # the one thing said: a directory given to `sandbox exec` is no filesystem of its own,
    # so the default policy has the monitor hold its size
    (said,) = result.stderr.splitlines()
    assert said.startswith("sandbox-agent: limits.workdir_size: monitored instead (")


def test_an_optional_requirement_nothing_enforces_is_said(sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    policies = Path(sandbox.env["SANDBOX_AGENT_POLICIES"])
    (policies / "nolandlock.toml").write_text(
        'extends = "default"\n[optional]\nrequirements = { append = ["limits.swap"] }\n'
        '[limits]\nswap = { enforcement = "monitored" }\n'
    )
    result = run_cli(sandbox.env, "sandbox", "exec", "--policy", "nolandlock", "--workdir",
                     sandbox.workdir, "--", "/bin/true")  # fmt: skip
    assert result.returncode == 0
    said = [line for line in result.stderr.splitlines() if "limits.workdir_size" not in line]
    assert said == [
        "sandbox-agent: not enforced here (optional in the policy): limits.swap",
        "sandbox-agent: limits.swap: not enforced (the agent cannot measure swap; set its "
        "enforcement to kernel)",
    ]


def test_a_limit_nothing_can_hold_fails_closed(sandbox) -> None:  # type: ignore[no-untyped-def]
    marker = sandbox.workdir / "ran"
    result = run_cli(sandbox.env, "sandbox", "exec", "--policy", "kernelwall", "--workdir",
                     sandbox.workdir, "--", "/bin/touch", "/workdir/ran")  # fmt: skip
    assert result.returncode == 3
    assert result.stderr == (
        "sandbox-agent: cannot enforce: limits.wall_time: no kernel mechanism holds "
        "wall_time; set its enforcement to monitored\n"
    )
    assert not marker.exists()


@pytest.mark.parametrize("where", ["symlink", "home", "root", "shared"])
def test_work_directory_is_checked(sandbox, tmp_path: Path, where: str) -> None:  # type: ignore[no-untyped-def]
    if where == "symlink":
        target = tmp_path / "link"
        target.symlink_to(sandbox.workdir)
        expected = "goes through a symlink"
    elif where == "home":
        target = sandbox.home  # holds the agent's certs
        expected = "reaches the denied path"
    elif where == "shared":
        target = Path("/dev/shm")
        expected = "a directory every user may write to (such as /tmp) is shared"
    else:
        target = Path("/")
        expected = "reaches the denied path"
    result = run_cli(sandbox.env, "sandbox", "exec", "--policy", "default", "--workdir", target,
                     "--", "/bin/true")  # fmt: skip
    assert result.returncode == 2
    assert expected in result.stderr


def test_a_policy_directory_the_agent_cannot_search_is_one_line(tmp_path: Path) -> None:
    how = nobody_program()
    if isinstance(how, str):
        pytest.skip(how)
    program, extra = how
    env = cli_env(tmp_path / "home", SANDBOX_AGENT_POLICIES=str(tmp_path / "policies"), **extra)
    result = run_cli(env, "sandbox", "exec", "--workdir", "/tmp", "--", "/bin/true",
                     program=program)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"sandbox-agent: {tmp_path}/policies/default.toml: cannot look for the policy here "
        "(Permission denied)\n"
    )


def test_auto_and_use_containers_bwrap_run_bwrap(sandbox) -> None:  # type: ignore[no-untyped-def]
    for extra in ({}, {"USE_CONTAINERS": "BWRAP"}, {"USE_CONTAINERS": "bwrap"}):
        sandbox.env.update(extra)
        result = sandbox("readlink /proc/1/exe; echo $0")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[-1] == "/bin/sh"


@pytest.mark.parametrize(
    ("options", "environment", "expected"),
    [
        (["--runtime", "singularity"], {}, "sandbox-agent: cannot enforce: --runtime singularity: "
         "not on PATH"),
        ([], {"USE_CONTAINERS": "APPTAINER"}, "sandbox-agent: cannot enforce: "
         "USE_CONTAINERS=APPTAINER: not on PATH"),
        ([], {"USE_CONTAINERS": "kubernetes"}, "sandbox-agent: cannot enforce: "
         "USE_CONTAINERS=kubernetes: unknown container runtime"),
        (["--runtime", "lxc"], {}, "sandbox-agent: cannot enforce: --runtime lxc: unknown runtime"),
    ],
)  # fmt: skip
def test_an_unavailable_runtime_is_one_line(sandbox, options, environment, expected) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("apptainer") or shutil.which("singularity"):
        pytest.skip("Apptainer or Singularity is installed here")
    sandbox.env.update(environment)
    result = run_cli(sandbox.env, "sandbox", "exec", *options, "--workdir", sandbox.workdir,
                     "--", "/bin/touch", "/workdir/ran")  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1
    assert not (sandbox.workdir / "ran").exists()


def test_docker_without_an_engine_is_one_line(sandbox) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed")
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30)
    if probe.returncode == 0:
        pytest.skip("a Docker engine answers here")
    sandbox.env["USE_CONTAINERS"] = "DOCKER"
    result = run_cli(sandbox.env, "sandbox", "exec", "--workdir", sandbox.workdir, "--",
                     "/bin/true")  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.startswith(
        "sandbox-agent: cannot enforce: USE_CONTAINERS=DOCKER: the Docker engine is not running"
    )


FAKE_APPTAINER = """#!/bin/sh
# Stands in for Apptainer to check what the launcher starts, not what Apptainer does
# (real runs need the real tool): it answers `version`, then records its argv, the
# cgroups it runs in, its uid and the agent files it was given to bind.
if [ "$1" = version ]; then echo 1.3.4; exit 0; fi
printf '%s\\n' "$@" > "$RECORD/argv"
cat /proc/self/cgroup > "$RECORD/cgroup"
id -u > "$RECORD/uid"
for word in "$@"; do
  case "$word" in
    *:/.sandbox-agent:ro) files="${word%%:*}"; ls "$files" > "$RECORD/files";
      cp "$files/seccomp.bpf" "$RECORD/seccomp.bpf"; echo "$files" > "$RECORD/dir";;
  esac
done
exit 5
"""


def test_an_image_runtime_is_started_with_its_rendered_argv(sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bin_dir = sandbox.workdir.parent / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apptainer"
    fake.touch(mode=0o755)
    record = sandbox.workdir.parent / "record"
    record.mkdir(mode=0o777)
    record.chmod(0o777)
    policies = Path(sandbox.env["SANDBOX_AGENT_POLICIES"])
    shutil.copy(ROOT / "tests" / "runtime" / "policies" / "images.toml", policies)
    env = {**sandbox.env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    # the launcher passes the runtime no variable of the agent's: the path is written in
    fake.write_text(FAKE_APPTAINER.replace("$RECORD", str(record)))
    result = run_cli(env, "sandbox", "exec", "--runtime", "apptainer", "--policy", "images",
                     "--workdir", sandbox.workdir, "--", "/bin/echo", "hi")  # fmt: skip
    assert result.returncode == 5, result.stderr
    argv = (record / "argv").read_text().splitlines()
    assert argv[:6] == ["exec", "--containall", "--no-privs", "--no-home", "--cleanenv", "--pid"]
    image = argv.index("docker://registry.example.org/alice/el9:2024.1")
    assert argv[image + 1 : image + 5] == ["/usr/bin/python3", "-I", "-S",
                                           "/.sandbox-agent/confine.py"]  # fmt: skip
    assert argv[-3:] == ["--", "/bin/echo", "hi"]
    assert f"{sandbox.workdir}:/workdir" in argv
    # it runs in the job's cgroup, which holds the limits, and never as root
    assert "sandbox-agent-exec-" in (record / "cgroup").read_text()
    assert (record / "uid").read_text().strip() != "0"
    # the agent files it binds: the step and the very program the agent compiled
    assert (record / "files").read_text().split() == ["confine.py", "seccomp.bpf"]
    from sandbox_agent.seccomp.compile import compile_profile

    compiled = compile_profile(ROOT / "policies" / "seccomp" / "default.json")
    assert (record / "seccomp.bpf").read_bytes() == compiled.bpf
    assert not Path((record / "dir").read_text().strip()).exists()  # removed after the run


def _job_cgroups(agent_pid: int) -> list[Path]:
    from sandbox_agent.limits.cgroups import CgroupError, discover

    try:
        hierarchy = discover()
    except CgroupError:
        return []
    roots = hierarchy.roots()
    prefix = f"sandbox-agent-exec-{agent_pid}-"
    return [d for root in roots for d in root.iterdir() if d.name.startswith(prefix)]


def test_stopping_the_agent_tears_the_job_down(sandbox) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("the job's cgroup is looked for as root")
    marker = f"stopme-{os.getpid()}"
    agent = subprocess.Popen(
        [str(SCRIPT), "sandbox", "exec", "--workdir", str(sandbox.workdir), "--", "/bin/bash",
         "-c", f"exec -a {marker} sleep 300"],
        env=sandbox.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _job_cgroups(agent.pid) or not running(marker):
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.05)
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    finally:
        agent.kill()
    assert agent.returncode == 128 + signal.SIGTERM
    assert stderr.endswith(
        "sandbox-agent: stopped by SIGTERM: the job was killed and its cgroup removed\n"
    )
    assert _job_cgroups(agent.pid) == []
    assert running(marker) == []


def test_no_zombie_is_left_behind(sandbox) -> None:  # type: ignore[no-untyped-def]
    # The agent is a subreaper: bwrap's first process comes back to it to be reaped.
    script = f"""
import os, psutil
from pathlib import Path
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import session
from sandbox_agent.runtime.agentproc import harden
from sandbox_agent.runtime.render import render
harden()
effective = compose(load_policy("default", [Path({str(ROOT / "policies")!r})]))
workdir = Path({str(sandbox.workdir)!r})
plan = render("bwrap", effective, ["/bin/true"], workdir=str(workdir), environ={{}})
for _ in range(3):
    assert session.run(plan, workdir=workdir).outcome.returncode == 0
print(sum(c.status() == psutil.STATUS_ZOMBIE for c in psutil.Process().children()))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_the_commands_own_exit_125_is_not_taken_for_a_landlock_failure(sandbox) -> None:  # type: ignore[no-untyped-def]
    result = sandbox("echo 'sandbox-agent confine: a forged line' >&2; exit 125")
    assert result.returncode == 125  # the step confirmed landlock before the command ran


def test_a_landlock_step_that_fails_is_said_and_nothing_runs(sandbox) -> None:  # type: ignore[no-untyped-def]
    # A site profile that forgot the landlock calls: the step cannot apply landlock, so
    # the command must not run, and the exit is not the command's.
    policies = Path(sandbox.env["SANDBOX_AGENT_POLICIES"])
    profile = json.loads((policies / "seccomp" / "default.json").read_text())
    for rule in profile["syscalls"]:
        rule["names"] = [n for n in rule["names"] if not n.startswith("landlock_")]
    (policies / "seccomp" / "nolandlock.json").write_text(json.dumps(profile))
    (policies / "nolandlockcalls.toml").write_text(
        'extends = "default"\n[process]\nseccomp = "seccomp/nolandlock.json"\n'
    )
    result = run_cli(sandbox.env, "sandbox", "exec", "--policy", "nolandlockcalls", "--workdir",
                     sandbox.workdir, "--", "/bin/touch", "/workdir/ran")  # fmt: skip
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "sandbox-agent confine: landlock is unavailable: "
        "landlock_create_ruleset: Operation not permitted"
    )
    assert lines[-1] == ("sandbox-agent: the sandbox failed before the command ran (the reason "
                         "is above); nothing of the command ran")  # fmt: skip
    assert not (sandbox.workdir / "ran").exists()


@pytest.mark.parametrize("runtime", ["apptainer", "singularity", "docker", "podman"])
def test_a_real_image_runtime_runs_the_payload_confined(sandbox, runtime: str) -> None:  # type: ignore[no-untyped-def]
    # Real runs where the tool works; this machine has none, so the plans are checked
    # exactly above and here only where a site or a developer has the tool and an image.
    from sandbox_agent.runtime.choose import available

    found = available(runtime)
    if not found.ok:
        pytest.skip(f"{runtime}: {found.reason}")
    image = os.environ.get("SANDBOX_AGENT_TEST_IMAGE", "")
    if not image.startswith("docker://"):
        pytest.skip("set SANDBOX_AGENT_TEST_IMAGE=docker://NAME to an image the runtime has "
                    "locally, with /usr/bin/python3 in it")  # fmt: skip
    optional = '"namespaces.cgroup"'
    if runtime in ("docker", "podman"):  # the engine's container: see docs/sandbox.md
        optional += ', "namespaces.user", "process.die_with_parent", "process.landlock"'
    policies = Path(sandbox.env["SANDBOX_AGENT_POLICIES"])
    (policies / "real.toml").write_text(
        f'extends = "default"\n[filesystem]\nimage = "{image}"\n'
        f"[optional]\nrequirements = {{ append = [{optional}] }}\n"
    )
    result = run_cli(sandbox.env, "sandbox", "exec", "--runtime", runtime, "--policy", "real",
                     "--workdir", sandbox.workdir, "--", "/bin/sh", "-c",
                     "id -u; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] != "0"
    assert "NoNewPrivs:\t1" in lines and "Seccomp:\t2" in lines
