"""The pilot with its JobWrapper in real Podman and Docker containers, as JAliEn's
USE_CONTAINERS asks: real jobs to DONE with the hostile probe finding nothing, the
network through the agent's relay, a container nothing outlives, limits read back.

As root, each engine rootful; images made without a registry (tests/engine_support.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE

import pytest
from cli_support import ROOT, SCRIPT, cli_env, run_cli
from engine_support import BUSYBOX, PYTHON, accepted, image
from pilot_support import FETCH, INPUT, REACH, job, pilot, record, world  # noqa: F401

from sandbox_agent.jdl import load_job
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.policy.gate import Unenforceable
from sandbox_agent.runtime import containers, render, session

HELLO = ROOT / "samples" / "hello.jdl"  # a relative Executable, shipped as an input


@pytest.fixture
def home(engine: str) -> Iterator[Path]:
    """A home with the shipped policies and a site policy ``eng``: the production
    default on the busybox image (no Python in it: the wrapper runs on the host's)."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-engine-pilot-"))
    base.chmod(0o711)  # the sandbox's uid 65534 reaches the work area below
    home = base / "home"
    shutil.copytree(ROOT / "policies", home / "policies")
    shutil.copy(ROOT / "samples" / "slot.toml", home / "slot.toml")
    site(home, engine, BUSYBOX, "eng")
    yield home
    shutil.rmtree(base, ignore_errors=True)


def site(home: Path, engine: str, which: str, name: str, extra: str = "") -> None:
    user = accepted(engine)
    (home / "policies" / f"{name}.toml").write_text(
        f'extends = "default"\n[filesystem]\nimage = "docker://{image(engine, which)}"\n'
        f"{user}{extra}"
    )


def labelled(engine: str, home: Path, *, running: bool = False) -> list[str]:
    """The names of the containers the agents of ``home`` labelled (only those running):
    their names hold the home's tag, as their cgroups' do."""
    tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]
    listed = subprocess.run([engine, "ps", *([] if running else ["-a"]), "--format",
                             "{{.Names}}", "--filter", f"label={containers.LABEL}"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return [name for name in listed.stdout.split() if f"-{tag}-" in name]


def events(ran: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]


def test_use_containers_runs_a_real_job_to_done_and_the_probe_finds_nothing(
    engine: str, home: Path
) -> None:
    env = cli_env(home, USE_CONTAINERS=engine.upper())
    submitted = run_cli(env, "submit", HELLO)
    assert submitted.returncode == 0, submitted.stderr
    ran = run_cli(env, "run", "--json", "--policy", "eng", "--once")
    assert ran.returncode == 0, ran.stderr
    seen = {str(e["event"]): e for e in events(ran)}
    assert seen["agent"]["runtime"] == engine
    assert seen["preflight"]["leaked"] == [] and seen["preflight"]["attacks"], seen["preflight"]
    assert (seen["finished"]["state"], seen["finished"]["exit_code"]) == ("DONE", 0)
    logs = run_cli(env, "logs", int(submitted.stdout), "--stream", "stdout")
    assert "Hello" in logs.stdout or "hello" in logs.stdout, logs.stdout
    shown = record(env, int(submitted.stdout))
    assert shown["runtime"]["name"] == engine
    assert shown["runtime"]["container"] == "removed"
    assert shown["runtime"]["argv"][:2] == [shutil.which(engine), "run"]
    # the confine step's word, from inside the container, before the JobWrapper ran
    assert shown["landlock"].startswith("confined: landlock ABI "), shown["landlock"]
    assert shown["image"]["named"] == image(engine, BUSYBOX)
    assert shown["image"]["digest"].startswith("sha256:")
    # the engine's cgroup held them, read back before the handoff
    assert {"memory", "swap", "pids", "cpu_cores"} <= set(shown["enforcement"]["kernel"])
    assert not labelled(engine, home)

    probe = run_cli(env, "selftest", "--runtime", engine, "--policy", "eng", "--json")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    answer = json.loads(probe.stdout)
    rows = answer["attacks"]
    assert rows and answer["leaked"] == [] and answer["host_saw"] == [], answer
    assert not [r for r in rows if r["result"] == "LEAKED"], rows
    result = {r["attack"]: r["result"] for r in rows}
    # the attacks that would change the host are not run outside a user namespace
    own = {"ptrace_init", "write_sys", "host_wide_proc"} if engine == "podman" else set()
    assert all(result[name] == "blocked" for name in {
        "mount_sources", "runtime_argv", "key_file", "init_environ", "tcp_connect",
        "overwrite_runtime", "inherited_fds", "capabilities", *own}), result  # fmt: skip
    if engine == "docker":  # the site accepted what Docker cannot mask: said, not hidden
        assert result["host_wide_proc"] == "granted"


def test_the_site_s_image_comes_from_job_container_path(engine: str, home: Path) -> None:
    """JAliEn's JOB_CONTAINER_PATH: the site's image for the pilot's jobs, over the
    policy's; the audit record says where it came from. A bad one is one line."""
    accepts = accepted(engine)
    (home / "policies" / "plain.toml").write_text(f'extends = "default"\n{accepts}')
    reference = image(engine, BUSYBOX)
    env = cli_env(home, USE_CONTAINERS=engine.upper(), JOB_CONTAINER_PATH=f"docker://{reference}")
    submitted = run_cli(env, "submit", HELLO)
    ran = run_cli(env, "run", "--json", "--policy", "plain", "--once")
    assert ran.returncode == 0, ran.stderr
    seen = {str(e["event"]): e for e in events(ran)}
    assert seen["finished"]["state"] == "DONE", seen
    shown = record(env, int(submitted.stdout))
    assert (shown["image"]["named"], shown["image"]["chosen_by"]) == (
        reference, "environment: JOB_CONTAINER_PATH")
    bad = run_cli({**env, "JOB_CONTAINER_PATH": "docker://Not A Reference"}, "run", "--policy",
                  "plain", "--once")  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == ["sandbox-agent: environment: JOB_CONTAINER_PATH: "
                                       "filesystem.image: 'docker://Not A Reference' is not an "
                                       "image reference"]  # fmt: skip


def test_a_pinned_site_image_runs_and_an_unpinned_one_is_refused(engine: str, home: Path) -> None:
    """images.require_pin holds for an engine's images too: a docker:// image is pinned by
    its id in the engine's store; without a pin the pilot refuses in one line."""
    reference = image(engine, BUSYBOX)
    found = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}}", reference],
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    found = found if found.startswith("sha256:") else f"sha256:{found}"
    pins = home / "policies" / "pinned.toml"
    pins.write_text('extends = "eng"\n[images]\nrequire_pin = true\n')
    env = cli_env(home)
    submitted = run_cli(env, "submit", HELLO)
    refused = run_cli(env, "run", "--runtime", engine, "--policy", "pinned", "--once")
    assert refused.returncode == 3, refused.stderr
    [line] = refused.stderr.splitlines()
    assert f"docker://{reference}: images.require_pin is set and no pin names this image" in line
    pins.write_text(f'extends = "eng"\n[images]\nrequire_pin = true\n'
                    f'pins = {{ "docker://{reference}" = "{found}" }}\n')  # fmt: skip
    ran = run_cli(env, "run", "--json", "--runtime", engine, "--policy", "pinned", "--once")
    assert ran.returncode == 0, ran.stderr
    assert {str(e["event"]): e for e in events(ran)}["finished"]["state"] == "DONE"
    shown = record(env, int(submitted.stdout))
    assert (shown["image"]["digest"], shown["image"]["pinned"]) == (found, True)


