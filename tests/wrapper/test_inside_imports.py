"""Everything that runs inside the sandbox lives in src/sandbox_agent/wrapper/: the
JobWrapper, the confine step, the frame codec and the probes. The sandbox's Python has
only its standard library and the files shipped beside them, so no module of the folder
may import anything else: a third-party or a package import would work in the tests
and fail in every job."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from sandbox_agent.runtime import bwrap
from sandbox_agent.runtime.plan import SHIPPED
from sandbox_agent.wrapper.probe import probe_files

INSIDE = Path(__file__).resolve().parents[2] / "src" / "sandbox_agent" / "wrapper"
FILES = sorted(INSIDE.rglob("*.py"))


def imported(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: a relative import cannot run as a file"
            names.append(str(node.module))
    return names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(INSIDE)))
def test_imports_nothing_from_outside_the_folder(path: Path) -> None:
    siblings = {p.stem for p in path.parent.glob("*.py")}
    for name in imported(path):
        top = name.split(".")[0]
        if name == "__future__" or top in sys.stdlib_module_names or top in siblings:
            continue
        # the package's own name for a sibling (tests and the agent import it so)
        assert name.startswith("sandbox_agent.wrapper"), f"{path.name} imports {name}"


def test_the_shipped_list_is_the_folder() -> None:
    """What the launcher ships (plan.SHIPPED, bwrap's JobWrapper files) and the probe
    copies are files of this folder, and every module of it is shipped one way or the
    other."""
    shipped = {Path(str(module.__file__)).resolve() for module in SHIPPED.values()}
    probes = {p.resolve() for p in probe_files()}
    assert all(INSIDE in p.parents for p in shipped | probes)
    assert set(bwrap.WRAPPER_FILES) <= {p.name for p in shipped}
    modules = {p.resolve() for p in FILES if p.name != "__init__.py"}
    assert modules == shipped | probes
