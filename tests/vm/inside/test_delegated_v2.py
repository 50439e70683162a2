"""Inside a pure cgroup v2 machine (``tests/vm`` boots one and runs this there): the pilot
as a v2 site starts it, alone in a cgroup delegated to it, as root and as an
unprivileged pilot (uid 65534 owning the directory, its cgroup.procs and
cgroup.subtree_control, as systemd delegates), with and without ``nsdelegate``.

Each command runs in a cgroup of its own (``cli_support.new_scope``); when it ends, the
test fails if anything of it still runs there or any cgroup but the agent's leaf is left.
Every limit the policy takes from the kernel is exceeded by a real job: memory, swap,
the process count and CPU; the monitor's readings come from the v2 files.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import (
    ROOT,
    SCOPES,
    cli_env,
    close_scopes,
    new_scope,
    nobody_program,
    run_cli,
    scope_prefix,
    shell_script,
)

GUEST = os.environ.get("SANDBOX_AGENT_VM_GUEST")
pytestmark = pytest.mark.skipif(
    not GUEST or not SCOPES, reason="runs inside a cgroup v2 machine booted by tests/vm"
)
CGROUP = Path("/sys/fs/cgroup")
MS_REMOUNT = 32

# Small jobs for a slow machine; swap may be asked up to 256 MB (the node has zram swap).
# No network: these jobs need none, and the guest loads only the modules machine.py
# lists (egress would need nf_tables too; tests/agent/test_pilot_network.py covers it).
SITE = """extends = "default"
[network]
mode = "none"
allow = []
[limits]
memory = { default = "64MB" }
pids = { default = 48 }
swap = { default = "0", max = "256MB", enforcement = "kernel" }
workdir_size = { default = "32MB" }
"""
SWAPPING = """extends = "site"
[limits]
swap = { default = "256MB", max = "256MB", enforcement = "kernel" }
"""
BUSY = 'timeout 5 sh -c "while :; do :; done"'
JOBS = {
    # what a job sees of its cgroup: the namespace's root, nothing above it
    "hello": "echo hello; cat /proc/self/cgroup",
    # past its memory: the kernel ends the whole job, the shell that started it too
    "hog": '/usr/bin/python3 -c "x = bytearray(200 << 20)"; echo survived',
    # past its process count: forks refused, counted by pids.events (the sleepers outlive
    # the loop on a slow machine; the job's PID namespace ends them with the shell)
    "forks": "for i in $(seq 80); do sleep 600 & done 2>/dev/null; echo forked",
    # two busy processes with one core: cpu.max holds them to one
    "busy": f"{BUSY} & {BUSY}; wait",
}


def nsdelegate(on: bool) -> None:
    """Remount the hierarchy with or without nsdelegate (system-wide, from init's
    namespace): a cgroup namespace is then a delegation boundary. mount(2) itself:
    mount(8) keeps the options it finds on a remount, so it cannot take one away."""
    libc = ctypes.CDLL(None, use_errno=True)
    data = b"nsdelegate" if on else b""
    if libc.mount(b"none", str(CGROUP).encode(), b"cgroup2", MS_REMOUNT, data) != 0:
        raise OSError(ctypes.get_errno(), f"remount {CGROUP} with {data!r}")
    options = next(line.split()[3] for line in Path("/proc/self/mounts").read_text().splitlines()
                   if line.split()[1] == str(CGROUP))  # fmt: skip
    assert ("nsdelegate" in options.split(",")) is on, options


class Site:
    """A pilot's home on this node: a site policy, the jobs submitted, and the commands
    run as the pilot (root, or uid 65534 in a cgroup delegated to it)."""

    def __init__(self, base: Path, as_nobody: bool) -> None:
        self.home = base / "home"
        self.home.mkdir()
        (self.home / "policies").mkdir()
        shutil.copytree(ROOT / "policies", self.home / "policies", dirs_exist_ok=True)
        (self.home / "policies" / "site.toml").write_text(SITE)
        (self.home / "policies" / "swapping.toml").write_text(SWAPPING)
        self.jdls = base / "jdls"
        self.jdls.mkdir()
        self.env = cli_env(self.home)
        self.program: list[str] | None = None
        self.owner: int | None = None
        if as_nobody:
            how = nobody_program()
            if isinstance(how, str):
                pytest.skip(how)
            self.program, self.owner = how[0], 65534
            self.env.update(how[1])
            for path in (base, self.home, *self.home.rglob("*"), self.jdls):
                os.chown(path, 65534, 65534)

    def jdl(self, name: str, script: str, extra: str = "") -> Path:
        """``name``.jdl running ``script`` from ``name``.sh beside it (staged at submit)."""
        path = self.jdls / f"{name}.jdl"
        executable = shell_script(self.jdls, f"{name}.sh", script)
        path.write_text(f'{executable}Output = {{"stdout@disk=1"}};\nTTL = 600;\n{extra}')
        if self.owner is not None:
            for made in (path, self.jdls / f"{name}.sh"):
                os.chown(made, self.owner, self.owner)
        return path

    def cli(self, *args: object) -> subprocess.CompletedProcess[str]:
        """A command started alone in a fresh cgroup delegated to the pilot."""
        scope = new_scope("pilot", owner=self.owner)
        program = scope_prefix([scope]) + (self.program or [str(ROOT / ".venv/bin/sandbox-agent")])
        try:
            return run_cli(self.env, *args, program=program)
        finally:
            close_scopes([scope])

    def quick(self, *args: object) -> str:
        """A command that makes no cgroup (submit, status, logs), run as root in this
        process: a new interpreter costs seconds on an emulated CPU. Its output."""
        from typer.testing import CliRunner

        from sandbox_agent.cli import app

        done = CliRunner().invoke(app, ["--home", str(self.home), *map(str, args)])
        assert done.exit_code == 0, done.output
        if self.owner is not None:  # what root wrote in the home stays the pilot's
            for path in (self.home, *self.home.rglob("*")):
                os.chown(path, self.owner, self.owner, follow_symlinks=False)
        return done.output

    def record(self, job: int) -> dict[str, Any]:
        """The job's signed audit record, as the pilot wrote it."""
        path = self.home / "storage" / str(job) / "0" / "audit.json"
        found = path if path.exists() else next(self.home.rglob(f"{job}/0/audit.json"))
        record: dict[str, Any] = json.loads(found.read_text())["record"]
        return record