def test_a_job_on_the_image_s_python_fetches_its_input_through_the_relay(
    engine: str, home: Path, world: list[str]  # noqa: F811
) -> None:
    """The production policy (egress) in an image of Debian with python3: the job's
    own interpreter downloads its input from an allowed test host through the agent's
    relay; the node, a denied host and the metadata address stay closed."""
    site(home, engine, PYTHON, "deb", '[network]\ndeny = ["10.77.2.0/24"]\n')
    env = cli_env(home)
    runner = [*world, str(SCRIPT)]
    fetch = run_cli(env, "submit", job(home, "fetch", FETCH))
    assert fetch.returncode == 0, fetch.stderr
    event = pilot(env, runner, "--runtime", engine, "--policy", "deb")
    assert (event["state"], event["detail"]) == ("DONE", ""), event
    logs = run_cli(env, "logs", int(fetch.stdout), "--stream", "stdout")
    assert logs.stdout == f"input {hashlib.sha256(INPUT).hexdigest()}\n"
    network = record(env, int(fetch.stdout))["network"]
    assert (network["mode"], network["connections"], network["refused"]) == ("egress", 1, 0)

    reach = run_cli(env, "submit", job(home, "reach", REACH))
    event = pilot(env, runner, "--runtime", engine, "--policy", "deb")
    assert event["state"] == "ERROR_E", event
    said = run_cli(env, "logs", int(reach.stdout), "--stream", "stdout")
    seen = dict(line.split(" ", 1) for line in said.stdout.splitlines())
    assert seen == {"node_loopback": "ConnectionRefusedError", "node": "ConnectionResetError",
                    "denied": "ConnectionResetError", "metadata": "ConnectionResetError",
                    "allowed": "answered"}, said.stdout  # fmt: skip
    assert record(env, int(reach.stdout))["network"]["refused"] == 3


