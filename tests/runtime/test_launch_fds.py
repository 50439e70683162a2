"""The launcher gives bwrap the descriptors it opened, whatever numbers they get: the
real numbers may equal the plan's own (10, 11, 12, 13), which once made the launcher
overwrite the seccomp descriptor's number with the report pipe's."""

from __future__ import annotations

import os
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
result = session.run(plan, workdir=workdir)
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


CMDLINE = """
import os, sys
from pathlib import Path
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import session
from sandbox_agent.runtime.render import render
effective = compose(load_policy("default", [Path(sys.argv[1])]))
workdir = Path(sys.argv[2])
plan = render("bwrap", effective, ["/bin/sh", "-c", "cat /proc/1/cmdline > seen"],
              workdir=str(workdir), environ={})
with open(os.devnull, "wb") as null:
    result = session.run(plan, workdir=workdir, stdout=null, stderr=null)
print(result.outcome.returncode)
"""


def test_bwrap_gets_its_options_on_a_descriptor_and_its_argv_names_none() -> None:
    # The sandbox's pid 1 is a fork of bwrap: its command line is what the payload reads
    # as /proc/1/cmdline. It names no host path (not the work directory) and no option;
    # the rendered plan still holds all of them.
    workdir = shared_workdir()
    try:
        result = subprocess.run(
            [sys.executable, "-c", CMDLINE, str(ROOT / "policies"), str(workdir)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.stdout.split() == ["0"], result.stderr
        seen = (workdir / "seen").read_bytes().split(b"\0")
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)
    assert seen[0].endswith(b"bwrap") and seen[1] == b"--args" and seen[2].isdigit()
    assert seen[3] == b"--" and seen[4:7] == [b"/usr/bin/python3", b"-I", b"-S"]
    assert seen[-4:] == [b"/bin/sh", b"-c", b"cat /proc/1/cmdline > seen", b""]
    assert str(workdir).encode() not in b"\0".join(seen)
    assert not {b"--bind", b"--ro-bind", b"--seccomp", b"--ro-bind-data"} & set(seen)


def test_an_option_with_a_nul_byte_is_refused_not_split() -> None:
    # bwrap splits its --args data at NUL bytes: a value holding one would become two
    # words there (exec would refuse it on the argv).
    from sandbox_agent.policy import compose, load_policy
    from sandbox_agent.runtime.launch import start
    from sandbox_agent.runtime.plan import FixedHost
    from sandbox_agent.runtime.render import render

    effective = compose(load_policy("default", [ROOT / "policies"]))
    host = FixedHost({"/usr": "dir"}, landlock=0)  # no step: the variables are --setenv
    plan = render("bwrap", effective, ["/bin/true"], workdir="/nonexistent", host=host,
                  environ={"LANG": "C\0--bind"})  # fmt: skip
    assert plan.argv[plan.argv.index("LANG") - 1 :][:3] == ("--setenv", "LANG", "C\0--bind")
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="NUL"):
        start(plan)
    assert len(os.listdir("/proc/self/fd")) == before  # every descriptor made was closed
