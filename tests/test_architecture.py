"""The layers of docs/architecture.md, held: no package imports from a layer above its
own, no two modules import each other (directly or round a circle), and no module of
src imports another inside a function. Imports only for type checking run nowhere: they
count only for the rule that two packages never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# Each top-level package or module of sandbox_agent, by layer (higher imports lower).
LAYERS = {
    "__main__": 6, "cli": 5,
    "agent": 4, "broker": 4, "selftest": 4, "doctor": 4,
    "runtime": 3, "limits": 3, "hostfacts": 3,
    "policy": 2, "seccomp": 2, "images": 2,
    "jdl": 1, "tokens": 1, "queue": 1, "catalogue": 1, "audit": 1,
    "printable": 0, "readfile": 0, "resolve": 0, "sqlitedb": 0, "toolrun": 0,
    "exitcodes": 0, "home": 0, "__init__": 0,
    # inside the sandbox (standard library only): any layer may ship or read them; the
    # old names of moved modules are aliases of them
    "wrapper": -1, "handoff": -1, "probe": -1,
}  # fmt: skip


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "sandbox_agent").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


class Imports(ast.NodeVisitor):
    def __init__(self, known: dict[str, Path]) -> None:
        self.known, self.top, self.inside = known, set[str](), list[tuple[str, int]]()
        self.typed: set[str] = set()
        self.depth, self.typing = 0, False

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" not in ast.unparse(node.test):
            self.generic_visit(node)
            return
        self.typing = True  # names for mypy alone: held only to the package rule
        for child in node.body:
            self.visit(child)
        self.typing = False
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            self._add(full if full in self.known else str(node.module), node.lineno)

    def _add(self, name: str, line: int) -> None:
        if not name.startswith("sandbox_agent"):
            return
        if self.depth:
            self.inside.append((name, line))
        elif name in self.known:
            (self.typed if self.typing else self.top).add(name)


def graph(typed: bool = False) -> tuple[dict[str, set[str]], list[str]]:
    """Each module's imports of the package at run time (and with ``typed``, those
    for type checking too), and the imports made inside functions."""
    known = modules()
    edges, inside = {}, []
    for name, path in known.items():
        seen = Imports(known)
        seen.visit(ast.parse(path.read_text(), str(path)))
        edges[name] = (seen.top | (seen.typed if typed else set())) - {name}
        inside += [f"{name}:{line} imports {what}" for what, line in seen.inside]
    return edges, inside


def test_every_package_has_a_layer() -> None:
    assert {package(m) for m in modules()} <= set(LAYERS)


def test_no_package_imports_from_a_layer_above() -> None:
    edges, _ = graph()
    upward = [f"{a} -> {b}" for a, targets in edges.items() for b in targets
              if LAYERS[package(b)] > LAYERS[package(a)]]  # fmt: skip
    assert upward == []


def test_no_import_circle() -> None:
    edges, _ = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])
    assert circles == []
    packages: dict[str, set[str]] = {}
    for a, targets in graph(typed=True)[0].items():  # type-only imports count here too
        for b in targets:
            if package(a) != package(b):
                packages.setdefault(package(a), set()).add(package(b))
    both = sorted({tuple(sorted((a, b))) for a in packages for b in packages[a]
                   if a in packages.get(b, set())})  # fmt: skip
    assert both == []


def test_no_import_inside_a_function() -> None:
    _, inside = graph()
    assert inside == []
