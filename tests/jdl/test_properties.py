"""Properties: render -> parse gives the same spec; hostile input gives JDLError, nothing else."""

from __future__ import annotations

import re
import string
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox_agent.jdl import (
    InputData,
    InputFile,
    JDLError,
    JobSpec,
    OutputSpec,
    load_job,
    parse_expression,
    render_jdl,
)
from sandbox_agent.jdl.expr import (
    UNDEFINED,
    AttrRef,
    BinOp,
    Call,
    Expr,
    ListExpr,
    Literal,
    Not,
    render,
)
from sandbox_agent.jdl.spec import _CONSUMED

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that may appear in a JDL string: anything printable or not, but no NUL.
# Text a JDL string can hold: no surrogates, no control characters but those that have
# an escape, no bidirectional overrides.
text = st.text(
    st.characters(
        exclude_categories=("Cs", "Cc"),
        include_characters="\t\n\r\b\f",
        exclude_characters="\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
    ),
    max_size=30,
)
nonblank = text.filter(lambda s: s.strip() != "")
# An argv word as JAliEn splits Arguments: no white space, and text as written, so a
# backslash stands before a visible character and a quote only after a backslash.
_VISIBLE = r"[^\s\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"
argument_word = st.from_regex(rf'(?:(?!["\\]){_VISIBLE}|\\{_VISIBLE}){{1,12}}', fullmatch=True)
# Names used unquoted, in file lists split on ',' or '@', or stripped by the parser.
word = st.text(string.ascii_letters + string.digits + "_-.*+/~", min_size=1, max_size=20)
identifier = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
KEYWORDS = {"true", "false", "undefined"}
attr_name = identifier.filter(lambda n: n.casefold() not in KEYWORDS)


def _safe_pattern(p: str) -> bool:
    return not p.startswith("/") and ".." not in p.split("/") and p.strip() == p


pattern = word.filter(_safe_pattern)
archive = st.from_regex(r"[A-Za-z0-9_]{1,12}\.zip", fullmatch=True)
storage_element = st.from_regex(r"!?[A-Z]{1,6}::[A-Za-z0-9]{1,8}::[A-Z]{1,6}", fullmatch=True)

outputs = st.builds(
    OutputSpec,
    patterns=st.lists(pattern, min_size=1, max_size=4).map(tuple),
    archive=st.none() | archive,
    qos=st.lists(st.tuples(st.sampled_from(["disk", "tape"]), st.integers(1, 9)), max_size=2).map(
        tuple
    ),
    storage_elements=st.lists(storage_element, max_size=2).map(tuple),
    source=st.sampled_from(["Output", "OutputArchive", "OutputFile"]),
)
OUTPUT_ORDER = {"Output": 0, "OutputArchive": 1, "OutputFile": 2}
local_name = word.filter(lambda n: not n.casefold().startswith("lf:"))
input_files = st.builds(InputFile, name=word, catalogue=st.just(True)) | st.builds(
    InputFile, name=local_name, catalogue=st.just(False)
)
input_data = st.builds(InputData, name=word, catalogue=st.just(True), nodownload=st.booleans())

scalars = st.one_of(
    text.map(Literal),
    st.integers(-(10**12), 10**12).map(Literal),
    st.floats(allow_nan=False, allow_infinity=False).map(Literal),
    st.booleans().map(Literal),
    st.just(Literal(UNDEFINED)),
    st.builds(AttrRef, st.sampled_from(["other", "my", None]), attr_name),
)