@pytest.fixture(params=["root", "nobody"])
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-v2-"))
    base.chmod(0o755)
    try:
        yield Site(base, request.param == "nobody")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("delegate", [False, True], ids=["plain", "nsdelegate"])
def test_the_pilot_runs_jobs_alone_in_its_delegated_cgroup_and_holds_every_limit(
    site: Site, delegate: bool
) -> None:
    nsdelegate(delegate)
    try:
        jobs = {}
        for name, script in JOBS.items():
            jdl = site.jdl(name, script, "CPUCores = 1;\n" if name == "busy" else "")
            jobs[name] = int(site.quick("submit", jdl).split()[-1])
        ran = site.cli("run", "--json", "--policy", "site")
    finally:
        nsdelegate(False)
    assert ran.returncode == 0, ran.stderr
    said = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    preflight = next(e for e in said if e["event"] == "preflight")
    assert preflight["attacks"] >= 20 and preflight["leaked"] == [], preflight  # proved first
    events = {e["job"]: e for e in said if e["event"] == "finished"}
    assert set(events) == set(jobs.values()), ran.stdout

    hello = events[jobs["hello"]]
    assert hello["state"] == "DONE", hello
    record = site.record(jobs["hello"])
    assert "cgroup v2" in record["enforcement"]["cgroup"], record["enforcement"]
    logs = site.quick("logs", jobs["hello"], "--stream", "stdout").splitlines()
    assert logs[:2] == ["hello", "0::/"], logs  # its own cgroup namespace's root only

    hog = events[jobs["hog"]]
    assert hog["state"].startswith("ERROR"), hog
    usage = site.record(jobs["hog"])["usage"]
    assert usage["oom_kills"] >= 1, usage
    if (CGROUP / "init" / "memory.peak").exists():  # the kernel's own peak (5.19+)
        assert usage["memory_peak_bytes"] >= 60 << 20, usage
        assert not usage["memory_peak_sampled"], usage
    else:  # sampled each second: a spike shorter than that is not seen, and said so
        assert "memory_peak_bytes" not in usage or usage["memory_peak_sampled"], usage
    shown = site.quick("status", jobs["hog"])
    assert "killed: used more memory than its limit" in shown, shown
    assert "the kernel ended the whole job (cgroup v2 memory.oom.group)" in shown
    assert "survived" not in site.quick("logs", jobs["hog"], "--stream", "stdout")

    forks = site.record(jobs["forks"])["usage"]
    assert forks["forks_refused"] >= 1, forks  # pids.events: the kernel refused them
    assert "fork(s) refused at the process limit" in site.quick("status", jobs["forks"])

    busy = site.record(jobs["busy"])["usage"]
    assert busy["cpu_seconds"] <= 1.15 * busy["wall_seconds"], busy  # one core, not two


