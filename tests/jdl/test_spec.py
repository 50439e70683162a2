"""The typed job spec: defaults, units, inputs, outputs, variables and value errors."""

from __future__ import annotations

import pytest

from sandbox_agent.jdl import InputData, InputFile, JDLError, OutputSpec, load_job, render_jdl
from sandbox_agent.jdl.spec import DEFAULT_CPU_CORES, DEFAULT_PRICE, DEFAULT_TTL
from sandbox_agent.jdl.units import GIB, MIB, format_size, parse_size


def job(body: str, **kwargs: object) -> object:
    return load_job('Executable = "/bin/true";\n' + body, **kwargs)  # type: ignore[arg-type]


def spec_error(body: str) -> JDLError:
    with pytest.raises(JDLError) as info:
        load_job('Executable = "/bin/true";\n' + body)
    return info.value


def test_defaults() -> None:
    spec = load_job('Executable = "/bin/true";')
    assert spec.arguments == ()
    assert spec.ttl == DEFAULT_TTL == 3600
    assert spec.cpu_cores == DEFAULT_CPU_CORES == 1
    assert spec.price == DEFAULT_PRICE == 1.0
    assert spec.memory_bytes is None and spec.workdir_bytes is None
    assert spec.outputs == () and spec.input_files == () and spec.requirements is None
    assert spec.environment() == {}


# -- arguments ------------------------------------------------------------------------


def test_arguments_are_split_on_white_space_as_jaliens_jobwrapper_splits_them() -> None:
    # JAliEn's JobWrapper: a StringTokenizer on " \t\n\r\f"; quotes, backslashes and
    # shell syntax are plain characters, and no shell ever sees the words
    spec = job('Arguments = " --name \'a b\' \\"c\\" $(rm -rf /) ;\tx\\d  ";')
    assert spec.arguments == ("--name", "\'a", "b\'", '\\"c\\"', "$(rm", "-rf", "/)", ";", "x\\d")
    assert "quotes and backslashes are plain characters" in spec.warnings[0]


def test_an_apostrophe_in_arguments_is_a_character() -> None:
    spec = job('Arguments = "--title it\'s";')  # refused as an open quote when split as a shell
    assert spec.arguments == ("--title", "it\'s")


def test_arguments_as_a_list_are_joined_then_split() -> None:
    assert job('Arguments = { "a b", "c" };').arguments == ("a", "b", "c")


def test_arguments_without_quotes_carry_no_warning() -> None:
    assert job('Arguments = "--run 5 --out=x.root";').warnings == ()


def test_a_backslash_before_a_space_is_refused_with_the_fix() -> None:
    err = spec_error('Arguments = "a\\ b";')
    assert (err.line, err.col) == (2, 15)
    assert "a backslash before a space" in err.message and "'\\\\'" in err.message


# -- numbers and sizes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TTL = 72000;", 72000),
        ('TTL = "72000";', 72000),
        ('TTL = { "500" };', 500),
    ],
)
def test_ttl_forms(text: str, expected: int) -> None:
    assert job(text).ttl == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("TTL = 0;", "TTL must be from 1 to 31622400 seconds, not 0"),
        ("TTL = 31622401;", "TTL must be from 1 to 31622400 seconds"),
        ("CPUCores = 0;", "CPUCores must be from 1 to 4096 cores, not 0"),
        ('CPUCores = { "\u00b3" };', "whole number of cores"),
        ("CPUCores = true;", "whole number of cores"),
        ("Price = -1;", "a number from 0 to 1e+09"),
        ('Price = "cheap";', "a number from 0 to 1e+09"),
        ("Price = 1" + "0" * 30 + ";", "a number from 0 to 1e+09"),
    ],
)
def test_bad_numbers(text: str, fragment: str) -> None:
    err = spec_error(text)
    assert err.line == 2 and fragment in err.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('MemorySize = "8GB";', 8 * GIB),
        ('MemorySize = "11000MB";', 11000 * MIB),
        ('MemorySize = { "6000MB" };', 6000 * MIB),
        ("MemorySize = 2048;", 2048 * MIB),
        ('MemorySize = "1.5 GB";', int(1.5 * GIB)),
        ('MemorySize = "4gib";', 4 * GIB),
    ],
)
def test_memory_sizes(text: str, expected: int) -> None:
    assert job(text).memory_bytes == expected


