"""The JDL syntax: statements, comments, values, keys, errors and input caps."""

from __future__ import annotations

import pytest

from sandbox_agent.jdl import JDLError, load_job, parse_jdl
from sandbox_agent.jdl.expr import UNDEFINED, AttrRef, BinOp, ListExpr, Literal, Not
from sandbox_agent.jdl.parser import MAX_BYTES, MAX_DEPTH, MAX_HEIGHT, MAX_LIST_ITEMS


def value(text: str, key: str = "X") -> object:
    entry = parse_jdl(text).get(key)
    assert entry is not None
    return entry.value


def error(text: str | bytes, **kwargs: object) -> JDLError:
    with pytest.raises(JDLError) as info:
        load_job(text, **kwargs)  # type: ignore[arg-type]
    return info.value


# -- statements -----------------------------------------------------------------------


def test_final_semicolon_is_optional() -> None:
    parsed = parse_jdl('Executable = "a";\nTTL = 5')
    assert parsed.get("TTL") is not None
    assert value('Executable = "a";\nTTL = 5', "TTL") == Literal(5)


def test_enclosing_brackets_are_accepted() -> None:
    spec = load_job('[\n  Executable = "/bin/true";\n  TTL = 10;\n]\n')
    assert (spec.executable, spec.ttl) == ("/bin/true", 10)


def test_unclosed_enclosing_bracket_is_an_error() -> None:
    err = error('[ Executable = "a";')
    assert "expected ']'" in err.message


def test_empty_statements_are_skipped() -> None:
    assert load_job(';;Executable = "a";;;TTL = 7;;').ttl == 7


def test_separator_is_semicolon_outside_quotes() -> None:
    spec = load_job('Executable = "a;b"; Arguments = "x;y z"')
    assert spec.executable == "a;b"
    assert spec.arguments == ("x;y", "z")


# -- comments -------------------------------------------------------------------------


def test_hash_line_comments() -> None:
    spec = load_job('# a comment with "quotes" and ; and =\nExecutable = "a";\n  # indented\n')
    assert spec.executable == "a"


def test_hash_inside_a_string_is_data() -> None:
    spec = load_job('Executable = "a"; OutputDir = "/alice/sim/#alien_counter_03i#";')
    assert spec.output_dir == "/alice/sim/#alien_counter_03i#"


def test_trailing_hash_comment_after_statement() -> None:
    assert load_job('Executable = "a"; TTL = 60; # one minute\n').ttl == 60


def test_classad_comments() -> None:
    text = 'Executable = "a"; // trailing\n/* block\n spanning lines; TTL = 1; */\nTTL = 9;'
    assert load_job(text).ttl == 9


def test_comment_markers_inside_strings_are_data() -> None:
    spec = load_job('Executable = "a"; Arguments = "http://x/*y*/ //z";')
    assert spec.arguments == ("http://x/*y*/", "//z")


# -- keys -----------------------------------------------------------------------------


def test_keys_are_case_insensitive_with_canonical_casing() -> None:
    parsed = parse_jdl('VALIDATIONCOMMAND = "/a"; validationcommand = "/b"; executable = "x";')
    entry = parsed.get("ValidationCommand")
    assert entry is not None
    assert entry.name == "ValidationCommand"
    assert entry.value == Literal("/a")  # the first spelling, as JAliEn reads it
    assert parsed.get("Executable") is not None
    assert parsed.get("EXECUTABLE") is parsed.get("executable")


def test_unknown_key_keeps_its_spelling() -> None:
    parsed = parse_jdl('Executable = "a"; LPMAnchorRun = 5;')
    entry = parsed.get("lpmanchorrun")
    assert entry is not None and entry.name == "LPMAnchorRun"


def test_duplicate_key_later_wins_with_warning() -> None:
    spec = load_job('Executable = "a";\nTTL = 100;\nTTL = 200;\n', source="job.jdl")
    assert spec.ttl == 200
    assert len(spec.warnings) == 1
    assert spec.warnings[0].startswith("job.jdl:3:1: warning: 'TTL' is defined again")
    assert "line 2" in spec.warnings[0]


