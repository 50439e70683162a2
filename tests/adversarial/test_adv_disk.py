"""A payload that fills the disk and exits within a second, through the real pilot, on a
small real filesystem (a loop-mounted ext4) holding the agent's home and work area, as
root and as an unprivileged pilot.

Before: the monitor's first look came after the job had gone, the agent's output store
met ENOSPC, the pilot exited 3, the queue on the same disk could not record the end,
the job stayed RUNNING, and the next pilot took it and stopped the same way; the job
after it never ran. Now: as root the work directory is a filesystem of the job's size
(the disk never fills); without one (an unprivileged pilot with no usable FUSE, where
the policy lets the monitor hold it) the monitor's last look sees the job outgrew its
size, the job's files go first, and its end is recorded. Either way the job ends with a
clear state, the pilot goes on, and the next job runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import (
    cli_env,
    close_scopes,
    loop_filesystem,
    run_cli,
    shell_script,
    unprivileged_or_skip,
)

MIB = 1 << 20
FILL = ('i=0; while fallocate -l 4M fill$i 2>/dev/null; do i=$((i+1)); done; '
        'echo filled $i; exit 0')  # fmt: skip

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")


@dataclass
class Node:
    disk: Path  # the mounted small filesystem
    home: Path
    program: list[str] | None  # how the CLI runs (None: as root, directly)
    env: dict[str, str]

    def cli(self, *args: object) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args, program=self.program)


def _loop_reason() -> str | None:
    if os.geteuid() != 0:
        return "a loop-mounted test filesystem needs root"
    if not os.path.exists("/dev/loop-control") or shutil.which("mkfs.ext4") is None:
        return "no loop devices or no mkfs.ext4 here"
    return None


@pytest.fixture(params=["root", "nobody"])
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    why = _loop_reason()
    if why:
        pytest.skip(why)
    program: list[str] | None = None
    extra: dict[str, str] = {}
    cleanup: list[Path] = []
    if request.param == "nobody":
        nobody = unprivileged_or_skip("disk")
        program, extra, cleanup = nobody.prefix + nobody.program, nobody.extra, nobody.cgroups
    try:
        with loop_filesystem(768) as disk:
            home = disk / "home"
            home.mkdir()
            if request.param == "nobody":
                os.chown(home, 65534, 65534)
            yield Node(disk, home, program, cli_env(home, **extra))
    finally:
        close_scopes(list(cleanup))


def free(path: Path) -> int:
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def test_a_payload_that_fills_the_disk_and_exits_stops_no_pilot(node: Node) -> None:
    jobs = node.disk / "jobs"
    jobs.mkdir(mode=0o755)
    filler, hello = jobs / "fill.jdl", jobs / "hello.jdl"
    filler.write_text(shell_script(jobs, "fill.sh", FILL) + 'WorkDirectorySize = "20MB";\n')
    hello.write_text('Executable = "/bin/echo";\nArguments = "still here";\n'
                     'WorkDirectorySize = "20MB";\n')  # fmt: skip
    for jdl in (filler, hello):
        submitted = node.cli("submit", jdl)
        assert submitted.returncode == 0, submitted.stderr
    before = free(node.disk)
    result = node.cli("run", "--json", "--lease", "30")
    assert result.returncode == 0, result.stderr + result.stdout  # the pilot went on: never exit 3
    ended = {e["job"]: e for e in map(json.loads, result.stdout.splitlines())
             if e.get("event") == "finished"}  # fmt: skip
    assert set(ended) == {1, 2}, result.stdout
    # the filler ends with a clear state: it outgrew its work directory
    assert ended[1]["state"] == "ERROR_E", ended[1]
    assert "work directory" in ended[1]["detail"]
    assert ended[2]["state"] == "DONE", ended[2]  # the job after it ran
    listed = {j["id"]: j["state"] for j in json.loads(node.cli("jobs", "--json").stdout)}
    assert listed == {1: "ERROR_E", 2: "DONE"}  # nothing stuck RUNNING
    logs = node.cli("logs", "2", "--stream", "stdout")
    assert logs.stdout == "still here\n"
    # nothing of the filler is left on the node's disk
    assert free(node.disk) >= before - 8 * MIB
    assert list((node.home / "work").iterdir()) == []


def test_as_root_the_disk_never_fills(node: Node) -> None:
    """The kernel holds the size from the first byte: while the filler runs, the node's
    disk keeps its free space beyond the work directory's image."""
    if node.program is not None:
        pytest.skip("an unprivileged pilot has no loop device (and here no usable FUSE)")
    jobs = node.disk / "jobs"
    jobs.mkdir(mode=0o755)
    avail = "$(df -B1 --output=avail . | tail -1)"
    # what it saw is said after the fill files are gone: stdout is a file in the same place
    watch = (f"first={avail}; " + FILL.replace("echo filled $i; exit 0",
             f"last={avail}; rm -f fill*; echo filled $i $first $last"))  # fmt: skip
    jdl = jobs / "fill.jdl"
    # (the script's own name matches no fill*)
    jdl.write_text(shell_script(jobs, "watch.sh", watch) +
                   'WorkDirectorySize = "20MB";\nOutputErrorE = {"stdout"};\n')  # fmt: skip
    assert node.cli("submit", jdl).returncode == 0
    before = free(node.disk)
    result = node.cli("run", "--json", "--lease", "30")
    assert result.returncode == 0, result.stderr
    said = node.cli("logs", "1", "--stream", "stdout").stdout.split()
    assert said[0] == "filled", result.stdout
    # the job saw its own filesystem: about 20 MB free at the start, none at the end
    first, last = int(said[2]), int(said[3])
    assert 20 * MIB <= first <= 24 * MIB and last < MIB
    assert free(node.disk) >= before - 8 * MIB


def test_outputs_kept_on_the_node_make_no_other_job_fail(node: Node) -> None:
    """One job's kept outputs fill the node's disk: the next job too big for what is
    left is not matched here (left waiting for another node: no node fault counted
    against it, nobody's pilot stopped), and a small job still runs."""
    jobs = node.disk / "jobs"
    jobs.mkdir(mode=0o755)
    texts = {
        "hog": shell_script(jobs, "hog.sh", "head -c 140000000 /dev/zero > big.bin")
        + 'WorkDirectorySize = "150MB";\nOutput = {"big.bin"};\n',
        "innocent": 'Executable = "/bin/true";\nWorkDirectorySize = "150MB";\n',
        "small": 'Executable = "/bin/true";\nWorkDirectorySize = "20MB";\n',
    }
    for name, text in texts.items():
        (jobs / f"{name}.jdl").write_text(text)
        submitted = node.cli("submit", jobs / f"{name}.jdl")
        assert submitted.returncode == 0, submitted.stderr
    result = node.cli("run", "--json", "--lease", "30")
    assert result.returncode == 0, result.stderr + result.stdout
    listed = {j["id"]: j["state"] for j in json.loads(node.cli("jobs", "--json").stdout)}
    assert listed == {1: "DONE", 2: "WAITING", 3: "DONE"}, result.stdout
    last = json.loads(result.stdout.splitlines()[-1])
    assert "job 2: not on this node's disk now" in last["reason"], last
    history = json.loads(node.cli("status", "2", "--json").stdout)["history"]
    assert not any("node fault" in change["detail"] for change in history)