def test_cpu_cores_as_string() -> None:
    assert job('CPUCores = "8";').cpu_cores == 8


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('WorkDirectorySize = "8 parsecs";', "unknown size unit 'parsecs'"),
        ('WorkDirectorySize = "lots";', "is not a size"),
        ('WorkDirectorySize = "0MB";', "more than zero"),
        ('WorkDirectorySize = { "1GB", "2GB" };', "must be a size"),
    ],
)
def test_bad_sizes(text: str, fragment: str) -> None:
    assert fragment in spec_error(text).message


@pytest.mark.parametrize("size", [1, 1023, 1024, 5 * MIB, 8 * GIB, 3 * 1024**4, 8 * GIB + 1])
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


# -- inputs ---------------------------------------------------------------------------


def test_input_files_catalogue_and_local() -> None:
    spec = job('InputFile = { "LF:/alice/cern.ch/user/j/jdoe/macro.C", "local.sh" };')
    assert spec.input_files == (
        InputFile("/alice/cern.ch/user/j/jdoe/macro.C", catalogue=True),
        InputFile("local.sh", catalogue=False),
    )


def test_input_data_nodownload() -> None:
    spec = job(
        'InputData = { "LF:/alice/data/AO2D.root,nodownload", "LF:/alice/data/b.root" };\n'
        'InputDataCollection = "LF:/alice/coll.xml,nodownload";'
    )
    assert spec.input_data == (
        InputData("/alice/data/AO2D.root", True, nodownload=True),
        InputData("/alice/data/b.root", True, nodownload=False),
    )
    assert spec.input_data_collection == (InputData("/alice/coll.xml", True, True),)


def test_unknown_input_data_option() -> None:
    err = spec_error('InputData = { "LF:/a,download" };')
    assert "unknown InputData option 'download'" in err.message
    assert err.col == 15


# -- outputs --------------------------------------------------------------------------


def test_output_forms() -> None:
    spec = job(
        "Output = {\n"
        '  "log_archive.zip:stdout,stderr,*.log@disk=1",\n'
        '  "root_archive.zip:AO2D.root,*.root@disk=2,ALICE::CERN::EOS,!ALICE::FZK::SE",\n'
        '  "histos.root@tape=1",\n'
        '  "stdout"\n'
        "};\n"
        'OutputArchive = { "qa.zip:QC/*.json" };\n'
        'OutputFile = { "extra.txt" };\n'
        'OutputErrorE = { "error.zip:*.log@disk=1" };'
    )
    assert spec.outputs == (
        OutputSpec(("stdout", "stderr", "*.log"), "log_archive.zip", (("disk", 1),)),
        OutputSpec(
            ("AO2D.root", "*.root"),
            "root_archive.zip",
            (("disk", 2),),
            ("ALICE::CERN::EOS", "!ALICE::FZK::SE"),
        ),
        OutputSpec(("histos.root",), None, (("tape", 1),)),
        OutputSpec(("stdout",)),
        OutputSpec(("QC/*.json",), "qa.zip", source="OutputArchive"),
        OutputSpec(("extra.txt",), source="OutputFile"),
    )
    assert spec.output_errors == (
        OutputSpec(("*.log",), "error.zip", (("disk", 1),), source="OutputErrorE"),
    )


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("/etc/passwd", "relative to the work directory"),
        ("../agent/key.pem", "must not climb out"),
        ("logs.zip:a/../../b", "must not climb out"),
        ("sub/logs:*.log", "must be a file name in the work directory"),
        ("..:*.log", "must not climb out"),
        ("logs.zip:,,@disk=1", "names no file"),
        ("x@disk=0", "disk=N or tape=N, N from 1 to 99"),
        ("x@disk=\u00b2", "disk=N or tape=N, N from 1 to 99"),
        ("x@disk=" + "9" * 50, "disk=N or tape=N, N from 1 to 99"),
        ("x@a@b", "no '@'"),
        ("x@" + "n" * 201, "at most 200 characters"),
    ],
)
def test_bad_outputs(entry: str, fragment: str) -> None:
    err = spec_error(f'Output = {{ "ok", "{entry}" }};')
    assert fragment in err.message
    assert (err.line, err.col) == (2, 18)  # the offending item, not the list