def test_swap_beyond_memory_is_the_policys_to_give(site: Site) -> None:
    """memory.swap.max: with none, 100 MB in a 64 MB job is killed; with 256 MB of swap
    allowed, the same job swaps and finishes."""
    work = site.home.parent / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    script = "/usr/bin/python3 -c 'x = bytearray(100 << 20); x[::4096] = b\"y\" * len(x[::4096])'"
    denied = site.cli("sandbox", "exec", "--policy", "site", "--workdir", work, "--",
                      "/bin/sh", "-c", f"{script} && echo done")  # fmt: skip
    assert "done" not in denied.stdout
    assert "used more memory than its limit" in denied.stderr, denied.stderr
    allowed = site.cli("sandbox", "exec", "--policy", "swapping", "--workdir", work, "--",
                       "/bin/sh", "-c", f"{script} && echo done")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert "done" in allowed.stdout


def test_doctor_and_selftest_alone_in_a_delegated_cgroup(site: Site) -> None:
    doctor = site.cli("doctor")
    line = next(x for x in doctor.stdout.splitlines() if x.split()[1:2] == ["cgroup"])
    assert line.startswith("OK") and "cgroup v2" in line, doctor.stdout
    # this machine mounts the hierarchy without nsdelegate: doctor says what that costs
    shown = next(x for x in doctor.stdout.splitlines() if x.split()[1:2] == ["nsdelegate"])
    assert shown.startswith("WEAK"), doctor.stdout
    selftest = site.cli("selftest", "--policy", "site")
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr


def test_doctor_names_the_processes_that_share_the_pilots_cgroup() -> None:
    """A pilot started beside another process (a site's wrapper script that did not
    exec it) cannot hand controllers to job cgroups: doctor says so, naming it, and the
    pilot refuses work with the same reason."""
    scope = new_scope("shared")
    partner = subprocess.Popen(["sh", "-c", f"echo $$ > {scope}/cgroup.procs; exec sleep 600"])
    try:
        base = Path(tempfile.mkdtemp(dir="/tmp"))
        base.chmod(0o711)  # the sandbox's uid 65534 reaches the work area
        env = cli_env(base / "home")
        program = [*scope_prefix([scope]), str(ROOT / ".venv/bin/sandbox-agent")]
        doctor = run_cli(env, "doctor", program=program)
        line = next(x for x in doctor.stdout.splitlines() if x.split()[1:2] == ["cgroup"])
        assert line.startswith("MISSING"), doctor.stdout
        assert "sleep[" in doctor.stdout and "Delegate=yes" in doctor.stdout, doctor.stdout
        ran = run_cli(env, "run", program=program)
        assert ran.returncode != 0 and "sleep[" in ran.stderr, ran.stderr
    finally:
        partner.kill()
        partner.wait()
        close_scopes([scope])