def test_a_killed_pilot_s_container_ends_with_it_and_its_job_runs_again(
    engine: str, home: Path
) -> None:
    """SIGKILL of the pilot mid-job: the engine would run the container on, but the
    JobWrapper's stdin, which the agent held, ends, and it kills the job and itself; the
    job comes back once its lease ends, and runs to DONE."""
    env = cli_env(home)
    sleeper = home.parent / "sleep.jdl"
    sleeper.write_text('Executable = "/bin/sleep";\nArguments = "8";\nTTL = 120;\n')
    assert run_cli(env, "submit", sleeper).returncode == 0
    first = subprocess.Popen([str(SCRIPT), "run", "--json", "--runtime", engine, "--policy",
                              "eng", "--lease", "3", "--once"], env=env, stdout=PIPE,
                             text=True)  # fmt: skip
    assert first.stdout is not None
    try:
        for line in first.stdout:
            if '"event": "started"' in line:
                break
        time.sleep(1.5)  # the wrapper has started the payload
        names = labelled(engine, home, running=True)
        assert len(names) == 1 and names[0].startswith(containers.PREFIX), names
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the JobWrapper's lifeline (its stdin, held by the agent) ended: it killed the job
    for _ in range(100):
        if not labelled(engine, home, running=True):
            break
        time.sleep(0.1)
    assert labelled(engine, home, running=True) == []
    time.sleep(3)  # the dead pilot's lease ends: the job comes back
    ran = run_cli(env, "run", "--json", "--runtime", engine, "--policy", "eng", "--once")
    assert ran.returncode == 0, ran.stderr
    seen = {str(e["event"]): e for e in events(ran)}
    assert seen["agent"]["swept_containers"] in ([], names)  # gone already, or now
    assert (seen["finished"]["state"], seen["finished"]["resubmission"]) == ("DONE", 1)
    assert labelled(engine, home) == []


def test_what_the_container_used_is_recorded_and_its_memory_kill_said(
    engine: str, home: Path
) -> None:
    """The usage in the record is the container's own cgroup's (the engine made it; the
    job's cgroup holds only the client): a payload killed by the kernel at the memory
    limit ends as the agent says such a kill, with the kill counted."""
    limits = "[limits]\nmemory = { default = \"64MB\", max = \"64MB\" }\n"
    site(home, engine, BUSYBOX, "small", limits)
    env = cli_env(home)
    hog = home.parent / "hog"
    hog.mkdir()
    (hog / "hog.sh").write_text("#!/bin/sh\nawk 'BEGIN { s = \"x\"; while (1) s = s s }'\n")
    (hog / "hog.sh").chmod(0o755)
    (hog / "hog.jdl").write_text('Executable = "hog.sh";\nTTL = 120;\n')
    submitted = run_cli(env, "submit", hog / "hog.jdl")
    assert submitted.returncode == 0, submitted.stderr
    ran = run_cli(env, "run", "--json", "--runtime", engine, "--policy", "small", "--once")
    assert ran.returncode == 0, ran.stderr
    finished = {str(e["event"]): e for e in events(ran)}["finished"]
    assert finished["state"] == "ERROR_E", finished
    assert "used more memory than its limit" in finished["detail"], finished
    usage = record(env, int(submitted.stdout))["usage"]
    assert usage["oom_kills"] >= 1, usage
    assert usage["memory_peak_bytes"] > 48 << 20, usage  # near the limit: not the client's


def test_a_limit_the_container_does_not_hold_is_refused_before_the_job_runs(
    engine: str, home: Path
) -> None:
    """The limits are read back from the container's cgroups before the JobWrapper is
    handed its job: a container whose engine set no memory or pids limit (as rootless
    Podman on cgroup v1 does, with a warning) is refused, and removed."""
    site(home, engine, BUSYBOX, "nonet", '[network]\nmode = "none"\n')  # no relay to plumb
    effective = compose(load_policy("nonet", [home / "policies"]), load_job('Executable = "x";'))
    workdir = home.parent / "work"
    workdir.mkdir()
    os.chown(workdir, 65534, 65534)
    name = f"limits-{os.getpid()}"
    plan = render.render(engine, effective, ["unused"], workdir=str(workdir),
                         binary=shutil.which(engine), name=name, wrapper=True)  # fmt: skip
    # the flags an engine ignores, gone (the words the launcher fills, found again)
    argv = list(plan.argv)
    for flag in ("--memory", "--memory-swap", "--pids-limit"):
        at = argv.index(flag)
        del argv[at : at + 2]
    moved = {plan.argv[at]: argv.index(plan.argv[at]) for at, _ in plan.sources_at}
    unheld = dataclasses.replace(
        plan, argv=tuple(argv),
        sources_at=tuple((moved[plan.argv[at]], kind) for at, kind in plan.sources_at),
        files_at=tuple(argv.index(plan.argv[at]) for at in plan.files_at),
    )  # fmt: skip
    released = []
    with pytest.raises(Unenforceable, match=r"limits\.memory: the container's cgroups do not "
                       r"hold memory unlimited \(asked \d+\); pids"):  # fmt: skip
        session.run(unheld, workdir=workdir, name=name, stdin=PIPE,
                    on_ready=lambda: released.append(1))  # fmt: skip
    assert released == []  # the job was never handed over
    gone = subprocess.run([engine, "ps", "-aq", "--filter", f"name={containers.name_for(name)}"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert gone.stdout.strip() == ""
