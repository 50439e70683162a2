"""Properties: render -> parse gives the same spec; hostile input gives JDLError, nothing else."""

from __future__ import annotations

import re
import string

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
text = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30
)
nonblank = text.filter(lambda s: s.strip() != "")
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
)
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
def named_values(
    draw: st.DrawFn,
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, Expr], ...]]:
    """JDL variables and extra keys with names unique among themselves and the known keys."""
    names = draw(
        st.lists(
            attr_name.filter(lambda n: n.casefold() not in _CONSUMED),
            unique_by=str.casefold,
            max_size=6,
        )
    )
    split = draw(st.integers(0, len(names)))
    variables = tuple((n, draw(text)) for n in names[:split])
    extra = tuple((n, draw(expressions)) for n in names[split:])
    return variables, extra


def _not_a_string(node: Expr) -> bool:
    # A quoted Requirements is refused (the user meant an expression), so never generated.
    return not (isinstance(node, Literal) and isinstance(node.value, str))


@st.composite
def job_specs(draw: st.DrawFn) -> JobSpec:
    variables, extra = draw(named_values())
    optional = st.none() | text
    many = st.lists(text, max_size=3).map(tuple)
    return JobSpec(
        executable=draw(nonblank),
        arguments=draw(many),
        input_files=tuple(draw(st.lists(input_files, max_size=3))),
        input_data=tuple(draw(st.lists(input_data, max_size=3))),
        input_data_collection=tuple(draw(st.lists(input_data, max_size=1))),
        outputs=tuple(draw(st.lists(outputs, max_size=3))),
        output_errors=tuple(draw(st.lists(outputs, max_size=2))),
        output_dir=draw(optional),
        validation_command=draw(optional),
        ttl=draw(st.integers(1, 10**7)),
        cpu_cores=draw(st.integers(1, 256)),
        memory_bytes=draw(st.none() | st.integers(1, 2**45)),
        workdir_bytes=draw(st.none() | st.integers(1, 2**45)),
        packages=draw(many),
        price=draw(st.floats(0, 1e6, allow_nan=False)),
        requirements=draw(st.none() | expressions.filter(_not_a_string)),
        jdl_variables=variables,
        job_tags=draw(many),
        split=draw(optional),
        split_arguments=draw(many),
        user=draw(optional),
        type=draw(optional),
        extra=extra,
    )


@SETTINGS
@given(job_specs())
def test_render_then_parse_gives_the_same_spec(spec: JobSpec) -> None:
    rendered = render_jdl(spec)
    again = load_job(rendered)
    assert again == spec
    assert again.warnings == ()
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
        assert err.line >= 1 and err.col >= 1
        assert str(err).startswith(f"<jdl>:{err.line}:{err.col}: ")


SOUP = [
    "Executable", "Requirements", "TTL", "MemorySize", "Output", "JDLVariables", "X", "=", ";",
    "{", "}", "(", ")", "[", "]", ",", "&&", "||", "!", "==", "!=", "<", ">=", "-", ".", "other",
    "my", "member", "isDefined", "regexp", "true", "undefined", '"a"', '"8GB"', '"$1"', '"$9"',
    '"x.zip:*.log@disk=2"', '"../x"', "1", "2.5", "1e999", "8GB", "#", "//", "/*", "*/", "\n",
    '"', "\\", "'", "&", "|", "\x00", "é",
]  # fmt: skip


@SETTINGS
@given(st.lists(st.sampled_from(SOUP), max_size=60), st.sampled_from([" ", "", "\n"]))
def test_token_soup_gives_a_spec_or_a_jdl_error(tokens: list[str], sep: str) -> None:
    try:
        spec = load_job(sep.join(tokens), args=["x"])
    except JDLError as err:
        assert re.match(r"<jdl>:\d+:\d+: \S", str(err))
    else:
        assert spec.executable
