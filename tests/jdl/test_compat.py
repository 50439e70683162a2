"""`jdl check --compat`: where JAliEn would read (or run) a JDL otherwise than this
agent. Each spelling here is one JAliEn reads differently (../shared/jdl-real/snippets
holds JAliEn's own reading of the comment and escape cases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_agent.jdl import load_job
from tests.cli_support import assert_no_traceback, cli_env, run_cli

DIFFERENT = {
    "slash_comment": ('// a comment\nExecutable = "run.sh";\n', (1, 1), "refuses '//'"),
    "block_comment": ('/* note */\nExecutable = "run.sh";\n', (1, 1), "refuses '/* */'"),
    "trailing_hash": ('Executable = "run.sh"; # note\n', (1, 24), "only at the start"),
    "unquoted_items": ('Executable = "run.sh";\nJobTag = {a, b};\n', (2, 10), "one item"),
    "decoded_escape": ('Executable = "run.sh";\nOutputDir = "/a\\"b";\n', (2, 13),
                       "escapes decoded"),
    "storage_option": ('Executable = "run.sh";\nOutputFile = {"x.root@noarchive"};\n',
                       (2, 15), "does not act on it"),
    "catalogue_program": ('Executable = "/alice/cern.ch/user/u/run.sh";\n', (1, 14),
                          'write "LF:/alice/cern.ch/user/u/run.sh"'),
    "catalogue_validation": ('Executable = "run.sh";\nValidationCommand = "/alice/v.sh";\n',
                             (2, 21), "fetches '/alice/v.sh' from its catalogue"),
}  # fmt: skip
ALIKE = {
    # said as warnings, but JAliEn reads them the same way
    "duplicate": 'Executable = "run.sh";\nInputFile = {"LF:/a/x", "LF:/a/x"};\n',
    "ttl_words": 'Executable = "run.sh";\nTTL = "two days";\n',
    "braced_requirements": 'Executable = "run.sh";\nRequirements = {other.TTL > 5};\n',
    "quoted_arguments": 'Executable = "run.sh";\nArguments = "--title it\'s";\n',
    "hash_line": '# a comment\n  # another\nExecutable = "run.sh";\n',
    "escape_in_arguments": 'Executable = "run.sh";\nArguments = "a\\"b";\n',
    "catalogue_program_as_lf": 'Executable = "LF:/alice/cern.ch/user/u/run.sh";\n',
    "program_in_the_sandbox": 'Executable = "/bin/sh";\n',
}


@pytest.mark.parametrize("name", sorted(DIFFERENT))
def test_each_difference_is_named_at_its_place(name: str) -> None:
    text, (line, col), fragment = DIFFERENT[name]
    spec = load_job(text, source="x.jdl")
    assert len(spec.differences) == 1, spec.differences
    assert spec.differences[0].startswith(f"x.jdl:{line}:{col}: warning: ")
    assert fragment in spec.differences[0]
    assert spec.differences[0] in spec.warnings  # the default output says it too


@pytest.mark.parametrize("name", sorted(ALIKE))
def test_what_jalien_reads_alike_is_no_difference(name: str) -> None:
    assert load_job(ALIKE[name]).differences == ()


def test_the_command_lists_differences_and_exits_1(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    differ = tmp_path / "differ.jdl"
    differ.write_text('// a\n/* b */\nExecutable = "/alice/x.sh"; # c\nJobTag = {a, b};\n'
                      'OutputDir = "/a\\"b";\nOutputFile = {"x.root@noarchive"};\n'
                      'ValidationCommand = "/alice/v.sh";\n')  # fmt: skip
    alike = tmp_path / "alike.jdl"
    alike.write_text(ALIKE["duplicate"])
    result = run_cli(env, "jdl", "check", "--compat", differ, alike)
    assert_no_traceback(result)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len([line for line in lines if ": warning: " in line]) == len(DIFFERENT)
    assert f"# {differ}: read otherwise by JAliEn at {len(DIFFERENT)} place(s)" in lines
    assert f"# {alike}: JAliEn reads it alike" in lines
    assert "normalized form" not in result.stdout
    # JAliEn reads it alike: exit 0; a broken file is still exit 2
    assert run_cli(env, "jdl", "check", "--compat", alike).returncode == 0
    (tmp_path / "broken.jdl").write_text('Executable = "a')
    assert run_cli(env, "jdl", "check", "--compat", tmp_path / "broken.jdl").returncode == 2


def test_json_carries_the_differences(tmp_path: Path) -> None:
    path = tmp_path / "x.jdl"
    path.write_text(DIFFERENT["unquoted_items"][0])
    result = run_cli(cli_env(tmp_path / "home"), "jdl", "check", "--json", path)
    assert result.returncode == 0, result.stderr
    assert '"jalien_differences": [' in result.stdout and "one item" in result.stdout