def _compound(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    return st.one_of(
        st.lists(children, max_size=3).map(lambda items: ListExpr(tuple(items))),
        st.builds(Not, children),
        st.builds(
            BinOp,
            st.sampled_from(["||", "&&", "==", "!=", "<", "<=", ">", ">="]),
            children,
            children,
        ),
        st.builds(lambda a, b: Call("member", (a, b)), children, children),
        st.builds(lambda a: Call("isdefined", (a,)), children),
    )


expressions = st.recursive(scalars, _compound, max_leaves=12)


@st.composite
def extra_entries(draw: st.DrawFn) -> tuple[tuple[str, Expr], ...]:
    """Unmodelled keys, unique without case and apart from the keys the spec models."""
    names = draw(
        st.lists(
            attr_name.filter(lambda n: n.casefold() not in _CONSUMED),
            unique_by=str.casefold,
            max_size=6,
        )
    )
    return tuple((n, draw(expressions)) for n in names)


def _not_a_string(node: Expr) -> bool:
    # A quoted Requirements is refused (the user meant an expression), and a braced one
    # is a list to JAliEn and not used: neither is generated.
    return not (isinstance(node, Literal) and isinstance(node.value, str)) and \
        not isinstance(node, ListExpr)  # fmt: skip


def _written(item: InputFile | InputData | OutputSpec) -> str:
    return item.jdl()


@st.composite
def job_specs(draw: st.DrawFn) -> JobSpec:
    extra = draw(extra_entries())
    optional = st.none() | text
    # JAliEn keeps a list as a set in order: an item written twice is read once
    many = st.lists(text, max_size=3, unique=True).map(tuple)
    spec = JobSpec(
        executable=draw(nonblank),
        arguments=draw(st.lists(argument_word, max_size=4).map(tuple)),
        input_files=tuple(draw(st.lists(input_files, max_size=3, unique_by=_written))),
        input_data=tuple(draw(st.lists(input_data, max_size=3, unique_by=_written))),
        input_data_collection=tuple(draw(st.lists(input_data, max_size=1))),
        # grouped by key, as a parsed JDL has them
        outputs=tuple(
            sorted(
                draw(st.lists(outputs, max_size=4, unique_by=_written)),
                key=lambda o: OUTPUT_ORDER[o.source],
            )
        ),
        output_errors=tuple(
            replace(o, source="OutputErrorE")
            for o in draw(st.lists(outputs, max_size=2, unique_by=_written))
        ),
        output_dir=draw(optional),
        validation_command=draw(optional),
        ttl=draw(st.integers(1, 10**7)),
        cpu_cores=draw(st.integers(1, 256)),
        memory_bytes=draw(st.none() | st.integers(1, 2**45)),
        workdir_bytes=draw(st.none() | st.integers(1, 2**45)),
        packages=draw(many),
        price=draw(st.floats(0, 1e6, allow_nan=False)),
        requirements=draw(st.none() | expressions.filter(_not_a_string)),
        job_tags=draw(many),
        split=draw(optional),
        split_arguments=draw(many),
        user=draw(optional),
        type=draw(optional),
        extra=extra,
    )
    # JDL variables name keys that have a value: unmodelled ones or modelled ones.
    present = [name for name, _ in spec.to_entries() if name != "JDLVariables"]
    names = draw(st.lists(st.sampled_from(present), unique=True, max_size=5)) if present else []
    return replace(spec, jdl_variables=tuple(names))


@SETTINGS
@given(job_specs())
def test_render_then_parse_gives_the_same_spec(spec: JobSpec) -> None:
    rendered = render_jdl(spec)
    again = load_job(rendered)
    assert again == spec
    # the warnings a normal form may carry: quotes in Arguments are plain characters, and
    # a value written with escapes (a quote, a tab) is read otherwise by JAliEn
    plain = any(c in "\"'\\" for word in spec.arguments for c in word)
    said = [w.split(": warning: ")[1] for w in again.warnings]
    assert sum(w.startswith("Arguments:") for w in said) == plain
    assert all("escapes decoded" in w for w in said if not w.startswith("Arguments:"))
    assert render_jdl(again) == rendered


@SETTINGS
@given(expressions)
def test_expression_render_round_trip(node: Expr) -> None:
    assert parse_expression(render(node)) == node


@SETTINGS
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_a_spec_or_a_jdl_error(data: bytes) -> None:
    try:
        load_job(data, args=["a", "b"])
    except JDLError as err:
        # located at a line and column, or (whole-file problems) at the file
        where = f"<jdl>:{err.line}:{err.col}: " if err.line else "<jdl>: "
        assert str(err).startswith(where)


SOUP = [
    "Executable", "Requirements", "TTL", "MemorySize", "Output", "JDLVariables", "X", "=", ";",
    "{", "}", "(", ")", "[", "]", ",", "&&", "||", "!", "==", "!=", "<", ">=", "-", ".", "other",
    "my", "member", "isDefined", "regexp", "true", "undefined", '"a"', '"8GB"', '"$1"', '"$9"',
    '"x.zip:*.log@disk=2"', '"../x"', "1", "2.5", "1e999", "8GB", "#", "//", "/*", "*/", "\n",
    '"', "\\", "'", "&", "|", "\x00", "é", "1" * 45, "\u00b2", '"\u00b3"', '" 8 GB "',
    '"1' + " " * 70 + '!"', "\x1b", "\u202e", "\r", "TTL = 1; TTL", "Requirements",
]  # fmt: skip


@SETTINGS
@given(st.lists(st.sampled_from(SOUP), max_size=60), st.sampled_from([" ", "", "\n"]))
def test_token_soup_gives_a_spec_or_a_jdl_error(tokens: list[str], sep: str) -> None:
    try:
        spec = load_job(sep.join(tokens), args=["x"])
    except JDLError as err:
        assert re.match(r"<jdl>(:\d+:\d+)?: \S", str(err))
    else:
        assert spec.executable


# Placeholders in every place a real JDL puts them, and arguments made of what breaks a
# careless substitution: backslashes before escape letters, quotes, separators.
TEMPLATE = (
    'Executable = "/bin/true"; Arguments = "--run $1 $2"; OutputDir = "/out/$1";\n'
    'Requirements = other.CE == "$2"; TTL = $3; Tag = "$1"; Bare = $2;\n'
    'Listed = {$1/x}; JDLVariables = {"Tag", "Bare", "Listed", "OutputDir"};\n'
)
argument = st.text(st.sampled_from(list('ab\\tn" ;{}$1:/\t')), max_size=8)


@SETTINGS
@given(st.lists(argument, min_size=3, max_size=3))
def test_submit_arguments_survive_the_normal_form(args: list[str]) -> None:
    """What is checked at submit is what the pilot runs: the normal form, read again,
    gives the same spec and the same environment for any arguments it accepts."""
    try:
        spec = load_job(TEMPLATE, args=args)
    except JDLError:
        return  # refused, with its reason: a quote, a lone backslash, a control char
    again = load_job(render_jdl(spec))
    assert again == spec
    assert again.environment() == spec.environment()
    assert again.requirements == spec.requirements
