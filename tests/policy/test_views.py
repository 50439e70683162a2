"""The typed view of the effective policy holds exactly the schema's keys, each with the
type its kind says, and the values the settings have."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from sandbox_agent.jdl import load_job
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.policy.schema import FIELDS, LIMITS, Kind
from sandbox_agent.policy.views import View, leaves

ROOT = Path(__file__).resolve().parents[2]
TYPE_OF = {
    Kind.CHOICE: str, Kind.STRING: str, Kind.PATH: str, Kind.BOOL: bool, Kind.INT: int,
    Kind.SIZE: int, Kind.SECONDS: int, Kind.PATHS: tuple[str, ...],
    Kind.NAMES: tuple[str, ...], Kind.MAPPING: Mapping[str, str],
    Kind.TMPFS: tuple[tuple[str, int], ...], Kind.DESTINATIONS: tuple[str, ...],
}  # fmt: skip


def test_the_view_holds_every_key_of_the_schema_and_no_other() -> None:
    held = leaves(View)
    resolved = {f"limits.{name}": int for name in LIMITS}  # a job's limit, resolved
    assert set(held) == set(FIELDS) | set(resolved)
    for key, kind in held.items():
        assert kind == (resolved.get(key) or TYPE_OF[FIELDS[key].kind]), key


def _get(view: Any, key: str) -> Any:
    parts = key.split(".")
    if parts[0] == "limits" and len(parts) == 2 and parts[1] in LIMITS:
        parts.append("value")
    return functools.reduce(getattr, parts, view)


@pytest.mark.parametrize("name", ["base", "default", "strict", "gpu"])
def test_the_view_has_the_settings_values(name: str) -> None:
    job = load_job('Executable = "/bin/true"; CPUCores = 1;')
    effective = compose(load_policy(name, [ROOT / "policies"]), job)
    for key in leaves(View):
        got = _get(effective.view, key)
        expected = effective.value(key)
        if isinstance(got, Mapping):
            assert dict(got) == dict(expected), key
        elif isinstance(got, tuple) and got and isinstance(got[0], tuple):
            assert got == tuple(tuple(pair) for pair in expected), key
        else:
            assert got == expected, key
    with pytest.raises(AttributeError):  # frozen: a renderer cannot change the policy
        effective.view.network.mode = "host"  # type: ignore[misc]
