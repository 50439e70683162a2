"""Policies as data: every value with its origin.

A ``Setting`` is one value and where it came from: ``policies/default.toml:14``,
``jdl:MemorySize``, ``slot:cpu_cores`` or ``builtin``.  List values carry an origin per
item, so a reviewer sees which file added which path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILTIN = "builtin"


class PolicyError(ValueError):
    """A policy file the engine refuses: the message names the file, the line and the fix."""


class PolicyRejection(ValueError):
    """A job the policy will not run (a request above a maximum, a bind it may not ask for)."""


@dataclass(frozen=True)
class Item:
    """One element of a list setting, with the place that put it there."""

    value: Any
    origin: str


@dataclass(frozen=True)
class Setting:
    value: Any  # scalars as they are; lists and mappings as tuples of Item
    origin: str
    # The directory of the file that set it: a path value (process.seccomp) is read there,
    # so a site policy anywhere keeps the profile of the shipped policy it extends.
    directory: Path | None = field(default=None, compare=False)

    def plain(self) -> Any:
        """The value without origins (a list's items as a tuple)."""
        if isinstance(self.value, tuple) and all(isinstance(i, Item) for i in self.value):
            return tuple(i.value for i in self.value)
        return self.value


@dataclass
class Policy:
    """A site policy after ``extends`` was followed: one setting per schema key."""

    name: str
    files: tuple[Path, ...]  # the chain, the root ancestor first
    directory: Path  # the named policy's own directory
    settings: dict[str, Setting] = field(default_factory=dict)

    def __getitem__(self, path: str) -> Setting:
        return self.settings[path]

    def seccomp_path(self) -> Path:
        """The seccomp profile's file: beside the policy file that named it."""
        setting = self.settings["process.seccomp"]
        return (setting.directory or self.directory) / str(setting.value)

    def value(self, path: str) -> Any:
        """The plain value of ``path``; a mapping (environment.set) as a dict."""
        plain = self.settings[path].plain()
        if path == "process.environment.set":
            return dict(plain)
        return plain


def within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies under it (by path components, not text)."""
    if root == "/":
        return True
    return path == root or path.startswith(root.rstrip("/") + "/")
