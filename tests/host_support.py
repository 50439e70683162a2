"""A host described by a table, for exact rendering tests: the runtimes ask a ``Host``
what is there (plan.Host), and the tests answer from this table instead of the
machine, so a plan's argv can be compared with a golden file."""

from __future__ import annotations

from dataclasses import dataclass

from sandbox_agent.images import hostpython
from sandbox_agent.images.hostpython import HostPython


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
