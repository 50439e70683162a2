"""The machines of tests/vm boot in the background from the start of the run, and their
tests run last: the emulated kernels take minutes, which the rest of the suite covers.

``inside/`` holds the tests that run in the guest; on this machine they are not
collected (tests/vm/test_kernels.py runs them in each kernel and reads their report)."""

from __future__ import annotations

import os

import pytest

GUEST = os.environ.get("SANDBOX_AGENT_VM_GUEST")
collect_ignore = [] if GUEST else ["inside"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if GUEST:
        return
    booting = [item for item in items if item.path.name == "test_kernels.py"]
    if not booting:
        return
    items[:] = [item for item in items if item not in booting] + booting
    from machine import RUNS

    RUNS.start()