def test_a_key_in_another_spelling_is_ignored_as_jalien_ignores_it() -> None:
    """JAliEn keeps keys case-sensitively and reads the first spelling: Split then split
    is Split's value there. Reading the later one would run another job."""
    spec = load_job('Executable = "a";\nSplit = "se";\nsplit = "production:1-10";\n',
                    source="job.jdl")  # fmt: skip
    assert spec.split == "se"
    assert spec.warnings == ("job.jdl:3:1: warning: 'split' is 'Split' (line 2) in another "
                             "spelling; the first is used, as JAliEn uses it, and this one is "
                             "ignored",)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "col", "fragment"),
    [
        ('Out-put = "a";', 4, "only letters, digits and '_'"),
        ('Out.put = "a";', 4, "only letters, digits and '_'"),
        ('9lives = "a";', 1, "must start with a letter"),
        ('"Executable" = "a";', 1, "expected a key"),
    ],
)
def test_bad_keys(text: str, col: int, fragment: str) -> None:
    err = error(text)
    assert (err.line, err.col) == (1, col)
    assert fragment in err.message


# -- values ---------------------------------------------------------------------------


def test_string_escapes() -> None:
    assert value(r'X = "a\"b\\c\nd\te";') == Literal('a"b\\c\nd\te')


def test_a_backslash_before_another_character_stays_as_jalien_keeps_it() -> None:
    node = value(r'X = "a\qb\n";')
    assert node == Literal("a\\qb\n") and isinstance(node, Literal) and node.raw == r"a\qb\n"


@pytest.mark.parametrize(("text", "shown"), [('X = "a\\ b";', "a space"),
                                            ('X = "a\\\tb";', "a space"),
                                            ('X = "a\\\n";', "end of line")])  # fmt: skip
def test_a_backslash_before_white_space_points_at_it(text: str, shown: str) -> None:
    err = error(text)
    assert (err.line, err.col) == (1, 7)
    assert f"a backslash before {shown}" in err.message


def test_single_quotes_are_refused_with_the_fix() -> None:
    err = error("Executable = 'a';")
    assert err.col == 14 and "double quotes" in err.message


def test_numbers_and_booleans() -> None:
    assert value("X = 42;") == Literal(42)
    assert value("X = -7;") == Literal(-7)
    assert value("X = 2.5;") == Literal(2.5)
    assert value("X = 1e3;") == Literal(1000.0)
    assert value("X = TRUE;") == Literal(True)
    assert value("X = false;") == Literal(False)
    assert value("X = undefined;") == Literal(UNDEFINED)


def test_number_glued_to_unit_is_a_sized_word() -> None:
    spec = load_job('Executable = "a"; MemorySize = 8GB; WorkDirectorySize = 500MB;')
    assert spec.memory_bytes == 8 * 1024**3
    assert spec.workdir_bytes == 500 * 1024**2


def test_out_of_range_float_is_refused() -> None:
    assert "out of range" in error('Executable = "a"; X = 1e999;').message


def test_lists_keep_order_and_duplicates() -> None:
    assert value('X = { "b", "a", "b" };') == ListExpr((Literal("b"), Literal("a"), Literal("b")))


def test_unquoted_list_items_are_separate_items() -> None:
    node = value("X = {testflag,t2};")
    assert node == ListExpr((AttrRef(None, "testflag"), AttrRef(None, "t2")))
    spec = load_job('Executable = "a"; JobTag = {testflag,t2};')
    assert spec.job_tags == ("testflag", "t2")


def test_trailing_comma_in_list_is_accepted() -> None:
    assert value('X = { "a", "b", };') == ListExpr((Literal("a"), Literal("b")))


def test_empty_list() -> None:
    assert value("X = {};") == ListExpr(())


def test_lists_may_span_lines_with_comments() -> None:
    node = value('X = {\n  "a", # first\n  // second\n  "b"\n};')
    assert node == ListExpr((Literal("a"), Literal("b")))


def test_requirements_are_parsed_to_a_tree() -> None:
    node = value('Requirements = other.TTL > 3600 && !other.CE == "X";', "Requirements")
    assert node == BinOp(
        "&&",
        BinOp(">", AttrRef("other", "TTL"), Literal(3600)),
        Not(BinOp("==", AttrRef("other", "CE"), Literal("X"))),
    )


def test_scopes_are_normalized() -> None:
    assert value("X = TARGET.ce;") == AttrRef("other", "ce")
    assert value("X = self.ce;") == AttrRef("my", "ce")


