"""The agent's monitor on real processes and real files: what it measures and when it
kills; and which limits go to the cgroup, the monitor, or fail closed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox_agent.limits.diskuse import deleted_but_open, directory_size
from sandbox_agent.limits.enforcement import decide
from sandbox_agent.limits.monitor import Monitor
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


def test_too_many_entries_too_deep_or_too_slow_count_as_over(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / str(i)).touch()
    assert directory_size(tmp_path, limit_entries=10) is None
    assert directory_size(tmp_path, limit_entries=100) == 0
    assert directory_size(tmp_path, budget=0) is None
    deep = tmp_path / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    assert directory_size(tmp_path, max_depth=3) is None
    assert directory_size(tmp_path, max_depth=5) is not None


def test_data_past_path_max_is_counted(tmp_path: Path) -> None:
    # 25 levels of 200-character names: past PATH_MAX, where a path-based walk fails
    fd = os.open(tmp_path, os.O_RDONLY)
    for _ in range(25):
        os.mkdir("x" * 200, dir_fd=fd)
        inner = os.open("x" * 200, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    data = os.open("data", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
    os.write(data, b"z" * 4 * 1024 * 1024)
    os.close(data)
    os.close(fd)
    size = directory_size(tmp_path)
    assert size is not None and size >= 4 * 1024 * 1024


def test_a_directory_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "d").symlink_to("/usr")  # what a payload swaps in mid-walk
    size = directory_size(tmp_path)
    assert size is not None and size < 64 * 1024


def test_files_deleted_but_held_open_are_found(tmp_path: Path) -> None:
    with open(tmp_path / "hidden", "wb") as held:
        held.write(b"h" * 2 * 1024 * 1024)
        held.flush()
        os.unlink(tmp_path / "hidden")
        device = os.stat(tmp_path).st_dev
        assert directory_size(tmp_path) == 0  # the walk cannot see it
        assert deleted_but_open([os.getpid()], device) >= 2 * 1024 * 1024
    assert deleted_but_open([os.getpid()], device) == 0


def run_watched(script: str, limits: dict[str, int], workdir: Path):  # type: ignore[no-untyped-def]
    process = subprocess.Popen(["/bin/sh", "-c", script], cwd=workdir)
    return Monitor(process, limits, workdir=workdir, cgroup=None, interval=0.1).run()


def test_wall_time_kills(tmp_path: Path) -> None:
    outcome = run_watched("sleep 30", {"wall_time": 1}, tmp_path)
    assert outcome.reason == "wall_time"
    assert outcome.returncode == -9
    assert outcome.detail == "killed: ran past its wall time (1)"


def test_workdir_size_kills(tmp_path: Path) -> None:
    # (the sandbox tests do the same through sandbox exec; this is the monitor alone)
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
    threads = ("/usr/bin/python3 -c 'import threading, time\nfor _ in range(12): "
               "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
               "time.sleep(30)'")  # fmt: skip
    outcome = run_watched(threads, {"pids": 8}, tmp_path)  # threads count, as in pids.max
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
    plan, _ = plan_and_policy(tmp_path, 'extends = "default"\n')
    # the pilot's work directory of its own size holds workdir_size
    limits = decide(plan, ALL | {"workdir_size"}, "the job's cgroup")
    assert limits.kernel == ALL | {"workdir_size"}
    assert limits.monitored == {"wall_time"}
    assert limits.unenforced == () and limits.notes == ()
    # a plain directory (sandbox exec): the default policy lets the monitor measure it
    limits = decide(plan, ALL, "the job's cgroup")
    assert limits.kernel == ALL and limits.monitored == {"wall_time", "workdir_size"}
    (note,) = limits.notes
    assert note.startswith("limits.workdir_size: monitored instead (")


def test_without_a_cgroup_required_limits_fail_closed(tmp_path: Path) -> None:
    plan, _ = plan_and_policy(tmp_path, 'extends = "default"\n')
    with pytest.raises(Unenforceable, match=r"^limits.cpu_cores: no job cgroup \(x\): it cannot"):
        decide(plan, frozenset(), "no job cgroup (x)")


def test_optional_limits_fall_back_to_the_monitor_and_say_so(tmp_path: Path) -> None:
    text = ('extends = "default"\n[optional]\nrequirements = { append = ["limits.memory", '
            '"limits.pids", "limits.cpu_cores", "limits.swap"] }\n')  # fmt: skip
    plan, _ = plan_and_policy(tmp_path, text)
    limits = decide(plan, frozenset(), "no job cgroup (x)")
    assert limits.kernel == frozenset()
    assert limits.monitored == {"wall_time", "workdir_size", "memory", "pids"}
    assert set(limits.unenforced) == {"limits.cpu_cores", "limits.swap"}
    assert "limits.memory: monitored instead (no job cgroup (x): it cannot hold memory)" in (
        limits.notes
    )


def test_a_limit_with_no_mechanism_fails_closed(tmp_path: Path) -> None:
    text = 'extends = "default"\n[optional]\nrequirements = []\n'
    plan, _ = plan_and_policy(tmp_path, text)
    with pytest.raises(Unenforceable, match=r"^limits\.workdir_size: .*filesystem of its own"):
        decide(plan, ALL, "the job's cgroup")
    text = 'extends = "default"\n[limits]\ncpu_cores = { enforcement = "monitored" }\n'
    plan, _ = plan_and_policy(tmp_path, text)
    with pytest.raises(Unenforceable, match="the agent cannot measure cpu_cores"):
        decide(plan, ALL, "the job's cgroup")


def test_monitor_is_not_fooled_by_a_renamed_process(tmp_path: Path) -> None:
    # the tree is found by parentage, not by name: a child that renames itself counts
    script = "exec -a innocent sleep 30 & exec -a other sleep 30 & wait"
    outcome = run_watched(f"/bin/bash -c '{script}'", {"pids": 2}, tmp_path)
    assert outcome.reason == "pids"


def test_namespaces_made_are_those_the_agent_does_not_share() -> None:
    from sandbox_agent.runtime.session import namespaces_made

    own = os.stat("/proc/self/ns/cgroup").st_ino
    report = {"child-pid": os.getpid(), "cgroup-namespace": own, "pid-namespace": 1,
              "mnt-namespace": os.stat("/proc/self/ns/mnt").st_ino, "other": "x"}  # fmt: skip
    # the agent's own cgroup and mount namespaces were not made; the user namespace of
    # the child (here: ourselves) is shared too
    assert namespaces_made(report) == {"pid": 1}


def test_deleted_files_count_toward_the_work_directory(tmp_path: Path) -> None:
    script = "exec 3>hidden; rm hidden; head -c 8388608 /dev/zero >&3; sleep 30"
    outcome = run_watched(script, {"workdir_size": 4 * 1024 * 1024}, tmp_path)
    assert outcome.reason == "workdir_size"
