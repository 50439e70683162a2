"""Which agent a container's label names, and whether it is proven gone: a sweep removes
a container only then (runtime/containers.py). Another boot, another PID namespace, a
label this agent did not write: never taken for dead."""

from __future__ import annotations

import os
import subprocess
import sys

from sandbox_agent.runtime import containers


def test_this_agent_is_alive_and_a_dead_pid_is_not() -> None:
    mine = containers.agent_label()
    boot, namespace, pid, start = mine.split(":")
    assert int(pid) == os.getpid() and boot and namespace.isdigit() and start.isdigit()
    assert containers.alive(mine)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    label = containers.agent_label(ended.pid)
    ended.wait()
    assert not containers.alive(label)  # the pid is no process now
    assert not containers.alive(f"{boot}:{namespace}:{pid}:{int(start) + 1}")  # a reused pid


def test_what_this_agent_cannot_see_is_never_taken_for_dead() -> None:
    boot, namespace, _pid, _start = containers.agent_label().split(":")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for label in (
        f"another-boot:{namespace}:{dead.pid}:1",  # another boot, or another host's engine
        f"{boot}:1:{dead.pid}:1",  # another PID namespace (a pilot in a container)
        f"{boot}:{namespace}:{dead.pid}:",  # a start time it could not read
        f"{boot}:{dead.pid}:1",  # a label of another form
        "",
        "not-a-label",
    ):
        assert containers.alive(label), label
