"""A tool that runs past its time is killed with everything it started."""

from __future__ import annotations

import subprocess
import time

import pytest

from sandbox_agent.toolrun import run_tool


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_timed_out_tool_leaves_no_child_behind(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "child.pid"
    # the tool starts a child that would outlive it, then hangs itself
    script = f"sleep 300 & echo $! > {marker}; sleep 300"
    with pytest.raises(subprocess.TimeoutExpired):
        run_tool(["sh", "-c", script], timeout=1.0, capture_output=True)
    child = int(marker.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the tool's child outlived its timeout"


def test_a_tool_that_ends_in_time_answers_as_subprocess_run_does() -> None:
    done = run_tool(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10,
                    capture_output=True, text=True)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    with pytest.raises(subprocess.CalledProcessError):
        run_tool(["false"], timeout=10, check=True)
