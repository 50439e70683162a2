"""The real JDLs of ../shared/jdl-real, held to JAliEn's own reading of each, field by
field: what JAliEn's JDL.java (compiled unmodified) made of the same file and submit
arguments is in jalien/NAME.json. The payload's fixed variables (ALIEN_PROC_ID, HOME...)
are held in tests/runtime/test_jobrun.py, since they come from the job, not from its JDL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandbox_agent.jdl import JobSpec, load_job

DATA = Path(__file__).resolve().parents[3] / "shared" / "jdl-real"
READINGS = sorted((DATA / "jalien").glob("*.json")) if (DATA / "jalien").is_dir() else []
pytestmark = pytest.mark.skipif(
    not READINGS,
    reason=f"{DATA} is absent: the real JDLs and JAliEn's reading live beside the project",
)


def _reading(path: Path) -> dict[str, Any]:
    reading: dict[str, Any] = json.loads(path.read_text())
    return reading


def _ours(reading: dict[str, Any]) -> JobSpec:
    name = reading["file"].split("/")[-1]
    text = (DATA / "jdl" / name).read_bytes()
    return load_job(text, source=name, args=list(reading["args"]))


def _jalien_get(reading: dict[str, Any], key: str) -> dict[str, Any] | None:
    """JAliEn's JDL.get: the first stored key equal to ``key`` ignoring case."""
    for entry in reading["jalien_parse"]["entries"]:
        if entry["key"].casefold() == key.casefold():
            value: dict[str, Any] = entry["v"]
            return value
    return None


def _jalien_outputs(reading: dict[str, Any], keys: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Each output entry as JAliEn's ParsedOutput splits it: the names before '@' (an
    archive's name before ':'), blank names dropped, and the options after '@'."""
    found = []
    for key in keys:
        value = _jalien_get(reading, key)
        if value is None:
            continue
        for item in value["value"] if value["type"] == "List" else [value["value"]]:
            names, _, options = item.partition("@")
            archive = None
            if ":" in names:
                archive, _, names = names.partition(":")
            patterns = tuple(n.strip() for n in names.split(",") if n.strip())
            kept = tuple(o.strip() for o in options.split(",") if o.strip())
            found.append((archive, patterns, kept))
    return found


def _our_outputs(spec: JobSpec, sources: tuple[str, ...]) -> list[tuple[Any, ...]]:
    found = []
    for source in sources:
        for o in spec.output_errors if source == "OutputErrorE" else spec.outputs:
            if o.source == source:
                options = tuple(f"{k}={n}" for k, n in o.qos) + o.storage_elements + o.options
                found.append((o.archive, o.patterns, options))
    return found


@pytest.fixture(params=READINGS, ids=[p.name.removesuffix(".json") for p in READINGS])
def pair(request: pytest.FixtureRequest) -> tuple[dict[str, Any], JobSpec]:
    reading = _reading(request.param)
    assert reading["jalien_accepts"]
    return reading, _ours(reading)


def test_all_38_are_read() -> None:
    assert len(READINGS) == 38
    for path in READINGS:
        _ours(_reading(path))  # a JDLError fails here, naming the file and the place


def test_the_executable_and_the_input(pair: tuple[dict[str, Any], JobSpec]) -> None:
    reading, spec = pair
    accessors = reading["jalien_parse"]["accessors"]
    assert spec.executable == accessors["Executable"]
    assert [f.name for f in spec.input_files] == (accessors["InputFiles"] or [])
    data = [d.name for d in spec.input_data] or [d.name for d in spec.input_data_collection]
    assert data == (accessors["InputData"] or [])


def test_the_argument_words(pair: tuple[dict[str, Any], JobSpec]) -> None:
    """JAliEn's JobWrapper splits Arguments on white space; quotes are characters."""
    reading, spec = pair
    assert list(spec.arguments) == reading["jalien_parse"]["accessors"]["ArgumentWords"]


def test_the_packages_cores_and_price(pair: tuple[dict[str, Any], JobSpec]) -> None:
    reading, spec = pair
    accessors = reading["jalien_parse"]["accessors"]
    # JAliEn's map of packages: name::version, keyed by name, the VO_ALICE@ prefix gone
    assert sorted(p.removeprefix("VO_ALICE@") for p in spec.packages) == \
        sorted(accessors["PackagesMap"] or [])  # fmt: skip
    cores, price = accessors["CPUCores"], accessors["Price"]
    assert spec.cpu_cores == (int(cores) if cores is not None else 1)
    assert ("CPUCores" in spec.explicit) == (cores is not None)
    assert spec.price == (float(price) if price is not None else 1.0)


def test_the_outputs(pair: tuple[dict[str, Any], JobSpec]) -> None:
    reading, spec = pair
    keys = ("Output", "OutputFile", "OutputArchive")
    assert _our_outputs(spec, keys) == _jalien_outputs(reading, keys)
    assert _our_outputs(spec, ("OutputErrorE",)) == _jalien_outputs(reading, ("OutputErrorE",))
    assert spec.output_dir == reading["jalien_parse"]["accessors"]["OutputDir"]


def test_the_ttl(pair: tuple[dict[str, Any], JobSpec]) -> None:
    reading, spec = pair
    ttl = reading["jalien_parse"]["accessors"]["TTL"]
    if ttl is None:
        assert "TTL" not in spec.explicit
    else:
        assert spec.ttl == int(ttl)


def test_the_environment_the_payload_gets(pair: tuple[dict[str, Any], JobSpec]) -> None:
    """JAliEn's JobWrapper: ALIEN_JDL_<NAME> for each JDL variable with a value; a list's
    items joined with '##'."""
    reading, spec = pair
    expected = {}
    for name in reading["jalien_parse"]["accessors"]["JDLVariables"] or []:
        value = _jalien_get(reading, name)
        if value is None:
            continue
        text = "##".join(value["value"]) if value["type"] == "List" else str(value["value"])
        expected[f"ALIEN_JDL_{name.upper()}"] = text
    assert spec.environment() == expected


def test_requirements_are_used_only_as_a_bare_expression(
    pair: tuple[dict[str, Any], JobSpec],
) -> None:
    reading, spec = pair
    value = _jalien_get(reading, "Requirements")
    if value is not None and value["type"] == "List":
        assert spec.requirements is None
        assert any("Requirements in braces" in w for w in spec.warnings)
    elif value is not None:
        assert spec.requirements is not None
