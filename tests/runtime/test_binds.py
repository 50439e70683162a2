"""How the node answers for a path a sandbox binds (runtime/binds.py): a hung mount,
CVMFS's usual failure, must not hang the pilot. A real FUSE mount (squashfuse) whose
daemon is stopped answers nothing; the look gives up in its time and says why."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_agent.agent.pilot import binds_gpus
from sandbox_agent.policy import load_policy
from sandbox_agent.runtime import binds

NEEDS = ("squashfuse", "mksquashfs", "fusermount")


@pytest.fixture
def fuse_mount(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    if os.geteuid() != 0 or any(shutil.which(tool) is None for tool in NEEDS):
        pytest.skip(f"a FUSE mount needs root and {', '.join(NEEDS)}")
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "alienv").write_text("#!/bin/sh\n")
    image = tmp_path / "repo.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(image), "-quiet", "-noappend"], check=True,
                   capture_output=True)  # fmt: skip
    point = tmp_path / "alice.cern.ch"
    point.mkdir()
    daemon = subprocess.Popen(["squashfuse", "-f", str(image), str(point)])
    for _ in range(100):
        if os.path.ismount(point):
            break
        time.sleep(0.05)
    else:
        daemon.kill()
        pytest.skip("squashfuse did not mount here")
    try:
        yield point, daemon.pid
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
        subprocess.run(["fusermount", "-u", "-z", str(point)], check=False)
        daemon.kill()
        daemon.wait()


def test_a_mounted_repository_is_there(fuse_mount: tuple[Path, int]) -> None:
    point, _daemon = fuse_mount
    assert binds.answer(str(point / "bin")) is None
    assert binds.answer(str(point / "nothing")) == "missing"


def test_a_hung_mount_is_an_answer_in_bounded_time(fuse_mount: tuple[Path, int]) -> None:
    point, daemon = fuse_mount
    os.kill(daemon, signal.SIGSTOP)  # the server is gone: the kernel waits for it
    assert binds.answer(str(point / "bin"), timeout=1.0) == "no answer in 1 s (a hung mount)"


def test_a_slot_offers_gpus_only_where_the_policy_binds_them() -> None:
    assert not binds_gpus(load_policy("default"))
    assert binds_gpus(load_policy("gpu"))
