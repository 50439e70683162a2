"""Running the installed ``sandbox-agent`` console script as a user would, for CLI tests.

Every CLI test goes through ``run_cli``: the real entry point in a subprocess, a private
state directory, and the check that no answer is ever a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "sandbox-agent"
ROOT = Path(__file__).resolve().parents[1]


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: ours, with a private home and no colours."""
    return {**os.environ, "SANDBOX_AGENT_HOME": str(home), "NO_COLOR": "1", **extra}


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout
    assert "Traceback" not in result.stderr


def run_cli(
    env: dict[str, str], *args: object, program: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script (or ``program``) with ``args``; never a traceback."""
    command = (program or [str(SCRIPT)]) + [str(a) for a in args]
    result = subprocess.run(
        command,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        cwd=ROOT,
        env=env,
        check=False,
        timeout=120,
    )
    assert_no_traceback(result)
    return result
