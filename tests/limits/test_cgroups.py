"""The job's cgroup, on the real kernel: made under the agent's own, limited, the job
placed in it before exec, its use read back, and torn down with a report."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sandbox_agent.limits.cgroups import (
    CgroupError,
    CgroupLimits,
    JobCgroup,
    discover,
    located,
    membership,
    mounts,
)

LIMITS = CgroupLimits(memory=64 * 1024**2, swap=0, pids=32, cpu_cores=1)

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /pilot /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/with\\040space rw,relatime - cgroup2 cgroup2 rw
50 23 0:50 / /proc rw - proc proc rw
"""


def test_mountinfo_and_membership_are_read_exactly() -> None:
    found = mounts(MOUNTINFO)
    assert [(str(m.point), m.root, m.fstype) for m in found] == [
        ("/sys/fs/cgroup/cpu,cpuacct", "/", "cgroup"),
        ("/sys/fs/cgroup/memory", "/pilot", "cgroup"),
        ("/sys/fs/cgroup/with space", "/", "cgroup2"),
    ]
    assert {"cpu", "cpuacct"} <= found[0].controllers
    where = membership("4:memory:/pilot/job\n2:cpu,cpuacct:/a\n0::/user.slice/x\n")
    assert where == {"memory": "/pilot/job", "cpu,cpuacct": "/a", "": "/user.slice/x"}


def test_a_mount_that_does_not_show_the_agent_is_not_used() -> None:
    memory = mounts(MOUNTINFO)[1]  # shows only /pilot of its hierarchy
    assert located(memory, "/pilot/job") == Path("/sys/fs/cgroup/memory/job")
    assert located(memory, "/pilot") == Path("/sys/fs/cgroup/memory")
    assert located(memory, "/pilotx") is None  # a sibling that merely shares the prefix
    assert located(memory, "/other") is None


def test_no_cgroup_filesystem_is_one_reason() -> None:
    with pytest.raises(CgroupError, match="no cgroup2 filesystem holds the agent"):
        discover(prefer="v2", proc_cgroup="", mountinfo="")
    with pytest.raises(CgroupError, match="no v1 controller"):
        discover(prefer="v1", proc_cgroup="", mountinfo="")


def hierarchy_or_skip(prefer: str):  # type: ignore[no-untyped-def]
    try:
        return discover(prefer=prefer)
    except CgroupError as exc:
        pytest.skip(f"no writable cgroup {prefer} here: {exc}")


def start_in(group: JobCgroup, script: str) -> subprocess.Popen[bytes]:
    files = group.procs_files()

    def place() -> None:
        for procs in files:
            with open(procs, "w") as file:
                file.write(str(os.getpid()))

    return subprocess.Popen(["/bin/sh", "-c", script], preexec_fn=place)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_job_cgroup_is_made_inside_the_agents_own_and_removed(version: str) -> None:
    hierarchy = hierarchy_or_skip(version)
    group = hierarchy.create(f"test-made-{os.getpid()}", LIMITS)
    try:
        own = {Path(d).parent for d in group.directories}
        for directory in group.directories:
            assert directory.is_dir()
            assert directory.name == f"sandbox-agent-test-made-{os.getpid()}"
        # every directory is a child of the agent's own directory in its hierarchy
        assert own == set(discover(prefer=version).roots())
    finally:
        report = group.teardown()
    assert report.removed and report.survivors == []
    assert not any(d.exists() for d in group.directories)


