"""What a runtime is given to run a job: the argv, the files beside it, and why.

A launch plan is data: rendering it needs no root and changes nothing, so reviewers
can read it (``policy render``) and tests can compare it exactly (an image is made
ready first, by images.prepare: hashed, and a single file mounted to list its top
level). Each requirement of the policy is listed with how this runtime meets it, or
why it cannot (then the job fails closed unless the site marked the requirement
optional).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sandbox_agent.images import hostpython, tree
from sandbox_agent.images.hostpython import HostPython
from sandbox_agent.wrapper import confine

if TYPE_CHECKING:
    from sandbox_agent.policy.compose import EffectivePolicy


class HostView(Protocol):
    """The few facts about the host a renderer needs."""

    def kind(self, path: str) -> str:
        """'dir', 'file', 'missing', or 'symlink:<target>' (the link's own text)."""
        ...

    def landlock_abi(self) -> int:
        """The kernel's landlock ABI version; 0 without landlock."""
        ...

    def entries(self, directory: str) -> list[tuple[str, str]]:
        """(name, kind) of each entry of ``directory`` (an image's root), kinds as kind()."""
        ...

    def python(self) -> HostPython:
        """The host interpreter the wrapper runs on inside an image; NoHostPython."""
        ...

    def resolve(self, root: str, path: str) -> str | None:
        """The host path of ``path`` inside the image at ``root``, its symlinks followed
        inside the image; None when it leads nowhere."""
        ...


class RealHost:
    def entries(self, directory: str) -> list[tuple[str, str]]:
        return sorted((name, self.kind(os.path.join(directory, name)))
                      for name in os.listdir(directory))  # fmt: skip

    def python(self) -> HostPython:
        return hostpython.find()

    def resolve(self, root: str, path: str) -> str | None:
        return tree.resolve(root, path)

    def landlock_abi(self) -> int:
        return confine.abi()

    def kind(self, path: str) -> str:
        try:
            if os.path.islink(path):
                return "symlink:" + os.readlink(path)
            if os.path.isdir(path):
                return "dir"
            return "file" if os.path.exists(path) else "missing"
        except OSError:
            return "missing"


@dataclass(frozen=True)
class FixedHost:
    """A host described by a table, for exact rendering tests."""

    table: dict[str, str]
    landlock: int = 6
    interpreter: HostPython | None = None

    def landlock_abi(self) -> int:
        return self.landlock

    def entries(self, directory: str) -> list[tuple[str, str]]:
        prefix = directory.rstrip("/") + "/"
        return sorted((path[len(prefix):], kind) for path, kind in self.table.items()
                      if path.startswith(prefix) and "/" not in path[len(prefix):])  # fmt: skip

    def resolve(self, root: str, path: str) -> str | None:
        inside = root.rstrip("/") + path
        return inside if inside in self.table else None

    def python(self) -> HostPython:
        if self.interpreter is None:
            raise hostpython.NoHostPython("this fixed host has no python3")
        return self.interpreter

    def kind(self, path: str) -> str:
        return self.table.get(path, "missing")


@dataclass(frozen=True)
class Requirement:
    key: str  # the policy key
    how: str  # how it is met, or why it cannot be
    met: bool = True
    # who enforces it: the runtime's own flags, the launcher (rlimits, descriptors), the
    # wrapper inside (landlock, session) or the agent (cgroups, monitors)
    by: str = "runtime"


class Unenforceable(ValueError):
    """A required setting this runtime cannot express: the job must not run."""


# Where argv names the launcher's private directory of agent files, until it exists.
AGENT_FILES = "<agent files>"

# Placeholder shown for a value taken from the agent's environment at launch, so a
# rendered plan never carries one of the agent's values.
FROM_AGENT = "<from the agent's environment>"


@dataclass(frozen=True)
class LaunchPlan:
    runtime: str
    argv: tuple[str, ...]
    fds: dict[int, str] = field(default_factory=dict)  # fd inside argv -> what it carries
    # fd inside argv -> what the launcher writes to it: "seccomp" (the compiled
    # program) or "confine" (the source of sandbox_agent.wrapper.confine)
    fd_contents: dict[int, str] = field(default_factory=dict)
    # file name -> what the launcher writes there ("confine", "seccomp"), in a private
    # directory that argv names as AGENT_FILES (runtimes that take no descriptors)
    agent_files: dict[str, str] = field(default_factory=dict)
    requirements: tuple[Requirement, ...] = ()
    seccomp_profile: str = ""  # the OCI JSON profile the plan enforces


class Requirements:
    """Collects how each requirement is met; refuses the unmet ones unless optional."""

    def __init__(self, optional: set[str]) -> None:
        self.optional = optional
        self.items: list[Requirement] = []

    def met(self, key: str, how: str, by: str = "runtime") -> None:
        self.items.append(Requirement(key, how, by=by))

    def unmet(self, key: str, why: str) -> None:
        """``key`` cannot be enforced here: noted if optional, else the job must not run."""
        if key not in self.optional:
            raise Unenforceable(f"{key}: {why}")
        self.items.append(Requirement(key, why, met=False))


def environment(
    effective: EffectivePolicy, environ: Mapping[str, str] | None
) -> list[tuple[str, str]]:
    """The payload's variables: the fixed ones, then the allowed ones the agent has (or a
    placeholder for each when rendering without the agent's environment)."""
    fixed = effective.mapping("process.environment.set")
    out = sorted(fixed.items())
    for name in effective.strings("process.environment.allow"):
        if name in fixed:
            continue
        if environ is None:
            out.append((name, FROM_AGENT))
        elif name in environ:
            out.append((name, environ[name]))
    return out
