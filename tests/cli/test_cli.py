"""The installed ``sandbox-agent`` console script, run as a user runs it.

Every test starts the real entry point in a subprocess (never an in-process runner),
so the exit codes, the split between stdout and stderr, and the absence of tracebacks
are what a shell sees.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cli_support import ROOT, SCRIPT, assert_no_traceback, cli_env, run_cli

from sandbox_agent import __version__
from sandbox_agent.jdl import load_job, render_jdl

SAMPLES = sorted((ROOT / "samples").glob("*.jdl"))
VALID = ROOT / "tests" / "jdl" / "corpus" / "valid"
BROKEN = ROOT / "tests" / "jdl" / "corpus" / "broken"
SLOTS = ROOT / "tests" / "jdl" / "slots"
PRODUCTION = VALID / "production_mc.jdl"
CALIBRATION = VALID / "calibration.jdl"
CALIBRATION_ARGS = ["--arg", "544121", "--arg", "cpass0"]

HEADER = re.compile(r"^# (.+): valid; normalized form:$", re.MULTILINE)


@pytest.fixture
def cli(tmp_path: Path):
    """Run the console script with a private state directory; return the result."""
    env = cli_env(tmp_path / "home")

    def run(*args: object, program: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args, program=program)

    return run


def normalized_blocks(stdout: str) -> dict[str, str]:
    """``jdl check`` output as {file: normalized JDL text}."""
    parts = HEADER.split(stdout)
    assert parts[0].strip() == "", f"output before the first header: {parts[0]!r}"
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- version --------------------------------------------------------------------------


def test_script_is_installed() -> None:
    assert SCRIPT.is_file()
    assert os.access(SCRIPT, os.X_OK)


def test_version(cli) -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"sandbox-agent {__version__}"
    assert_no_traceback(result)


def test_version_through_python_m(cli) -> None:
    result = cli("--version", program=[sys.executable, "-m", "sandbox_agent"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"sandbox-agent {__version__}"


# -- jdl check: valid files ---------------------------------------------------------------


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_check_sample(cli, path: Path) -> None:
    result = cli("jdl", "check", rel(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    blocks = normalized_blocks(result.stdout)
    assert list(blocks) == [rel(path)]
    original = load_job(path.read_bytes(), source=str(path))
    assert blocks[rel(path)].strip() == render_jdl(original).strip()
    assert load_job(blocks[rel(path)]) == original


def test_check_all_samples_at_once(cli) -> None:
    assert len(SAMPLES) >= 3
    result = cli("jdl", "check", *(rel(p) for p in SAMPLES))
    assert result.returncode == 0, result.stderr
    blocks = normalized_blocks(result.stdout)
    assert list(blocks) == [rel(p) for p in SAMPLES]
    for path in SAMPLES:
        text = blocks[rel(path)]
        assert load_job(text, source="normalized") == load_job(path.read_bytes())
        # the normalized form is itself normalized
        assert render_jdl(load_job(text)).strip() == text.strip()


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("production_mc.jdl", []),
        ("user_analysis.jdl", []),
        ("calibration.jdl", CALIBRATION_ARGS),
    ],
)
def test_check_corpus_round_trips(cli, name: str, args: list[str]) -> None:
    path = VALID / name
    result = cli("jdl", "check", rel(path), *args)
    assert result.returncode == 0, result.stderr
    text = normalized_blocks(result.stdout)[rel(path)]
    submit_args = args[1::2] or None
    assert load_job(text) == load_job(path.read_bytes(), args=submit_args)


# -- jdl check: broken files ----------------------------------------------------------------

# file -> (line, column): the table the library tests use too
BROKEN_PLACES = {
    f"{name}.jdl": tuple(case["place"])
    for name, case in tomllib.loads((BROKEN / "expected.toml").read_text()).items()
}


def test_every_broken_file_has_an_expected_place() -> None:
    assert sorted(BROKEN_PLACES) == sorted(p.name for p in BROKEN.glob("*.jdl"))


@pytest.mark.parametrize("name", sorted(BROKEN_PLACES))
def test_check_broken_file(cli, name: str) -> None:
    path = BROKEN / name
    line, col = BROKEN_PLACES[name]
    result = cli("jdl", "check", rel(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert_no_traceback(result)

    headline, excerpt, caret = result.stderr.split("\n")[:3]
    match = re.fullmatch(rf"{re.escape(rel(path))}:(\d+):(\d+): (.+)", headline)
    assert match, headline
    assert (int(match.group(1)), int(match.group(2))) == (line, col)

    source_line = path.read_text(encoding="utf-8").split("\n")[line - 1]
    # the excerpt is (a window of) the offending line, and the caret sits under the column
    assert excerpt.startswith("    ") and caret.startswith("    ")
    shown = excerpt[4:]
    start = source_line.find(shown)
    assert start >= 0, (shown, source_line)
    assert caret.strip() == "^"
    assert start + caret.index("^") - 4 == col - 1


def test_check_mix_of_good_and_bad(cli) -> None:
    good1, good2 = SAMPLES[0], SAMPLES[1]
    bad = BROKEN / "missing_value.jdl"
    result = cli("jdl", "check", rel(good1), rel(bad), rel(good2))
    assert result.returncode == 2
    assert_no_traceback(result)
    blocks = normalized_blocks(result.stdout)
    assert list(blocks) == [rel(good1), rel(good2)]
    assert load_job(blocks[rel(good1)]) == load_job(good1.read_bytes())
    assert result.stderr.startswith(f"{rel(bad)}:3:13: ")
    assert rel(good1) not in result.stderr


def test_check_missing_file(cli, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-job.jdl"
    result = cli("jdl", "check", missing)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{missing}: ")
    assert "cannot read" in lines[0]


def test_check_directory(cli, tmp_path: Path) -> None:
    result = cli("jdl", "check", tmp_path)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(tmp_path) in result.stderr


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", id="png"),
        pytest.param(b'Executable = "/bin/echo";\nArguments = "caf\xe9";\n', id="latin1"),
        pytest.param(b'Executable = "/bin/echo";\x00\x00\x00', id="nul-bytes"),
        pytest.param(bytes(range(256)), id="all-bytes"),
    ],
)
def test_check_binary_file(cli, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "binary.jdl"
    path.write_bytes(content)
    result = cli("jdl", "check", path)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stdout == ""
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: ", result.stderr)


def test_check_non_utf8_names_the_place(cli, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jdl"
    path.write_bytes(b'Executable = "/bin/echo";\nArguments = "caf\xe9";\n')
    result = cli("jdl", "check", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}:2:17: ")
    assert "UTF-8" in result.stderr


# -- jdl check --json --------------------------------------------------------------------------


def test_check_json_valid(cli) -> None:
    result = cli("jdl", "check", "--json", rel(PRODUCTION))
    assert result.returncode == 0
    [entry] = json.loads(result.stdout)
    assert entry["file"] == rel(PRODUCTION)
    assert entry["ok"] is True
    spec = entry["spec"]
    assert spec["executable"] == "/alice/cern.ch/user/a/aliprod/LHC24f3/anchorMC_wrapper.sh"
    assert spec["ttl_seconds"] == 80000  # the later of the two TTLs
    assert spec["cpu_cores"] == 8
    assert spec["memory_bytes"] == 8 * 1024**3  # units are binary
    assert spec["packages"] == [
        "VO_ALICE@O2PDPSuite::MC-prod-2024-v3-1",
        "VO_ALICE@O2DPG::prod-202405-01-1",
        "VO_ALICE@jq::v1.6-3",
    ]
    assert spec["split"] == "production:1-100"
    assert spec["type"] == "Job" and spec["user"] == "aliprod"
    assert 'member(other.GridPartitions, "multicore_8")' in spec["requirements"]
    assert "LPMRunNumber" in spec["jdl_variables"]
    assert spec["environment"]["ALIEN_JDL_LPMRUNNUMBER"] == "526641"
    assert [o["archive"] for o in spec["outputs"]][:2] == ["log_archive.zip", "root_archive.zip"]
    assert any("'TTL' is defined again" in w for w in entry["warnings"])
    # the spec in JSON is the spec the library builds
    assert spec == load_job(PRODUCTION.read_bytes(), source=rel(PRODUCTION)).to_json()


def test_check_json_errors_carry_line_and_col(cli, tmp_path: Path) -> None:
    bad = BROKEN / "unbalanced_paren_requirements.jdl"
    missing = tmp_path / "absent.jdl"
    result = cli("jdl", "check", "--json", rel(SAMPLES[0]), rel(bad), missing)
    assert result.returncode == 2
    assert_no_traceback(result)
    good_entry, bad_entry, missing_entry = json.loads(result.stdout)
    assert good_entry["ok"] is True and good_entry["file"] == rel(SAMPLES[0])
    assert bad_entry["ok"] is False and bad_entry["file"] == rel(bad)
    assert (bad_entry["error"]["line"], bad_entry["error"]["col"]) == (4, 87)
    assert "expected ')'" in bad_entry["error"]["message"]
    assert bad_entry["error"]["text"].startswith(f"{rel(bad)}:4:87: ")
    assert missing_entry["ok"] is False
    assert "cannot read" in missing_entry["error"]["message"]
    assert isinstance(missing_entry["error"]["line"], int)


# -- --arg ---------------------------------------------------------------------------------------


def test_arg_substitution(cli) -> None:
    result = cli("jdl", "check", "--json", rel(CALIBRATION), *CALIBRATION_ARGS)
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)
    spec = entry["spec"]
    assert spec["arguments"][:4] == ["--run", "544121", "--pass", "cpass0"]
    assert spec["input_data"][0]["name"] == (
        "/alice/data/2023/LHC23zzh/544121/cpass0/calib/o2tpc_residuals_001.root"
    )
    assert spec["output_dir"].startswith("/alice/data/2023/LHC23zzh/544121/calib/cpass0/")
    assert spec["environment"]["ALIEN_JDL_LPMRUNNUMBER"] == "544121"
    assert spec["environment"]["ALIEN_JDL_LPMPASSNAME"] == "cpass0"
    assert "$1" not in result.stdout and "$2" not in result.stdout


def test_arg_substitution_text_output(cli) -> None:
    result = cli("jdl", "check", rel(CALIBRATION), *CALIBRATION_ARGS)
    assert result.returncode == 0, result.stderr
    assert 'LPMRunNumber = "544121";' in result.stdout
    assert "$1" not in result.stdout


def test_arg_cannot_change_the_structure(cli) -> None:
    # JAliEn writes arguments into the text, where this one would set TTL and X: refused,
    # naming the argument (substitution here is on parsed strings, so it never could)
    hostile = '1"; TTL = 1; X = "'
    result = cli("jdl", "check", "--json", rel(CALIBRATION), "--arg", hostile, "--arg", "p")
    assert result.returncode == 2, result.stdout + result.stderr
    [entry] = json.loads(result.stdout)
    assert entry["ok"] is False
    assert "submit argument 1 holds '\"'" in entry["error"]["message"]


def test_arg_with_separators_stays_a_string(cli) -> None:
    value = "1; TTL = 1 }"
    result = cli("jdl", "check", "--json", rel(CALIBRATION), "--arg", value, "--arg", "p")
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)
    assert entry["spec"]["ttl_seconds"] == 36000
    assert entry["spec"]["environment"]["ALIEN_JDL_LPMRUNNUMBER"] == value


def test_too_few_args(cli) -> None:
    result = cli("jdl", "check", rel(CALIBRATION), "--arg", "544121")
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stdout == ""
    headline = result.stderr.splitlines()[0]
    assert re.fullmatch(
        rf"{re.escape(rel(CALIBRATION))}:\d+:\d+: "
        r"'\$2' needs at least 2 submit argument\(s\), 1 given",
        headline,
    ), headline


def test_without_args_placeholders_stay(cli) -> None:
    result = cli("jdl", "check", rel(CALIBRATION))
    assert result.returncode == 0, result.stderr
    assert 'LPMRunNumber = "$1";' in result.stdout


# -- warnings ---------------------------------------------------------------------------------


def test_duplicate_key_warning_goes_to_stderr(cli) -> None:
    result = cli("jdl", "check", rel(PRODUCTION))
    assert result.returncode == 0
    assert_no_traceback(result)
    warnings = result.stderr.strip().splitlines()
    # its programs are ALICE catalogue paths (JAliEn fetches them), then the duplicate
    assert [w.split(": warning: ")[0] for w in warnings] == [
        f"{rel(PRODUCTION)}:18:14", f"{rel(PRODUCTION)}:35:21", f"{rel(PRODUCTION)}:104:1"]
    assert "'TTL' is defined again (first on line 53)" in warnings[2]
    assert "warning" not in result.stdout
    text = normalized_blocks(result.stdout)[rel(PRODUCTION)]
    assert "TTL = 80000;" in text
    assert load_job(text).ttl == 80000


# -- jdl match ------------------------------------------------------------------------------


def test_match_true(cli) -> None:
    result = cli("jdl", "match", rel(PRODUCTION), "--slot", SLOTS / "production_mc_match.toml")
    assert result.returncode == 0, result.stderr
    assert_no_traceback(result)
    assert result.stdout.splitlines()[0].startswith("TRUE")


@pytest.mark.parametrize(
    ("jdl", "slot", "args"),
    [
        (VALID / "user_analysis.jdl", "user_analysis_match.toml", []),
        (CALIBRATION, "calibration_match.toml", CALIBRATION_ARGS),
        (SAMPLES[0], "scalars.toml", []),  # no Requirements: every slot matches
    ],
    ids=["user-analysis", "calibration", "no-requirements"],
)
def test_match_other_jobs(cli, jdl: Path, slot: str, args: list[str]) -> None:
    result = cli("jdl", "match", rel(jdl), "--slot", SLOTS / slot, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("TRUE")


@pytest.mark.parametrize(
    ("slot", "outcome", "clause", "inputs"),
    [
        pytest.param(
            "production_mc_short_ttl.toml",
            "FALSE",
            "other.TTL > 72000",
            ["other.TTL = 3600"],
            id="short-ttl",
        ),
        pytest.param(
            "production_mc_no_partitions.toml",
            "UNDEFINED",
            'member(other.GridPartitions, "multicore_8")',
            ["other.GridPartitions = undefined"],
            id="no-partitions",
        ),
        pytest.param(
            "production_mc_legacy_ce.toml",
            "FALSE",
            '!(other.CE == "ALICE::LegacySite::CREAM")',
            ['other.CE = "alice::legacysite::cream"'],
            id="legacy-ce",
        ),
        pytest.param(
            "production_mc_ttl_string.toml",
            "ERROR",
            "other.TTL > 72000",
            ['other.TTL = "a day"'],
            id="ttl-string",
        ),
    ],
)
def test_match_not_true(cli, slot: str, outcome: str, clause: str, inputs: list[str]) -> None:
    result = cli("jdl", "match", rel(PRODUCTION), "--slot", SLOTS / slot)
    assert result.returncode == 1
    assert_no_traceback(result)
    first, *rest = result.stdout.strip().splitlines()
    assert first.startswith(outcome)
    assert f"decided by: {clause}" in first
    assert [line.strip() for line in rest] == inputs


def test_match_json(cli) -> None:
    slot = SLOTS / "production_mc_short_ttl.toml"
    result = cli("jdl", "match", "--json", rel(PRODUCTION), "--slot", slot)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["file"] == rel(PRODUCTION)
    assert data["slot"] == str(slot)
    assert data["outcome"] == "FALSE"
    assert data["clause"] == "other.TTL > 72000"
    assert data["clause_value"] == "FALSE"
    assert data["inputs"] == {"other.TTL": "3600"}


def test_match_json_true(cli) -> None:
    slot = SLOTS / "production_mc_match.toml"
    result = cli("jdl", "match", rel(PRODUCTION), "--slot", slot, "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["outcome"] == "TRUE"


def test_match_json_undefined(cli) -> None:
    slot = SLOTS / "production_mc_no_partitions.toml"
    result = cli("jdl", "match", "--json", rel(PRODUCTION), "--slot", slot)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["outcome"] == "UNDEFINED"
    assert data["inputs"] == {"other.GridPartitions": "undefined"}


@pytest.mark.parametrize(
    "name",
    [
        "bad_invalid_toml.toml",
        "bad_nested_table.toml",
        "bad_inline_table.toml",
        "bad_date_value.toml",
        "bad_datetime_value.toml",
        "bad_nested_list.toml",
        "no_such_slot.toml",
    ],
)
def test_match_bad_slot(cli, name: str) -> None:
    slot = SLOTS / name
    result = cli("jdl", "match", rel(PRODUCTION), "--slot", slot)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{slot}: ")


def test_match_non_utf8_slot(cli, tmp_path: Path) -> None:
    slot = tmp_path / "slot.toml"
    slot.write_bytes(b'CE = "caf\xe9"\n')
    result = cli("jdl", "match", rel(PRODUCTION), "--slot", slot)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert len(result.stderr.strip().splitlines()) == 1


def test_match_broken_jdl(cli) -> None:
    bad = BROKEN / "unknown_function_requirements.jdl"
    result = cli("jdl", "match", rel(bad), "--slot", SLOTS / "production_mc_match.toml")
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stderr.startswith(f"{rel(bad)}:3:16: unsupported function 'regexp'")


def test_match_long_attribute_chain_has_no_traceback(cli, tmp_path: Path) -> None:
    # Regression: this crashed with a RecursionError traceback once.
    length = 1000
    lines = ['Executable = "/bin/true";']
    lines += [f"A{i} = A{i + 1};" for i in range(length)]
    lines += [f"A{length} = other.TTL > 1;", "Requirements = A0;"]
    jdl = tmp_path / "chain.jdl"
    jdl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # the JDL itself is valid
    assert cli("jdl", "check", jdl).returncode == 0
    result = cli("jdl", "match", jdl, "--slot", SLOTS / "production_mc_match.toml")
    assert_no_traceback(result)
    assert result.returncode in (0, 1)


# -- usage ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["jdl", "check", "--bogus", "samples/hello.jdl"], id="unknown-option"),
        pytest.param(["--bogus"], id="unknown-top-level-option"),
        pytest.param(["jdl", "frobnicate"], id="unknown-command"),
        pytest.param(["jdl", "check"], id="no-files"),
        pytest.param(["jdl", "match", "samples/hello.jdl"], id="match-without-slot"),
    ],
)
def test_usage_errors(cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert_no_traceback(result)
    assert result.stderr.strip() != ""


@pytest.mark.parametrize(
    "home_args",
    [
        pytest.param(["--home", "{tmp}"], id="separate"),
        pytest.param(["--home={tmp}"], id="equals"),
    ],
)
def test_home_before_subcommand(cli, tmp_path: Path, home_args: list[str]) -> None:
    args = [a.format(tmp=tmp_path / "state") for a in home_args]
    result = cli(*args, "jdl", "check", rel(SAMPLES[0]))
    assert result.returncode == 0, result.stderr
    assert rel(SAMPLES[0]) in normalized_blocks(result.stdout)


# -- review findings -------------------------------------------------------------------


def test_check_refuses_a_device_without_reading_it(cli) -> None:
    result = cli("jdl", "check", "/dev/zero")
    assert result.returncode == 2
    assert result.stderr.strip() == "/dev/zero: not a regular file; give a JDL file"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["jdl", "check"], "Missing argument"),
        (["jdl", "check", "--bogus", "x.jdl"], "No such option: --bogus"),
        (["jdl", "match", "samples/hello.jdl"], "Missing option '--slot'"),
    ],
)
def test_usage_errors_are_one_line(cli, args: list[str], fragment: str) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert_no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sandbox-agent: ") and fragment in lines[0]
    assert "--help" in lines[0]


def test_help_shows_the_home_default(cli) -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "$SANDBOX_AGENT_HOME" in result.stdout


def test_match_json_reports_errors_as_json(cli, tmp_path: Path) -> None:
    bad_jdl = BROKEN / "missing_value.jdl"
    result = cli("jdl", "match", rel(bad_jdl), "--slot", SLOTS / "scalars.toml", "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert (report["error"]["line"], report["error"]["col"]) == (3, 13)
    bad_slot = cli("jdl", "match", rel(PRODUCTION), "--slot", tmp_path / "none.toml", "--json")
    assert bad_slot.returncode == 2
    assert json.loads(bad_slot.stdout)["error"]["message"].startswith(str(tmp_path / "none.toml"))