def test_unknown_scope_is_refused() -> None:
    err = error('Executable = "a"; Requirements = machine.CE == "x";')
    assert "unknown scope 'machine'" in err.message and err.col == 34


def test_chained_comparison_is_refused() -> None:
    err = error('Executable = "a"; Requirements = 1 < other.X < 3;')
    assert "do not chain" in err.message


@pytest.mark.parametrize("op", ["&", "|"])
def test_single_ampersand_or_bar(op: str) -> None:
    err = error(f'Executable = "a"; Requirements = other.A {op} other.B;')
    assert f"'{op}{op}'" in str(err)


# -- errors ---------------------------------------------------------------------------


def test_error_has_excerpt_and_caret() -> None:
    err = error('Executable = "a";\nTTL = 100 200;\n', source="j.jdl")
    lines = str(err).splitlines()
    assert lines[0] == "j.jdl:2:11: expected ';' before '200': each statement ends with ';'"
    assert lines[1].strip() == "TTL = 100 200;"
    assert lines[2].index("^") == lines[1].index("200")


def test_error_excerpt_of_a_very_long_line_is_windowed() -> None:
    err = error('Executable = "a"; X = "' + "y" * 5000 + '" z;')
    excerpt_line, caret_line = str(err).splitlines()[1:3]
    assert len(excerpt_line) < 100
    assert excerpt_line[caret_line.index("^")] == "z"


def test_columns_count_characters_not_bytes() -> None:
    err = error('Executable = "é€"; TTL = 1 2;')
    assert err.col == len('Executable = "é€"; TTL = 1 ') + 1


def test_missing_executable() -> None:
    err = error("TTL = 5;")
    assert "no Executable" in err.message


def test_not_utf8() -> None:
    err = error(b'Executable = "a";\nX = "\xff";')
    assert (err.line, err.col) == (2, 6)
    assert "UTF-8" in err.message


def test_control_character_outside_strings() -> None:
    err = error('Executable = "a";\x01')
    assert "U+0001" in err.message


def test_byte_order_mark_is_ignored() -> None:
    assert load_job('\ufeffExecutable = "a";').executable == "a"


# -- caps -----------------------------------------------------------------------------


def test_size_cap() -> None:
    err = error('Executable = "a"; X = "' + "x" * MAX_BYTES + '";')
    assert "limit" in err.message


def test_nesting_cap_gives_jdl_error_not_recursion_error() -> None:
    deep = "(" * (MAX_DEPTH + 5) + "true" + ")" * (MAX_DEPTH + 5)
    err = error(f'Executable = "a"; Requirements = {deep};')
    assert "nesting deeper" in err.message


def test_deep_list_nesting_is_capped() -> None:
    deep = "{" * 5000 + "}" * 5000
    assert "nesting deeper" in error(f'Executable = "a"; X = {deep};').message


def test_negation_chain_is_capped() -> None:
    assert "nesting deeper" in error('Executable = "a"; X = ' + "!" * 10000 + "true;").message


def test_long_operator_chain_is_capped() -> None:
    chain = " && ".join(["other.A == 1"] * (MAX_HEIGHT + 10))
    err = error(f'Executable = "a"; Requirements = {chain};')
    assert "levels deep" in err.message


def test_list_length_cap() -> None:
    items = ",".join(["1"] * (MAX_LIST_ITEMS + 1))
    assert "list longer" in error(f'Executable = "a"; X = {{{items}}};').message


def test_moderate_chain_within_caps_is_accepted() -> None:
    chain = " || ".join(f'other.CE == "CE{i}"' for i in range(100))
    spec = load_job(f'Executable = "a"; Requirements = {chain};')
    assert spec.requirements is not None


# -- submit arguments -------------------------------------------------------------------


def test_placeholders_replaced_in_strings_and_lists() -> None:
    text = 'Executable = "a"; Arguments = "run $1 --pass $2"; OutputDir = "/out/$1/$2";\n'
    text += 'InputData = { "LF:/data/$1/AO2D.root" };'
    spec = load_job(text, args=["526641", "apass7"])
    assert spec.arguments == ("run", "526641", "--pass", "apass7")
    assert spec.output_dir == "/out/526641/apass7"
    assert spec.input_data[0].name == "/data/526641/AO2D.root"


