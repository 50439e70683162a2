"""The launcher gives bwrap the descriptors it opened, whatever numbers they get: the
real numbers may equal the plan's own (10, 11, 12, 13), which once made the launcher
overwrite the seccomp descriptor's number with the report pipe's."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from cli_support import ROOT, shared_workdir

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

SCRIPT = """
import os, sys
from pathlib import Path
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import session
from sandbox_agent.runtime.render import render
# fill every descriptor below {lowest}: the launcher's first one (the seccomp program,
# plan number 10) then gets {lowest}, a number the plan uses for another descriptor
null = os.open("/dev/null", os.O_RDONLY)
for fd in range(3, {lowest}):
    if fd != null:
        os.dup2(null, fd)
for fd in range({lowest}, 40):
    try:
        os.close(fd)
    except OSError:
        pass
effective = compose(load_policy("default", [Path(sys.argv[1])]))
workdir = Path(sys.argv[2])
plan = render("bwrap", effective, ["/bin/true"], workdir=str(workdir), environ={{}})
result = session.run(plan, effective, workdir=workdir)
print(result.outcome.returncode, result.payload_ran)
"""


@pytest.mark.parametrize("lowest", [10, 11, 12, 13])
def test_descriptor_numbers_that_collide_with_the_plans(lowest: int) -> None:
    workdir = shared_workdir()
    try:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT.format(lowest=lowest), str(ROOT / "policies"),
             str(workdir)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)
    assert result.stdout.split() == ["0", "True"], result.stderr
