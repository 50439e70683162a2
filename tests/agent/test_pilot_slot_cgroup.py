"""A pilot started in a batch slot's cgroup, which delegates nothing.

HTCondor (and Slurm) put the job, here the pilot, in a cgroup of the slot's size and
give it no cgroup of its own to manage. The pilot then cannot make a job cgroup, but
the one it runs in already holds every job to the slot's limits: read back at or
below the job's values, each is "held by the slot", and the audit record says so. A
slot looser than the job's limit holds nothing, and the required limit refuses.
Real cgroups, made by root and not delegated, a real unprivileged pilot (uid 65534).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import SCOPES, cli_env, new_scope, nobody_program, run_cli, scope_prefix
from pilot_support import record

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

GIB = 1 << 30
SLOT = {"memory": GIB, "pids": 512, "cpu_cores": 1}  # at or below default's job limits


def slot_cgroups(memory: int) -> list[Path]:
    """Cgroups a batch system would make for a slot: root's, limits set, nothing
    delegated (the pilot may join them, not write them)."""
    if os.geteuid() != 0:
        pytest.skip("making a slot's cgroup needs root")
    tag = f"sandbox-agent-test-slot-{os.getpid()}"
    if SCOPES:  # cgroup v2 (the test VM): one directory, every controller
        made = new_scope("slot")
        limits = {"memory.max": memory, "memory.swap.max": 0, "pids.max": SLOT["pids"],
                  "cpu.max": "100000 100000"}  # fmt: skip
        for name, value in limits.items():
            (made / name).write_text(str(value))
        return [made]
    roots = {c: Path("/sys/fs/cgroup") / c for c in ("memory", "pids", "cpu")}
    if not all((root / "cgroup.procs").exists() for root in roots.values()):
        pytest.skip("no cgroup v1 memory, pids and cpu hierarchies here")
    made = []
    for root in roots.values():
        directory = root / tag
        directory.mkdir(exist_ok=True)
        made.append(directory)
    memory_dir, pids_dir, cpu_dir = made
    (memory_dir / "memory.limit_in_bytes").write_text(str(memory))
    if (memory_dir / "memory.memsw.limit_in_bytes").exists():
        (memory_dir / "memory.memsw.limit_in_bytes").write_text(str(memory))  # no swap
    (pids_dir / "pids.max").write_text(str(SLOT["pids"]))
    (cpu_dir / "cpu.cfs_period_us").write_text("100000")
    (cpu_dir / "cpu.cfs_quota_us").write_text("100000")
    return made


def remove(directories: list[Path]) -> None:
    for directory in directories:
        for below in sorted(directory.rglob("*"), key=lambda p: -len(p.parts)):
            if below.is_dir():
                below.rmdir()
        directory.rmdir()


@pytest.fixture
def pool() -> Iterator[tuple[list[str], dict[str, str], Path]]:
    how = nobody_program()
    if isinstance(how, str):
        pytest.skip(how)
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-slot-"))
    base.chmod(0o711)
    home = base / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    yield how[0], cli_env(home, **how[1]), home
    shutil.rmtree(base, ignore_errors=True)


def submit(env: dict[str, str], program: list[str], home: Path) -> int:
    jobs = home.parent / "jdl"  # beside the home: nothing of the agent's may be read
    jobs.mkdir(exist_ok=True)
    jobs.chmod(0o755)
    jdl = jobs / "job.jdl"
    (jobs / "job.sh").write_text("#!/bin/sh\necho in the slot\n")
    (jobs / "job.sh").chmod(0o755)
    jdl.write_text('Executable = "job.sh";\n')
    done = run_cli(env, "submit", jdl, program=program)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_the_slots_cgroup_holds_the_jobs_limits(pool) -> None:  # type: ignore[no-untyped-def]
    program, env, home = pool
    cgroups = slot_cgroups(memory=GIB)
    try:
        number = submit(env, program, home)
        ran = run_cli(
            env, "run", "--json", "--lease", "30", program=scope_prefix(cgroups) + program
        )
        assert ran.returncode == 0, ran.stderr
        said = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
        (finished,) = [e for e in said if e["event"] == "finished"]
        assert finished["state"] == "DONE", ran.stdout
        enforcement = record(env, number)["enforcement"]
        assert enforcement["held_by_slot"] == ["cpu_cores", "memory", "pids", "swap"]
        assert enforcement["cgroup"].startswith("no job cgroup")  # the slot's held them
        hows = {r["key"]: r["how"] for r in enforcement["requirements"]}
        assert hows["limits.memory"].startswith(
            f"held by the slot: the cgroup the pilot runs in caps memory at {GIB} "
        )
        assert "caps pids at 512 " in hows["limits.pids"]
        assert set(enforcement["monitored"]) >= {"memory", "pids"}  # and measured, too
    finally:
        remove(cgroups)


def test_a_slot_looser_than_the_job_holds_nothing(pool) -> None:  # type: ignore[no-untyped-def]
    program, env, home = pool
    cgroups = slot_cgroups(memory=64 * GIB)  # above default's 2 GB per job
    try:
        submit(env, program, home)
        ran = run_cli(
            env, "run", "--json", "--lease", "30", program=scope_prefix(cgroups) + program
        )
        assert ran.returncode == 3, ran.stdout + ran.stderr
        assert "limits.memory" in ran.stderr and "cannot hold memory" in ran.stderr
    finally:
        remove(cgroups)