def test_placeholders_kept_without_arguments() -> None:
    spec = load_job('Executable = "a"; OutputDir = "/out/$1";')
    assert spec.output_dir == "/out/$1"


def test_two_digit_placeholder() -> None:
    args = [str(i) for i in range(1, 12)]
    assert load_job('Executable = "a"; OutputDir = "$11-$1";', args=args).output_dir == "11-1"


def test_missing_argument_is_located() -> None:
    err = error('Executable = "a";\nOutputDir = "/out/$3";', args=["x", "y"])
    assert (err.line, err.col) == (2, 13)
    assert "'$3' needs at least 3 submit argument(s), 2 given" in err.message


def test_argument_cannot_change_the_structure() -> None:
    # JAliEn writes arguments into the text, where this one would set the Executable:
    # refused here, at the string it would have broken
    hostile = '"; Executable = "/bin/evil'
    err = error('Executable = "/bin/echo";\nArguments = "$1";', args=[hostile])
    assert (err.line, err.col) == (2, 13)
    assert "submit argument 1 holds '\"'" in err.message
    # anything else in an argument is data: ';' and '=' are words of Arguments
    spec = load_job('Executable = "/bin/echo"; Arguments = "$1";', args=["; Executable = x"])
    assert spec.executable == "/bin/echo"
    assert spec.arguments == (";", "Executable", "=", "x")


def test_an_argument_may_not_leave_a_backslash_at_the_end() -> None:
    err = error('Executable = "a"; Arguments = "$1";', args=["x\\"])
    assert "leaves a backslash" in err.message
    assert load_job('Executable = "a"; Arguments = "$1";', args=["x\\d"]).arguments == ("x\\d",)


def test_nul_in_a_string_is_refused() -> None:
    err = error('Executable = "/bin/a\x00b";')
    assert (err.line, err.col) == (1, 21)
    assert "NUL" in err.message


# -- hostile input found in review -------------------------------------------------------


@pytest.mark.parametrize("char", ["\x1b", "\x07", "\x9b", "\u202e", "\u2066"])
def test_terminal_and_bidi_controls_in_strings_are_refused(char: str) -> None:
    err = error(f'Executable = "a{char}b";')
    assert (err.line, err.col) == (1, 16)
    assert f"U+{ord(char):04X}" in err.message


def test_tab_in_a_string_is_fine() -> None:
    assert load_job('Executable = "a\tb";').executable == "a\tb"


@pytest.mark.parametrize("arg", ["/bin/a\x00b", "x\x1b[2J", "\u202egnp.exe"])
def test_control_characters_in_submit_arguments_are_refused(arg: str) -> None:
    err = error('Executable = "$1";', args=[arg])
    assert err.message.startswith("submit argument 1 holds the control character U+")


@pytest.mark.parametrize("digits", ["1" * 41, "9" * 5000])
def test_very_long_numbers_are_refused(digits: str) -> None:
    err = error(f'Executable = "a"; X = {digits};')
    assert err.message == "number longer than 40 characters"


def test_duplicate_tall_key_does_not_poison_later_heights() -> None:
    # The dropped tree's node ids must not be reused with stale heights.
    chain = " && ".join(["true"] * 199)
    text = f'Executable = "a";\nRequirements = {chain};\nRequirements = true;\n'
    text += "".join(f"Y{i} = {{a, b, c}} == x;\n" for i in range(50))
    assert load_job(text).requirements is not None


def test_cr_only_line_endings() -> None:
    spec = load_job('# comment\rExecutable = "a";\rTTL = 5;\r')
    assert (spec.executable, spec.ttl) == ("a", 5)
    err = error('# c\rExecutable = "a";\rTTL = 5 6;')
    assert (err.line, err.col) == (3, 9)


def test_too_many_tokens() -> None:
    from sandbox_agent.jdl.lexer import MAX_TOKENS

    err = error('Executable = "a"; X = {' + "a," * MAX_TOKENS + "};")
    assert "tokens" in err.message


