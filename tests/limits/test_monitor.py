"""The agent's monitor on real processes and real files: what it measures and when it
kills; and which limits go to the cgroup, the monitor, or fail closed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox_agent.limits.enforcement import decide
from sandbox_agent.limits.monitor import Monitor, directory_size
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import bwrap
from sandbox_agent.runtime.plan import FixedHost, Unenforceable

ROOT = Path(__file__).resolve().parents[2]


def test_directory_size_counts_allocation_not_links_or_holes(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"x" * 1024 * 1024)
    with open(tmp_path / "sparse", "wb") as file:  # a hole claims 1 GB, allocates nothing
        file.truncate(1024**3)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more").write_bytes(b"y" * 512 * 1024)
    (tmp_path / "outside").symlink_to("/usr")  # never followed
    size = directory_size(tmp_path)
    assert size is not None
    assert 1.5 * 1024**2 <= size < 2 * 1024**2


def test_too_many_entries_count_as_over(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / str(i)).touch()
    assert directory_size(tmp_path, limit_entries=10) is None
    assert directory_size(tmp_path, limit_entries=100) == 0


def run_watched(script: str, limits: dict[str, int], workdir: Path):  # type: ignore[no-untyped-def]
    process = subprocess.Popen(["/bin/sh", "-c", script], cwd=workdir)
    return Monitor(process, limits, workdir=workdir, cgroup=None, interval=0.1).run()


def test_wall_time_kills(tmp_path: Path) -> None:
    outcome = run_watched("sleep 30", {"wall_time": 1}, tmp_path)
    assert outcome.reason == "wall_time"
    assert outcome.returncode == -9
    assert 1 <= outcome.wall_seconds < 10
    assert outcome.detail == "killed: ran past its wall time (1)"


def test_workdir_size_kills(tmp_path: Path) -> None:
    script = "while true; do head -c 1048576 /dev/zero >> big; sleep 0.05; done"
    outcome = run_watched(script, {"workdir_size": 4 * 1024 * 1024}, tmp_path)
    assert outcome.reason == "workdir_size"
    assert (tmp_path / "big").stat().st_size < 64 * 1024 * 1024


def test_memory_and_pids_fallback_measure_the_whole_tree(tmp_path: Path) -> None:
    # no cgroup: the monitor sums the process tree
    grow = "/usr/bin/python3 -c 'import time; x = bytearray(200 << 20); time.sleep(30)'"
    outcome = run_watched(f"{grow} & wait", {"memory": 100 << 20}, tmp_path)
    assert outcome.reason == "memory"
    outcome = run_watched("for i in 1 2 3 4 5 6; do sleep 30 & done; wait", {"pids": 4}, tmp_path)
    assert outcome.reason == "pids"


def test_a_job_within_its_limits_is_left_alone(tmp_path: Path) -> None:
    outcome = run_watched("echo ok > f; exit 4", {"wall_time": 30, "workdir_size": 1 << 20},
                          tmp_path)  # fmt: skip
    assert (outcome.returncode, outcome.reason) == (4, None)
    assert outcome.detail == "exited with 4"


HOST = FixedHost({"/usr": "dir", "/usr/bin/python3": "file"})


def plan_and_policy(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    shutil.copytree(ROOT / "policies", tmp_path, dirs_exist_ok=True)
    (tmp_path / "p.toml").write_text(text)
    effective = compose(load_policy("p", [tmp_path]))
    return bwrap.render(effective, ["/bin/true"], workdir="/w", host=HOST), effective


ALL = frozenset({"memory", "swap", "pids", "cpu_cores"})


def test_kernel_limits_go_to_the_cgroup_and_the_rest_to_the_monitor(tmp_path: Path) -> None:
    plan, effective = plan_and_policy(tmp_path, 'extends = "default"\n')
    limits = decide(plan, effective, ALL, "the job's cgroup")
    assert limits.kernel == ALL
    assert limits.monitored == {"wall_time", "workdir_size"}
    assert limits.unenforced == () and limits.notes == ()


def test_without_a_cgroup_required_limits_fail_closed(tmp_path: Path) -> None:
    plan, effective = plan_and_policy(tmp_path, 'extends = "default"\n')
    with pytest.raises(Unenforceable, match=r"^limits.cpu_cores: no job cgroup \(x\): it cannot"):
        decide(plan, effective, frozenset(), "no job cgroup (x)")


def test_optional_limits_fall_back_to_the_monitor_and_say_so(tmp_path: Path) -> None:
    text = ('extends = "default"\n[optional]\nrequirements = { append = ["limits.memory", '
            '"limits.pids", "limits.cpu_cores", "limits.swap"] }\n')  # fmt: skip
    plan, effective = plan_and_policy(tmp_path, text)
    limits = decide(plan, effective, frozenset(), "no job cgroup (x)")
    assert limits.kernel == frozenset()
    assert limits.monitored == {"wall_time", "workdir_size", "memory", "pids"}
    assert set(limits.unenforced) == {"limits.cpu_cores", "limits.swap"}
    assert "limits.memory: monitored instead (no job cgroup (x): it cannot hold memory)" in (
        limits.notes
    )


def test_a_limit_with_no_mechanism_fails_closed(tmp_path: Path) -> None:
    text = 'extends = "default"\n[limits]\nworkdir_size = { enforcement = "kernel" }\n'
    plan, effective = plan_and_policy(tmp_path, text)
    with pytest.raises(Unenforceable, match="no kernel mechanism holds workdir_size"):
        decide(plan, effective, ALL, "the job's cgroup")
    text = 'extends = "default"\n[limits]\ncpu_cores = { enforcement = "monitored" }\n'
    plan, effective = plan_and_policy(tmp_path, text)
    with pytest.raises(Unenforceable, match="the agent cannot measure cpu_cores"):
        decide(plan, effective, ALL, "the job's cgroup")


def test_monitor_is_not_fooled_by_a_renamed_process(tmp_path: Path) -> None:
    # the tree is found by parentage, not by name: a child that renames itself counts
    script = "exec -a innocent sleep 30 & exec -a other sleep 30 & wait"
    outcome = run_watched(f"/bin/bash -c '{script}'", {"pids": 2}, tmp_path)
    assert outcome.reason == "pids"
    assert os.path.exists("/proc/self")


def test_namespaces_made_are_those_the_agent_does_not_share() -> None:
    from sandbox_agent.runtime.session import namespaces_made

    own = os.stat("/proc/self/ns/cgroup").st_ino
    report = {"child-pid": os.getpid(), "cgroup-namespace": own, "pid-namespace": 1,
              "mnt-namespace": os.stat("/proc/self/ns/mnt").st_ino, "other": "x"}  # fmt: skip
    # the agent's own cgroup and mount namespaces were not made; the user namespace of
    # the child (here: ourselves) is shared too
    assert namespaces_made(report) == {"pid": 1}
