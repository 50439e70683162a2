"""What a real Podman and a real Docker give the payload, through ``sandbox exec``: each
finding of the first run against real engines, held. The policy is the shipped
production one on a busybox image, its network none (egress needs the JobWrapper to
wait: tests/engines/test_engine_pilot.py).

Podman as root, Docker as root: each container reads back what it was given, and the
host reads back what it left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, SCRIPT, cli_env, run_cli
from engine_support import BUSYBOX, PRELOAD_LINE, PRELOADING, accepted, image

from sandbox_agent.runtime import choose, containers

PIDS = 300
NOFILE = 2048


@pytest.fixture
def site(engine: str) -> Iterator[tuple[dict[str, str], Path]]:
    """A home whose policy ``eng`` runs the busybox image; a work directory as the
    pilot makes one for a root agent (owned by 65534)."""
    base = Path(tempfile.mkdtemp(prefix="sandbox-agent-engine-"))
    base.chmod(0o711)
    home = base / "home"
    shutil.copytree(ROOT / "policies", home / "policies")
    # sandbox exec: the payload starts with its container, which would outlive a killed
    # agent (the pilot's JobWrapper does not): the site accepts that for these tests
    (home / "policies" / "eng.toml").write_text(
        f'extends = "default"\n[filesystem]\nimage = "docker://{image(engine, BUSYBOX)}"\n'
        f'[network]\nmode = "none"\n'
        f"[limits]\npids = {{ default = {PIDS}, max = {PIDS} }}\n"
        f"[process.rlimits]\nnofile = {NOFILE}\n"
        + accepted(engine, "process.die_with_parent")
    )
    workdir = base / "work"
    workdir.mkdir()
    os.chown(workdir, 65534, 65534)
    yield cli_env(home, LANG="C.UTF-8"), workdir
    shutil.rmtree(base, ignore_errors=True)


def execute(env: dict[str, str], engine: str, workdir: Path, *command: str,
            policy: str = "eng") -> subprocess.CompletedProcess[str]:  # fmt: skip
    return run_cli(env, "sandbox", "exec", "--runtime", engine, "--policy", policy,
                   "--workdir", workdir, "--", *command)  # fmt: skip


def test_the_engine_is_found_by_its_version(engine: str) -> None:
    found = choose.available(engine)
    asked = subprocess.run([engine, "version", "--format", "{{.Server.Version}}"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert found.ok, found.reason
    assert found.version == asked.stdout.strip()
    assert found.reason == f"{engine} engine {found.version}"


def test_the_payload_gets_only_what_the_policy_gives(
    engine: str, site: tuple[dict[str, str], Path]
) -> None:
    env, workdir = site
    shown = execute(env, engine, workdir, "env")
    assert shown.returncode == 0, shown.stderr
    variables = dict(line.split("=", 1) for line in shown.stdout.splitlines())
    # the policy's and the sandbox's own; none of the engines' (HOSTNAME, TERM, container)
    assert variables == {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                         "HOME": "/workdir", "TMPDIR": "/workdir"}  # fmt: skip

    script = (
        "echo uid $(id -u); echo sys $(ls -A /sys | wc -l); "
        "echo procsys $(ls -A /proc/sys 2>/dev/null | wc -l); "
        "echo > /proc/sys/kernel/hostname 2>/dev/null && echo sysctl written; "
        "for d in /run /var/tmp /; do touch $d/planted 2>/dev/null && echo wrote $d; done; "
        "grep -E ' /(run|var/tmp) ' /proc/mounts | wc -l | sed 's/^/run-mounts /'; "
        "printf '#!/bin/sh\\necho ran from tmp\\n' > /tmp/s && chmod +x /tmp/s && /tmp/s; "
        "echo nproc $(ulimit -u); echo nofile $(ulimit -n); echo core $(ulimit -c); "
        "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t' ' '; "
        "touch mine && echo workdir written; cat /etc/hosts 2>/dev/null; true"
    )
    shown = execute(env, engine, workdir, "sh", "-c", script)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"uid {1000 if engine == 'podman' else 65534}" in lines
    assert "sys 0" in lines  # /sys is not the host's, nor readable
    assert "sysctl written" not in lines
    if engine == "podman":
        assert "procsys 0" in lines  # masked
    assert not [line for line in lines if line.startswith("wrote")]  # nothing but its own
    assert "run-mounts 0" in lines  # no unbounded tmpfs at /run or /var/tmp
    assert "ran from tmp" in lines  # /tmp allows exec, as on bwrap, on both engines
    assert {f"nofile {NOFILE}", "core 0"} <= set(lines)
    # RLIMIT_NPROC counts a host uid node-wide: the pids limit only on uids of its own
    assert (f"nproc {PIDS}" in lines) is (engine == "podman")
    assert {"CapEff: 0000000000000000", "NoNewPrivs: 1", "Seccomp: 2"} <= set(lines)
    assert "workdir written" in lines
    assert "containers.internal" not in shown.stdout  # the node is not named to the job
    owner = (workdir / "mine").stat().st_uid
    if engine == "podman":  # a host uid of its own range, never root's or a user's
        assert owner >= 2147483647, owner
    else:
        assert owner == 65534


def test_an_image_the_engine_does_not_have_is_refused_in_one_line(
    engine: str, site: tuple[dict[str, str], Path]
) -> None:
    env, workdir = site
    policies = Path(env["SANDBOX_AGENT_HOME"]) / "policies"
    (policies / "absent.toml").write_text(
        'extends = "eng"\n[filesystem]\nimage = "docker://localhost/sandbox-agent-test/absent:1"\n'
    )
    shown = execute(env, engine, workdir, "true", policy="absent")
    assert shown.returncode == 3
    [line] = shown.stderr.splitlines()
    assert "localhost/sandbox-agent-test/absent:1 is not in " in line
    assert f"jobs never pull: {engine} pull or {engine} load it on the node" in line


def test_an_image_s_ld_so_preload_never_reaches_the_agent_s_interpreter(
    engine: str, site: tuple[dict[str, str], Path]
) -> None:
    """The confine step and the JobWrapper run on the host's python3 through its own
    loader, inside the image: the image's /etc/ld.so.preload would load the image's
    code into them before landlock. It is covered: the loader never reads it."""
    env, workdir = site
    policies = Path(env["SANDBOX_AGENT_HOME"]) / "policies"
    (policies / "preload.toml").write_text(
        f'extends = "eng"\n[filesystem]\nimage = "docker://{image(engine, PRELOADING)}"\n'
    )
    shown = execute(env, engine, workdir, "sh", "-c", "wc -c < /etc/ld.so.preload",
                    policy="preload")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "0"  # empty: /dev/null over the image's
    assert PRELOAD_LINE not in shown.stderr and "ld.so" not in shown.stderr, shown.stderr


def running(engine: str, prefix: str) -> list[str]:
    listed = subprocess.run([engine, "ps", "--filter", f"label={containers.LABEL}", "--format",
                             "{{.Names}}"], capture_output=True, text=True, check=True)  # fmt: skip
    return [name for name in listed.stdout.split() if name.startswith(prefix)]


def test_a_killed_agent_leaves_a_container_the_next_agent_sweeps(
    engine: str, site: tuple[dict[str, str], Path]
) -> None:
    """The engine runs the container on after SIGKILL of the agent (and its client): the
    next agent's sweep removes it, by the label that names the dead agent; a live
    agent's container is never touched."""
    env, workdir = site
    live = subprocess.Popen([str(SCRIPT), "sandbox", "exec", "--runtime", engine, "--policy",
                             "eng", "--workdir", str(workdir), "--", "sleep", "600"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    other = workdir.parent / "other"
    other.mkdir()
    os.chown(other, 65534, 65534)
    killed = subprocess.Popen([str(SCRIPT), "sandbox", "exec", "--runtime", engine, "--policy",
                               "eng", "--workdir", str(other), "--", "sleep", "600"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    mine = f"{containers.PREFIX}exec-{killed.pid}-"
    theirs = f"{containers.PREFIX}exec-{live.pid}-"
    try:
        for _ in range(600):
            if running(engine, mine) and running(engine, theirs):
                break
            time.sleep(0.1)
        assert running(engine, mine) and running(engine, theirs)
        # an agent in another PID namespace cannot see these agents: it takes none for dead
        elsewhere = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
             "import os; from sandbox_agent.runtime import containers; "
             f"print(containers.sweep({shutil.which(engine)!r}, environ=os.environ))"],
            capture_output=True, text=True, check=True)  # fmt: skip
        assert elsewhere.stdout.strip() == "[]", elsewhere
        assert running(engine, mine) and running(engine, theirs)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        time.sleep(1)
        assert running(engine, mine), "the engine ran the container on (it is the engine's)"
        swept = containers.sweep(shutil.which(engine) or engine, environ=os.environ)
        assert [name for name in swept if name.startswith(mine)] == swept != []
        assert not running(engine, mine)
        assert running(engine, theirs)  # its agent lives
    finally:
        live.send_signal(signal.SIGTERM)
        live.wait(timeout=60)
        for name in running(engine, mine) + running(engine, theirs):
            subprocess.run([engine, "rm", "-f", name], capture_output=True)
    assert not running(engine, theirs)  # its own agent removed it at teardown


def test_podman_is_not_given_a_work_directory_holding_a_hard_link(
    site: tuple[dict[str, str], Path], engine: str
) -> None:
    """Podman's U option chowns every inode of the work directory to the container's
    uid, following hard links: a root-only file linked in would be the payload's."""
    if engine != "podman":
        pytest.skip("only Podman gives the work directory away (the U option)")
    env, workdir = site
    outside = workdir.parent / "root-only"
    outside.write_text("root's\n")
    outside.chmod(0o600)
    os.link(outside, workdir / "innocent")
    shown = execute(env, engine, workdir, "cat", "innocent")
    assert shown.returncode == 2, shown.stdout
    [line] = shown.stderr.splitlines()
    assert line.endswith("innocent: a hard link; Podman would give it to the container's uid "
                         "(the work directory's U option): remove it")  # fmt: skip
    assert (outside.stat().st_uid, outside.stat().st_mode & 0o777) == (0, 0o600)
