"""Realistic JDLs (tests/jdl/corpus/valid, samples/) and broken ones with exact errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from sandbox_agent.jdl import JDLError, OutputSpec, load_job, render_jdl
from sandbox_agent.jdl.units import GIB, MIB

ROOT = Path(__file__).resolve().parents[2]
VALID = ROOT / "tests" / "jdl" / "corpus" / "valid"
BROKEN = ROOT / "tests" / "jdl" / "corpus" / "broken"
SAMPLES = ROOT / "samples"

ALL_VALID = sorted(VALID.glob("*.jdl")) + sorted(SAMPLES.glob("*.jdl"))


def load(path: Path, args: list[str] | None = None):  # type: ignore[no-untyped-def]
    return load_job(path.read_bytes(), source=path.name, args=args)


def test_corpus_is_present() -> None:
    names = {p.name for p in ALL_VALID}
    assert {"production_mc.jdl", "user_analysis.jdl", "calibration.jdl"} <= names
    assert {"hello.jdl", "sleep.jdl", "fail.jdl"} <= names
    assert len(list(BROKEN.glob("*.jdl"))) >= 12


@pytest.mark.parametrize("path", ALL_VALID, ids=lambda p: p.name)
def test_valid_files_round_trip(path: Path) -> None:
    spec = load(path, args=["544121", "cpass0"])
    assert load_job(render_jdl(spec)) == spec


def test_production_mc() -> None:
    spec = load(VALID / "production_mc.jdl")
    assert spec.executable.endswith("/anchorMC_wrapper.sh")
    assert spec.ttl == 80000  # duplicate key: the later "80000" wins over 72000
    # its programs are ALICE catalogue paths: JAliEn fetches them, this agent does not
    assert [w.split(": warning: ")[1][:22] for w in spec.differences] == [
        "Executable: JAliEn fet", "ValidationCommand: JAl"]
    assert [w for w in spec.warnings if w not in spec.differences] == [
        "production_mc.jdl:104:1: warning: 'TTL' is defined again (first on line 53); "
        "the later value wins",
    ]
    assert (spec.cpu_cores, spec.memory_bytes, spec.workdir_bytes) == (8, 8 * GIB, 11000 * MIB)
    assert [o.archive for o in spec.outputs] == [
        "log_archive.zip",
        "root_archive.zip",
        "QC_archive.zip",
        "debug_archive.zip",
    ]
    assert spec.outputs[1] == OutputSpec(
        ("AO2D.root", "*.root"), "root_archive.zip", (("disk", 2),), source="OutputArchive"
    )
    assert spec.output_errors[1] == OutputSpec(
        ("debug_full_archive.tgz",), None, (("disk", 1),), source="OutputErrorE"
    )
    assert spec.output_dir == "/alice/sim/2024/LHC24f3/0/526641/#alien_counter_03i#"
    assert spec.split == "production:1-100"
    assert "#alien_counter#" in spec.split_arguments[0]
    assert all(f.catalogue for f in spec.input_files) and len(spec.input_files) == 3
    env = spec.environment()
    assert len(env) == 17
    assert env["ALIEN_JDL_LPMRUNNUMBER"] == "526641"
    assert env["ALIEN_JDL_LPMPASSNAME"] == "apass7"  # listed as LPMPassName, defined LPMPASSNAME
    assert env["ALIEN_JDL_ANCHOR_SIM_OPTIONS"] == (
        "-gen pythia8 -proc inel -confKey Diamond.width[2]=6.0"
    )
    assert env["ALIEN_JDL_PACKAGES"] == "##".join(spec.packages)  # as JAliEn joins lists
    assert spec.validation_command == "/alice/validation/validation.sh"
    # unmodelled keys are kept, JDL variables among them (their values stay typed)
    extra = dict(spec.extra)
    assert {"JDLPath", "JDLArguments", "JDLProcessor", "LPMChainID", "LPMJobTypeID"} <= extra.keys()
    assert {"LPMRunNumber", "LPMPASSNAME", "ANCHOR_SIM_OPTIONS"} <= extra.keys()
    assert "LPMPASSNAME" in spec.jdl_variables  # listed as LPMPassName: the key's spelling


def test_user_analysis() -> None:
    spec = load(VALID / "user_analysis.jdl")
    assert spec.ttl == 30000
    assert [d.nodownload for d in spec.input_data] == [True, True, False]
    assert spec.input_data_collection[0].name.endswith("/collection.xml")
    assert spec.input_data_collection[0].nodownload
    assert spec.split == "se"
    assert spec.arguments[0] == "--configuration"
    assert spec.memory_bytes == 4 * GIB and spec.cpu_cores == 1


def test_calibration_with_arguments() -> None:
    spec = load(VALID / "calibration.jdl", args=["544121", "cpass0"])
    assert spec.arguments[:4] == ("--run", "544121", "--pass", "cpass0")
    assert spec.input_data[0].name == (
        "/alice/data/2023/LHC23zzh/544121/cpass0/calib/o2tpc_residuals_001.root"
    )
    assert spec.output_dir == (
        "/alice/data/2023/LHC23zzh/544121/calib/cpass0/tpc_vdrift/#alien_counter_03i#"
    )
    assert spec.environment()["ALIEN_JDL_LPMRUNNUMBER"] == "544121"
    assert spec.job_tags == ("comment:TPC vdrift calibration, run 544121, cpass0",)
    assert spec.split == "file" and spec.cpu_cores == 1 and spec.ttl == 36000


def test_calibration_needs_its_arguments() -> None:
    with pytest.raises(JDLError) as info:
        load(VALID / "calibration.jdl", args=["544121"])
    assert "'$2' needs at least 2 submit argument(s), 1 given" in info.value.message


def test_samples_are_runnable_shapes() -> None:
    hello = load(SAMPLES / "hello.jdl")
    assert hello.executable == "hello.sh" and (SAMPLES / "hello.sh").is_file()
    assert [o.patterns for o in hello.outputs] == [("stdout",), ("stderr",), ("hello.txt",)]
    sleep = load(SAMPLES / "sleep.jdl")
    assert (sleep.executable, sleep.arguments) == ("/bin/sleep", ("5",))
    fail = load(SAMPLES / "fail.jdl")
    assert fail.output_errors[0].patterns == ("stdout", "stderr", "fail.log")


# Each broken file: where the error is, and what it says (shared with the CLI tests).
BROKEN_CASES = {
    f"{name}.jdl": (case["place"][0], case["place"][1], case["message"])
    for name, case in tomllib.loads((BROKEN / "expected.toml").read_text()).items()
}


def test_every_broken_file_has_a_case() -> None:
    assert {p.name for p in BROKEN.glob("*.jdl")} == set(BROKEN_CASES)


@pytest.mark.parametrize("name", sorted(BROKEN_CASES))
def test_broken_file_error(name: str) -> None:
    line, col, fragment = BROKEN_CASES[name]
    with pytest.raises(JDLError) as info:
        load(BROKEN / name)
    err = info.value
    assert (err.line, err.col) == (line, col), str(err)
    assert fragment in err.message
    headline, excerpt, caret = str(err).splitlines()
    assert headline.startswith(f"{name}:{line}:{col}: ")
    source_line = (BROKEN / name).read_text().splitlines()[line - 1]
    assert excerpt.strip() and excerpt.strip() in source_line
    assert caret.strip() == "^"


# -- spellings real JDLs use, read as JAliEn reads them ---------------------------------

JALIEN = ROOT / "tests" / "jdl" / "corpus" / "jalien"
SPELLINGS = tomllib.loads((JALIEN / "expected.toml").read_text())


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_a_spelling_real_jdls_use(name: str) -> None:
    expected = SPELLINGS[name]
    spec = load(JALIEN / f"{name}.jdl", expected.get("args"))
    if "outputs" in expected:
        found = [[o.archive or "", list(o.patterns),
                  [f"{k}={n}" for k, n in o.qos] + list(o.storage_elements) + list(o.options)]
                 for o in spec.outputs]  # fmt: skip
        assert found == expected["outputs"]
    if "environment" in expected:
        assert spec.environment() == expected["environment"]
    if "requirements" in expected:
        assert (spec.requirements is not None) == expected["requirements"]
    if "input_files" in expected:
        assert [f.name for f in spec.input_files] == expected["input_files"]
    if "ttl" in expected:
        assert spec.ttl == expected["ttl"]
    if "arguments" in expected:
        assert list(spec.arguments) == expected["arguments"]
    if "split" in expected:
        assert spec.split == expected["split"]
    if "warning" in expected:
        assert any(expected["warning"] in w for w in spec.warnings), spec.warnings
    assert load_job(render_jdl(spec)).outputs == spec.outputs  # the queue keeps it so


def test_every_spelling_has_its_reading() -> None:
    assert {p.stem for p in JALIEN.glob("*.jdl")} == set(SPELLINGS)
