"""The wrapper's confine step (``sandbox_agent.wrapper.confine``) in a launch plan: when
it runs, what it is told, and the requirements it meets.

It runs inside the sandbox, with the sandbox's own interpreter, just before the payload:
landlock (writes only beneath the writable paths), and for runtimes that load no
seccomp program themselves, the agent's compiled one. The renderers place it: bwrap
passes it on a descriptor, Apptainer gets it in a bound directory of agent files.
"""

from __future__ import annotations

from collections.abc import Sequence

from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.policy.gate import Requirements
from sandbox_agent.runtime.plan import SourceWord

# The interpreter that runs the step: the sandbox's own. Without one (an image with no
# Python), the step cannot run and its requirements say so.
PYTHON = "/usr/bin/python3"


def landlock_words(
    effective: EffectivePolicy,
    abi: int,
    writable: Sequence[str],
    need: Requirements,
    *,
    no_python: str = "",
) -> list[str] | None:
    """The step's landlock arguments, or None where landlock is off or cannot be had
    (then the gate records it, or refuses when it is required). ``no_python`` says why the sandbox
    has no interpreter for the step, when it is known not to."""
    level = effective.view.process.landlock
    if level == "off":
        return None
    if abi < 1 or no_python:
        why = "this kernel has no landlock" if abi < 1 else no_python
        need.unmet("process.landlock", why, by="wrapper")
        return None
    words = []
    for path in writable:
        words += ["--writable", path]
    how = f"landlock ABI {abi}: writes only beneath " + ", ".join(writable)
    if effective.view.network.mode == "none" and abi >= 4:
        words.append("--no-tcp")
        how += "; no TCP bind or connect"
    if abi >= 6:
        how += "; no abstract unix sockets or signals outside the sandbox"
    need.met("process.landlock", how, by="wrapper")
    return words


def step(
    path: str, words: Sequence[str], variables: Sequence[tuple[str, str]], *,
    confirm: str = "", in_process: bool = False, python: Sequence[str] = (PYTHON,),
    clearenv: bool = False,
) -> list[str]:  # fmt: skip
    """The whole prefix before the payload's argv. The step starts with an empty
    environment and hands ``variables`` to the payload only: they could steer the
    loader of its interpreter (LD_PRELOAD). ``in_process``: the command is a Python
    script (the JobWrapper) the step runs in its own interpreter. ``python``: how the
    sandbox starts that interpreter (inside an image, the host's, through its loader).
    ``clearenv``: the step's own environment (a container engine's) is not passed on."""
    # a SourceWord: the step's source itself, for runtimes that can carry no file in
    prefix = [*python, "-I", "-S", *(["-c"] if isinstance(path, SourceWord) else []), path]
    if confirm:  # the descriptor's word (plan.FdWord)
        prefix += ["--confirm-fd", confirm]
    if clearenv:
        prefix.append("--clearenv")
    if in_process:
        prefix.append("--in-process")
    prefix += list(words)
    prefix += [f"--env={name}={value}" for name, value in variables]
    return [*prefix, "--"]
