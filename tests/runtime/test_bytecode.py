"""The agent's ready-compiled wrapper files: the sandbox's Python runs them without
compiling the source at every job's start, and falls back to the source when it is
another Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_agent.runtime.launch import bytecode
from sandbox_agent.wrapper import confine

SANDBOX_PYTHON = "/usr/bin/python3"


def planted(tmp_path: Path, source: bytes, compiled_from: bytes) -> Path:
    """``mod.py`` holding ``source``, beside a .pyc compiled from ``compiled_from``: which
    one ran shows in the value."""
    script = tmp_path / "mod.py"
    script.write_bytes(source)
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    pyc = cache / f"mod.{sys.implementation.cache_tag}.pyc"
    pyc.write_bytes(bytecode("mod.py", compiled_from))
    return script


def test_the_in_process_step_runs_the_compiled_code(tmp_path: Path) -> None:
    script = planted(tmp_path, b"VALUE = 'source'\n", b"VALUE = 'compiled'\n")
    code = confine._cached_code(str(script))
    assert code is not None
    space: dict[str, object] = {}
    exec(code, space)
    assert space["VALUE"] == "compiled"


def test_a_pyc_of_another_python_is_ignored(tmp_path: Path) -> None:
    script = planted(tmp_path, b"VALUE = 'source'\n", b"VALUE = 'compiled'\n")
    pyc = next((tmp_path / "__pycache__").iterdir())
    pyc.write_bytes(b"\x00\x00\x0d\x0a" + pyc.read_bytes()[4:])  # another magic number
    assert confine._cached_code(str(script)) is None
    pyc.write_bytes(pyc.read_bytes()[:20])  # truncated
    assert confine._cached_code(str(script)) is None


def test_only_an_unchecked_hash_based_pyc_is_taken(tmp_path: Path) -> None:
    """A timestamp-based or a checked pyc would ask for the source to be compared; the
    step takes only what the agent writes (flags 0b01)."""
    script = planted(tmp_path, b"VALUE = 'source'\n", b"VALUE = 'compiled'\n")
    pyc = next((tmp_path / "__pycache__").iterdir())
    data = pyc.read_bytes()
    for flags in (0b00, 0b11):
        pyc.write_bytes(data[:4] + flags.to_bytes(4, "little") + data[8:])
        assert confine._cached_code(str(script)) is None, flags


def test_the_sandbox_python_imports_the_compiled_sibling(tmp_path: Path) -> None:
    """handoff.py and packaging.py are imported by the wrapper: the import system must
    take the agent's .pyc (unchecked: never compared with the source)."""
    if not Path(SANDBOX_PYTHON).exists():
        pytest.skip(f"no {SANDBOX_PYTHON}")
    tag = subprocess.run([SANDBOX_PYTHON, "-I", "-S", "-c",
                          "import sys, importlib.util; "
                          "print(sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER.hex())"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    import importlib.util

    if tag != [sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER.hex()]:
        pytest.skip(f"{SANDBOX_PYTHON} is another Python ({tag}): it compiles the source")
    planted(tmp_path, b"VALUE = 'source'\n", b"VALUE = 'compiled'\n")
    shown = subprocess.run([SANDBOX_PYTHON, "-I", "-S", "-c",
                            f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import mod; "
                            "print(mod.VALUE)"],
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert shown == "compiled\n"
