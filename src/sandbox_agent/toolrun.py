"""Running a system tool with a time limit, so that nothing it started outlives it.

``subprocess.run(timeout=...)`` kills only the tool itself when time runs out; whatever
the tool had started (a package query under a hung ``podman version``) would run on in
the agent's cgroup after the command ended. Here the tool leads a process group of its
own, and the whole group is killed at the timeout. A tool that ends in time keeps what
it left on purpose (a FUSE daemon serves the mount it made).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any


def run_tool(
    argv: Sequence[str], *, timeout: float, **options: Any
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(argv, timeout=timeout, **options)``, in a new process group that
    is killed whole when the time is up (TimeoutExpired is raised as run raises it)."""
    options.setdefault("stdin", subprocess.DEVNULL)
    if options.pop("capture_output", False):
        options["stdout"] = options["stderr"] = subprocess.PIPE
    check = options.pop("check", False)
    with subprocess.Popen(list(argv), start_new_session=True, **options) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done