# -- requirements, variables, extras -----------------------------------------------------


def test_quoted_requirements_are_refused() -> None:
    assert "not a string" in spec_error('Requirements = "other.TTL > 5";').message


def test_braced_requirements_are_a_list_as_to_jalien_and_not_used() -> None:
    """O2DPG writes Requirements = {member(...)}; JAliEn stores it as a list and matches
    on a bare expression only: the job is not held to it, and the user is told."""
    spec = job("Requirements = {member(other.GridPartitions, multicore_8)};", source="r.jdl")
    assert spec.requirements is None
    assert any("Requirements in braces is a list to JAliEn" in w for w in spec.warnings)


def test_outputs_read_as_jalien_reads_them() -> None:
    """An archive under any name, empty names skipped, other storage options passed on."""
    spec = job('Output = {"log_archive:*.log,stdout@disk=1", '
               '"root_archive.zip:a.root,b.root,@disk=2", '
               '"t.root@ALICE::CERN::EOS,noarchive,"};', source="o.jdl")  # fmt: skip
    assert spec.outputs == (
        OutputSpec(("*.log", "stdout"), "log_archive", (("disk", 1),)),
        OutputSpec(("a.root", "b.root"), "root_archive.zip", (("disk", 2),)),
        OutputSpec(("t.root",), None, (), ("ALICE::CERN::EOS",), options=("noarchive",)),
    )
    assert [w for w in spec.warnings if "'noarchive' is passed on" in w]
    assert load_job(render_jdl(spec)).outputs == spec.outputs  # the queue keeps them so


def test_an_item_listed_twice_is_kept_once() -> None:
    spec = job('InputFile = {"LF:/a/tag.C", "LF:/a/rec.C", "LF:/a/tag.C"};', source="d.jdl")
    assert [f.name for f in spec.input_files] == ["/a/tag.C", "/a/rec.C"]
    assert any("listed twice in InputFile; kept once" in w for w in spec.warnings)


def test_jdl_variables_become_environment() -> None:
    spec = job(
        'JDLVariables = { "LPMRunNumber", "CollisionSystem", "Tags", "Flag" };\n'
        "LPMRunNumber = 526641;\n"
        'collisionsystem = "pp";\n'
        'Tags = { "a", "b" };\n'
        "Flag = true;\n"
    )
    assert spec.environment() == {
        "ALIEN_JDL_LPMRUNNUMBER": "526641",
        "ALIEN_JDL_COLLISIONSYSTEM": "pp",
        "ALIEN_JDL_TAGS": "a##b",  # list items joined as JAliEn's JobWrapper joins them
        "ALIEN_JDL_FLAG": "true",
    }
    # the keys stay typed for Requirements (my.LPMRunNumber is the number 526641)
    assert dict(spec.extra)["LPMRunNumber"] == _lit(526641)


def test_undefined_jdl_variable_is_a_warning() -> None:
    spec = job('JDLVariables = { "Nowhere" };', source="v.jdl")
    assert spec.environment() == {}
    assert spec.warnings == (
        "v.jdl:2:18: warning: JDL variable 'Nowhere' is listed in JDLVariables but "
        "has no value; it is not exported",
    )


def test_bad_jdl_variable_name() -> None:
    assert "not a valid name" in spec_error('JDLVariables = { "A-B" };').message


def test_unknown_keys_are_kept() -> None:
    spec = job('LPMActivity = "SIM"; MyFlag = 3;')
    assert dict(spec.extra) == {"LPMActivity": _lit("SIM"), "MyFlag": _lit(3)}


def _lit(v: object) -> object:
    from sandbox_agent.jdl.expr import Literal

    return Literal(v)  # type: ignore[arg-type]


def test_strings_fields() -> None:
    spec = job(
        'Packages = "VO_ALICE@jq::v1.6-3"; JobTag = { "comment:MC", "test" };\n'
        'Split = "production:1-10"; SplitArguments = "--seed #alien_counter#";\n'
        'User = "jdoe"; Type = "Job"; ValidationCommand = "/alice/validation/validation.sh";'
    )
    assert spec.packages == ("VO_ALICE@jq::v1.6-3",)
    assert spec.job_tags == ("comment:MC", "test")
    assert spec.split == "production:1-10"
    assert spec.split_arguments == ("--seed #alien_counter#",)
    assert (spec.user, spec.type) == ("jdoe", "Job")
    assert spec.validation_command == "/alice/validation/validation.sh"