@pytest.mark.parametrize(
    "text",
    [
        # a brace value read as one item must not end the statement or open another
        "Output = {x@y; Executable = evil};",
        "Output = {x@y # comment\n};",
        "Output = {x@y /* c */};",
        'Output = {"a" @x};',  # a quote inside: the ordinary grammar, which refuses it
        "Output = {x@y\x07};",  # a control character
        "Requirements = member({a@b}, 1);",  # only a statement's whole value
    ],
)
def test_an_unquoted_brace_value_cannot_carry_more_than_one_item(text: str) -> None:
    with pytest.raises(JDLError):
        load_job('Executable = "/bin/true";\n' + text)


# -- spellings of real JDLs that JAliEn reads ---------------------------------------------


def test_a_placeholder_outside_quotes_is_the_arguments_value() -> None:
    # JAliEn writes the argument into the text: TTL = 72000; is a number there
    text = 'Executable = "a";\nTTL = $1; Price = $2; Requirements = other.TTL > $1;\nX = $3;'
    spec = load_job(text, args=["72000", "1.5", "run"])
    assert (spec.ttl, spec.price) == (72000, 1.5)
    assert spec.requirements == BinOp(">", AttrRef("other", "TTL"), Literal(72000))
    assert dict(spec.extra)["X"] == Literal("run")
    err = error(text, args=["72000"])
    assert (err.line, err.col) == (2, 19) and "'$2' needs at least 2" in err.message
    err = error(text, args=["1", "2", 'a"b'])
    assert "submit argument 3 holds '\"'" in err.message


def test_list_items_without_a_comma_are_two_items_with_a_warning() -> None:
    spec = load_job('Executable = "a";\nInputFile = {"LF:/a/x.dat"\n "LF:/a/y.dat"};')
    assert [f.name for f in spec.input_files] == ["/a/x.dat", "/a/y.dat"]
    assert spec.warnings == ("<jdl>:3:2: warning: no ',' before this list item; it is read "
                             "as the next item, as JAliEn reads it; add the comma",)  # fmt: skip
    # only between two quoted strings: an expression list still needs its commas
    assert "expected ',' or '}'" in error('Executable = "a"; X = {1 "b"};').message


def test_an_unquoted_path_value_is_its_text_with_a_warning() -> None:
    spec = load_job('Executable = "a";\nJDLPath = /alice/cern.ch/user/j/jdoe/mc.jdl;\n')
    assert dict(spec.extra)["JDLPath"] == Literal("/alice/cern.ch/user/j/jdoe/mc.jdl")
    assert "unquoted value '/alice/cern.ch/user/j/jdoe/mc.jdl'" in spec.warnings[0]
    # anything that is not one path-like word keeps its error
    for text, fragment in (("X = /a b;", "unexpected character '/'"),
                           ("X = a == 'b';", "single quotes"),
                           ("X = member(a, /b);", "unexpected character '/'")):  # fmt: skip
        assert fragment in error(f'Executable = "a"; {text}').message


def test_found_in_review_quotes_digits_and_booleans_in_arguments() -> None:
    # a quote is refused wherever the argument lands, an unquoted list too
    err = error('Executable = "a"; X = {$1/x};', args=['a"; Executable = "/bin/sh'])
    assert "submit argument 1 holds '\"'" in err.message
    # thousands of digits are no argument number (int() would refuse them with a traceback)
    err = error('Executable = "a"; X = "$' + "1" * 5000 + '";', args=["a"])
    assert "needs at least 11111111 submit argument(s)" in err.message
    # only ASCII digits count: $ and an Arabic-Indic one is text, as to JAliEn
    spec = load_job('Executable = "a"; OutputDir = "/$\u0661";', args=["x"])
    assert spec.output_dir == "/$\u0661"
    # a boolean argument outside quotes is a boolean there
    spec = load_job('Executable = "a"; X = $1;', args=["TRUE"])
    assert dict(spec.extra)["X"] == Literal(True)


def test_an_argument_is_read_as_written_into_the_string() -> None:
    # JAliEn writes it into the text: a backslash and t are an escape in a value here,
    # kept as written for Arguments and the exported variables
    spec = load_job('Executable = "a"; Arguments = "$1"; OutputDir = "/$1"; Tag = "$1";\n'
                    'JDLVariables = {"Tag"};', args=["A\\tB"])  # fmt: skip
    assert spec.arguments == ("A\\tB",)
    assert spec.output_dir == "/A\tB"
    assert spec.environment() == {"ALIEN_JDL_TAG": "A\\tB"}
    assert "escapes decoded" in " ".join(spec.differences)