def test_v1_limits_are_written_and_read_back() -> None:
    hierarchy = hierarchy_or_skip("v1")
    group = hierarchy.create(f"test-limits-{os.getpid()}", LIMITS)
    try:
        by = group.by_controller  # type: ignore[attr-defined]
        if "memory" in group.enforced:
            assert int((by["memory"] / "memory.limit_in_bytes").read_text()) == LIMITS.memory
        if "swap" in group.enforced:
            memsw = int((by["memory"] / "memory.memsw.limit_in_bytes").read_text())
            assert memsw == LIMITS.memory + LIMITS.swap
        if "pids" in group.enforced:
            assert (by["pids"] / "pids.max").read_text().strip() == "32"
        if "cpu_cores" in group.enforced:
            assert (by["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "100000"
        assert group.enforced  # this host holds at least one limit
    finally:
        group.teardown()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_process_of_the_job_is_inside_and_teardown_kills_leftovers(version: str) -> None:
    hierarchy = hierarchy_or_skip(version)
    group = hierarchy.create(f"test-daemon-{os.getpid()}", LIMITS)
    try:
        # the job leaves a detached daemon behind and exits
        job = start_in(group, "setsid sleep 300 </dev/null >/dev/null 2>&1 & exit 0")
        job.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the daemon has exec'd sleep
            if [_comm(p) for p in group.pids()] == ["sleep"]:
                break
            time.sleep(0.01)
        daemons = group.pids()
        assert len(daemons) == 1
        (daemon,) = daemons
        assert _comm(daemon) == "sleep"
    finally:
        report = group.teardown()
    assert [s.name for s in report.survivors] == ["sleep"]
    assert report.emptied and report.removed
    assert not Path(f"/proc/{daemon}").exists() or _zombie(daemon)
    assert "killed 1 leftover process(es): sleep" in report.summary()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_v1_memory_limit_kills_inside_and_usage_is_read_back() -> None:
    hierarchy = hierarchy_or_skip("v1")
    if "memory" not in hierarchy.enforceable:
        pytest.skip("no v1 memory controller here")
    group = hierarchy.create(f"test-oom-{os.getpid()}", LIMITS)
    try:
        job = start_in(group, "exec /usr/bin/python3 -c 'x = bytearray(256 * 1024 * 1024)'")
        assert job.wait(timeout=60) == -9  # the kernel's OOM killer, inside the job only
        usage = group.usage()
    finally:
        group.teardown()
    assert usage.oom_kills is not None and usage.oom_kills >= 1
    assert usage.memory_peak_bytes is not None
    assert LIMITS.memory * 0.5 < usage.memory_peak_bytes <= LIMITS.memory
    assert usage.cpu_seconds is not None and usage.cpu_seconds > 0


def test_v1_pids_limit_refuses_forks() -> None:
    hierarchy = hierarchy_or_skip("v1")
    if "pids" not in hierarchy.enforceable:
        pytest.skip("no v1 pids controller here")
    group = hierarchy.create(f"test-pids-{os.getpid()}", LIMITS)
    try:
        script = "for i in $(seq 64); do sleep 30 & done 2>/dev/null; echo started; kill 0"
        job = start_in(group, script)
        job.wait(timeout=60)
        usage = group.usage()
    finally:
        group.teardown()
    assert usage.forks_refused is not None and usage.forks_refused > 0


def test_an_existing_cgroup_is_never_reused() -> None:
    hierarchy = hierarchy_or_skip("v1")
    group = hierarchy.create(f"test-twice-{os.getpid()}", LIMITS)
    try:
        with pytest.raises(CgroupError, match="exists already; another job has that name"):
            hierarchy.create(f"test-twice-{os.getpid()}", LIMITS)
    finally:
        report = group.teardown()
    assert report.removed


def test_process_names_in_reports_are_printable() -> None:
    hierarchy = hierarchy_or_skip("v1")
    group = hierarchy.create(f"test-names-{os.getpid()}", LIMITS)
    try:
        # a payload names itself with a newline, to forge a line of the agent's output
        rename = ("import ctypes, time; ctypes.CDLL(None).prctl(15, b'x\\nforged: ok', 0, 0, 0); "
                  "time.sleep(30)")  # fmt: skip
        start_in(group, f'exec /usr/bin/python3 -c "{rename}"')
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "forged" not in " ".join(
            _comm(p) for p in group.pids()
        ):
            time.sleep(0.01)
    finally:
        report = group.teardown()
    assert [s.name for s in report.survivors] == ["x\\x0aforged: ok"]
    assert "\n" not in report.summary()


def test_v2_agent_leaf_is_recognised() -> None:
    from sandbox_agent.limits import cgroup_v2

    try:
        agent = discover(prefer="v2")
    except CgroupError as exc:
        pytest.skip(f"no writable cgroup v2 here: {exc}")
    own = agent.directory  # type: ignore[attr-defined]
    leaf = own / cgroup_v2.AGENT_LEAF
    made = not leaf.exists()
    leaf.mkdir(exist_ok=True)
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        mount = next(m for m in mounts(mountinfo) if m.fstype == "cgroup2")
        inside = "/" + str(leaf.relative_to(mount.point))
        # an agent that moved itself to its leaf on an earlier job makes jobs beside it
        found = cgroup_v2.hierarchy(membership(f"0::{inside}\n"), mounts(mountinfo))
        assert found.directory == own
    finally:
        if made:
            leaf.rmdir()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_sweep_removes_only_empty_cgroups_it_is_told_are_stale(version: str) -> None:
    hierarchy = hierarchy_or_skip(version)
    mine = f"sweep-{os.getpid()}"
    empty = hierarchy.create(f"{mine}-empty", LIMITS)
    busy = hierarchy.create(f"{mine}-busy", LIMITS)
    other = hierarchy.create(f"other-{os.getpid()}", LIMITS)
    sleeper = start_in(busy, "sleep 30")
    try:
        assert hierarchy.sweep(lambda name: name.startswith(mine), older_than=60) == []  # young
        removed = hierarchy.sweep(lambda name: name.startswith(mine), older_than=0)
        assert removed == [f"{mine}-empty"]  # the busy one holds a process: never touched
        assert not any(d.exists() for d in empty.directories)
        assert all(d.exists() for d in busy.directories + other.directories)
    finally:
        sleeper.kill()
        sleeper.wait()
        for group in (busy, other):
            group.teardown()


def _fake_v2(tmp_path: Path, procs: list[int], name: str = "pilot") -> tuple[str, str, Path]:
    """A directory laid out as a delegated v2 cgroup (this host is v1): the agent's
    /proc/self/cgroup and mountinfo lines that place it there."""
    mount = tmp_path / "cgroup"
    own = mount / name
    own.mkdir(parents=True)
    for file, text in (("cgroup.procs", "".join(f"{p}\n" for p in procs)),
                       ("cgroup.type", "domain\n"), ("cgroup.subtree_control", ""),
                       ("cgroup.controllers", "cpu memory pids\n")):  # fmt: skip
        (own / file).write_text(text)
    mountinfo = f"40 23 0:38 / {mount} rw,relatime - cgroup2 cgroup2 rw\n"
    return f"0::/{name}\n", mountinfo, own


def test_a_v2_agent_that_shares_its_cgroup_moves_nothing_and_names_the_others(
    tmp_path: Path,
) -> None:
    from sandbox_agent.limits import cgroup_v2

    proc_cgroup, mountinfo, own = _fake_v2(tmp_path, [1, os.getpid()])
    assert cgroup_v2.enter_leaf(proc_cgroup=proc_cgroup, mountinfo=mountinfo) is None
    assert not (own / cgroup_v2.AGENT_LEAF).exists()  # another's process: nothing moved
    with pytest.raises(CgroupError, match=r"holds 1 process\(es\) that are not the agent's "
                       r"\(.*\[1\]\).*Delegate=yes"):  # fmt: skip
        discover(proc_cgroup=proc_cgroup, mountinfo=mountinfo)


def test_a_pure_v2_host_is_not_explained_in_v1_terms(tmp_path: Path) -> None:
    proc_cgroup, mountinfo, _ = _fake_v2(tmp_path, [1, os.getpid()])
    with pytest.raises(CgroupError) as raised:
        discover(proc_cgroup=proc_cgroup, mountinfo=mountinfo)
    assert "v1" not in str(raised.value)


def test_a_systemd_unit_not_delegated_to_the_agent_is_refused(tmp_path: Path) -> None:
    """systemd rewrites the controllers of a unit it did not delegate: job limits would
    vanish mid-job. Its mark of delegation (the trusted.delegate attribute) is needed."""
    from sandbox_agent.limits import cgroup_v2

    proc_cgroup, mountinfo, own = _fake_v2(tmp_path, [os.getpid()], "pilot.service")
    with pytest.raises(CgroupError, match=r"systemd unit not delegated.*Delegate=yes"):
        discover(proc_cgroup=proc_cgroup, mountinfo=mountinfo)
    assert cgroup_v2.enter_leaf(proc_cgroup=proc_cgroup, mountinfo=mountinfo) is None
    assert not (own / cgroup_v2.AGENT_LEAF).exists()
    try:
        os.setxattr(own, "trusted.delegate", b"1")
    except OSError as exc:
        pytest.skip(f"no trusted.* attributes here ({exc.strerror}): the delegated case")
    assert discover(proc_cgroup=proc_cgroup, mountinfo=mountinfo).version == "v2"


def test_names_that_are_not_utf8_are_read_not_fatal(tmp_path: Path) -> None:
    """A mount point a user named, a process name a payload chose: every command reads
    /proc/self/mountinfo at its start, and teardown names leftovers."""
    from sandbox_agent.limits.cgroups import comm, read_text

    raw = tmp_path / "mountinfo"
    raw.write_bytes(b"50 23 0:50 / /tmp/\xff rw - fuse.x x rw\n")
    assert "/tmp/" in (read_text(raw) or "")
    program = tmp_path / os.fsdecode(b"\xfe\xffname")
    shutil.copy("/bin/sleep", program)
    process = subprocess.Popen([program, "30"])
    try:
        time.sleep(0.1)
        shown = comm(process.pid)
        assert "name" in shown and shown.isprintable(), shown
    finally:
        process.kill()
        process.wait()


def test_a_cgroup_outside_the_agents_namespace_is_not_located() -> None:
    memory = mounts(MOUNTINFO)[1]
    assert located(memory, "/pilot/../../etc") is None