def test_string_field_given_an_expression() -> None:
    err = spec_error("OutputDir = other.X == 1;")
    assert "OutputDir must be a string" in err.message


def test_jdl_variable_keeps_its_type_for_requirements() -> None:
    # Listing a key in JDLVariables must not change how Requirements read it.
    from sandbox_agent.jdl import Slot, evaluate

    body = "MinTTL = 3600;\nRequirements = other.TTL > my.MinTTL;\n"
    for extra in ("", 'JDLVariables = { "MinTTL" };\n'):
        spec = job(body + extra)
        decision = evaluate(spec.requirements, Slot({"TTL": 7200}), spec.job_attributes())
        assert decision.outcome == "TRUE", extra


@pytest.mark.parametrize(
    ("key", "raw", "exported"),
    [
        ("Price", "1", "1.0"),
        ("MemorySize", '"8192"', "8GB"),
        ("Arguments", '"a   b"', "a b"),
        ("TTL", '" 72000"', "72000"),
        ("OutputArchive", '{ "logs.zip:*.log" }', "logs.zip:*.log"),
        ("OutputFile", '{ "a.root" }', "a.root"),
    ],
)
def test_jdl_variables_of_modelled_keys_export_the_normal_form(
    key: str, raw: str, exported: str
) -> None:
    spec = job(f'{key} = {raw};\nJDLVariables = {{ "{key}" }};')
    assert spec.environment() == {f"ALIEN_JDL_{key.upper()}": exported}
    again = load_job(render_jdl(spec))
    assert again == spec and again.environment() == spec.environment()


def test_long_values_are_clipped_in_messages() -> None:
    err = spec_error('MemorySize = "' + "x" * 100_000 + '";')
    assert len(err.headline()) < 200
    err = spec_error('Output = { "a@' + "y" * 10_000 + '" };')
    assert len(err.headline()) < 200 and "..." in err.message


def test_padded_size_is_refused_without_backtracking() -> None:
    err = spec_error('MemorySize = "1' + " " * 40_000 + '!";')
    assert "is not a size" in err.message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [('"1' + "0" * 30 + 'TB"', "is not a size"), ('"99999999999999TB"', "at most 1024TB")],
)
def test_absurd_sizes_are_refused(text: str, fragment: str) -> None:
    assert fragment in spec_error(f"MemorySize = {text};").message


def test_a_ttl_that_is_not_a_number_is_the_default_as_in_jalien() -> None:
    spec = job('TTL = "18 hours";', source="t.jdl")
    assert spec.ttl == DEFAULT_TTL and "TTL" not in spec.explicit  # the site's default rules
    assert any("TTL '18 hours' is not a number of seconds" in w for w in spec.warnings)
    assert job("TTL = 7200.9;").ttl == 7200  # whole seconds, as JAliEn's intValue
    assert "whole number of seconds" in spec_error("TTL = 0.5;").message
    assert job('TTL = "\u00b2";').ttl == DEFAULT_TTL  # not ASCII digits: not a number


def test_a_jdl_variable_is_exported_as_written_as_jalien_exports_it() -> None:
    spec = job('JDLVariables = {"Tag", "Cut"}; Tag = "a\\"b"; Cut = "x\\\\d\\n";')
    expected = {"ALIEN_JDL_TAG": 'a\\"b', "ALIEN_JDL_CUT": "x\\\\d\\n"}
    assert spec.environment() == expected
    assert load_job(render_jdl(spec)).environment() == expected  # the normal form keeps it


def test_items_that_read_the_same_are_kept_once_and_survive_the_normal_form() -> None:
    # found in review: " a" and "a" are two strings but one output; kept twice, the
    # normal form (read again, one text twice: one item) gave another job
    spec = job('Output = {"a", " a"}; InputFile = {"LF:/x/y", "lf:/x/y"};')
    assert [o.patterns for o in spec.outputs] == [("a",)]
    assert [f.name for f in spec.input_files] == ["/x/y"]
    assert load_job(render_jdl(spec)) == spec
