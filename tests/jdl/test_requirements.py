"""Requirements expressions x slots -> TRUE / FALSE / UNDEFINED / ERROR.

The tables below pin down ClassAd's three-valued logic as the JDL engine implements
it, the JAliEn spellings (``!other.CE == "X"``, ``member(list, value)``), the job's own
attributes (``my.*`` and bare names), the clause ``jdl match`` reports, the errors for
unsupported functions, and reading a slot from TOML.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from sandbox_agent.jdl import (
    Decision,
    JDLError,
    Slot,
    evaluate,
    load_job,
    parse_expression,
)
from sandbox_agent.jdl.expr import Expr, render
from sandbox_agent.jdl.requirements import MAX_REFERENCE_DEPTH

SLOTS_DIR = Path(__file__).parent / "slots"
CORPUS = Path(__file__).parent / "corpus" / "valid"

# The slot most rows are evaluated against.  Lists are tuples, as Slot.from_toml makes them.
SLOT = Slot(
    {
        "TTL": 3600,
        "Price": 1,
        "LoadAverage": 0.75,
        "CE": "ALICE::CERN::X",
        "Name": "worker-b",
        "Docker": True,
        "Packages": ("VO_ALICE@jq::v1.6-3", "VO_ALICE@O2PDPSuite::MC-prod-2024-v3-1"),
        "GridPartitions": ("multicore_8", "Analysis"),
        "CoreCounts": (4, 8),
        "Empty": (),
    }
)
CE_X = Slot({"CE": "X"})
CE_Y = Slot({"CE": "Y"})
NO_CE = Slot({"TTL": 3600})

# The job's own attributes, as ``spec.job_attributes()`` hands them to ``evaluate``.
JOB_SOURCES = {
    "MinTTL": "100",
    "Site": '"alice::cern::x"',
    "Packages": '{ "pkg-A", "pkg-B" }',
    "Gate": "other.TTL > 1000",
    "Chained": "my.MinTTL",
    "SelfRef": "my.SelfRef",
    "Loop": "Loop && true",
    "PingA": "my.PingB",
    "PingB": "my.PingA",
}


def job_attributes(sources: Mapping[str, str] = JOB_SOURCES) -> dict[str, Expr]:
    return {name: parse_expression(text) for name, text in sources.items()}


def decide(expression: str, slot: Mapping = SLOT, job: dict[str, Expr] | None = None) -> Decision:
    return evaluate(parse_expression(expression), slot, job)


# -- the main table --------------------------------------------------------------------

# (expression, slot, expected outcome), each with an id naming what it pins down.
CASES = [
    # numeric comparisons: all six operators, ints and floats mixed, both outcomes
    pytest.param("other.TTL == 3600.0", SLOT, "TRUE", id="int-eq-float"),
    pytest.param("other.TTL == 3601", SLOT, "FALSE", id="int-eq-int-false"),
    pytest.param("other.TTL != 3600.5", SLOT, "TRUE", id="int-ne-float"),
    pytest.param("other.TTL != 3600.0", SLOT, "FALSE", id="int-ne-equal-float-false"),
    pytest.param("other.LoadAverage < 1", SLOT, "TRUE", id="float-lt-int"),
    pytest.param("other.LoadAverage < 0.5", SLOT, "FALSE", id="float-lt-float-false"),
    pytest.param("other.LoadAverage <= 0.75", SLOT, "TRUE", id="float-le-equal"),
    pytest.param("other.LoadAverage <= 0.7", SLOT, "FALSE", id="float-le-false"),
    pytest.param("other.TTL > 3599.9", SLOT, "TRUE", id="int-gt-float"),
    pytest.param("other.TTL > 3600", SLOT, "FALSE", id="int-gt-equal-false"),
    pytest.param("other.TTL >= 3600", SLOT, "TRUE", id="int-ge-equal"),
    pytest.param("other.TTL >= 3600.1", SLOT, "FALSE", id="int-ge-float-false"),
    pytest.param("72000 > other.TTL", SLOT, "TRUE", id="literal-on-the-left"),
    pytest.param("-1 < other.TTL", SLOT, "TRUE", id="negative-literal"),
    pytest.param("other.TTL > -3.5", SLOT, "TRUE", id="negative-float-literal"),
    pytest.param("other.TTL >= 3.6e3", SLOT, "TRUE", id="exponent-literal"),
    pytest.param("other.Price <= 1.0", SLOT, "TRUE", id="price-le-float"),
    # strings: == and != ignore case
    pytest.param('other.CE == "alice::cern::x"', SLOT, "TRUE", id="str-eq-ignores-case"),
    pytest.param('other.CE != "alice::cern::x"', SLOT, "FALSE", id="str-ne-ignores-case"),
    pytest.param('other.CE != "alice::cern::y"', SLOT, "TRUE", id="str-ne-different"),
    pytest.param('other.CE == "ALICE::CERN"', SLOT, "FALSE", id="str-eq-prefix-false"),
    pytest.param('"ALICE::CERN::X" == other.CE', SLOT, "TRUE", id="str-eq-literal-left"),
    # strings: ordering, also without case ('a' < 'B' is FALSE by code point)
    pytest.param('other.Name < "worker-c"', SLOT, "TRUE", id="str-lt"),
    pytest.param('other.Name > "WORKER-A"', SLOT, "TRUE", id="str-gt-ignores-case"),
    pytest.param('other.Name <= "WORKER-B"', SLOT, "TRUE", id="str-le-equal-ignoring-case"),
    pytest.param('other.Name >= "worker-c"', SLOT, "FALSE", id="str-ge-false"),
    pytest.param('"a" < "B"', SLOT, "TRUE", id="str-lt-not-by-code-point"),
    pytest.param('"B" < "a"', SLOT, "FALSE", id="str-lt-not-by-code-point-reversed"),
    # slot attribute names are case-insensitive; target. is other.
    pytest.param("other.ttl == 3600", SLOT, "TRUE", id="slot-name-ignores-case"),
    pytest.param("TARGET.TTL == 3600", SLOT, "TRUE", id="target-scope-is-other"),
    pytest.param("other.TTL == 3600", {"ttl": 3600}, "TRUE", id="plain-mapping-slot"),
    # an attribute the slot lacks is UNDEFINED, whatever it is compared with
    pytest.param("other.Missing == 1", SLOT, "UNDEFINED", id="missing-eq"),
    pytest.param('other.Missing != "x"', SLOT, "UNDEFINED", id="missing-ne"),
    pytest.param("other.Missing < 1", SLOT, "UNDEFINED", id="missing-lt"),
    pytest.param("1 >= other.Missing", SLOT, "UNDEFINED", id="missing-on-the-right"),
    pytest.param("other.Missing", SLOT, "UNDEFINED", id="missing-alone"),
    pytest.param("other.CE == undefined", SLOT, "UNDEFINED", id="compare-with-undefined-literal"),
    # negation
    pytest.param("!(other.TTL > 1)", SLOT, "FALSE", id="not-true"),
    pytest.param("!(other.TTL < 1)", SLOT, "TRUE", id="not-false"),
    pytest.param("!(other.Missing > 1)", SLOT, "UNDEFINED", id="not-undefined"),
    pytest.param("!other.Missing", SLOT, "UNDEFINED", id="not-missing-attribute"),
    pytest.param("!true", SLOT, "FALSE", id="not-true-literal"),
    pytest.param("!false", SLOT, "TRUE", id="not-false-literal"),
    pytest.param("!undefined", SLOT, "UNDEFINED", id="not-undefined-literal"),
    pytest.param("!!(other.TTL > 1)", SLOT, "TRUE", id="double-not"),
    pytest.param("!(other.CE == 1)", SLOT, "ERROR", id="not-error"),
    pytest.param("!other.TTL", SLOT, "ERROR", id="not-number"),
    # JAliEn writes !other.CE == "X" meaning !(other.CE == "X")
    pytest.param('!other.CE == "X"', CE_Y, "TRUE", id="jalien-not-eq-other-ce"),
    pytest.param('!other.CE == "X"', CE_X, "FALSE", id="jalien-not-eq-same-ce"),
    pytest.param('!other.CE == "x"', CE_X, "FALSE", id="jalien-not-eq-same-ce-other-case"),
    pytest.param('!other.CE == "X"', NO_CE, "UNDEFINED", id="jalien-not-eq-missing-ce"),
    pytest.param('!other.CE == "X" && other.TTL > 1', NO_CE, "UNDEFINED", id="jalien-not-in-and"),
    pytest.param('!other.CE == "X" && other.TTL > 1', CE_Y, "UNDEFINED", id="jalien-not-ttl-gone"),
    pytest.param('!other.CE == "X" || other.TTL > 1', CE_X, "UNDEFINED", id="jalien-not-in-or"),
    # member(): JAliEn order (list first) and ClassAd order (value first), without case
    pytest.param(
        'member(other.Packages, "VO_ALICE@jq::v1.6-3")', SLOT, "TRUE", id="member-jalien-order"
    ),
    pytest.param(
        'member("VO_ALICE@jq::v1.6-3", other.Packages)', SLOT, "TRUE", id="member-classad-order"
    ),
    pytest.param(
        'member("multicore_8", other.GridPartitions)', SLOT, "TRUE", id="member-value-1st"
    ),
    pytest.param('member("x", other.GridPartitions)', SLOT, "FALSE", id="member-classad-absent"),
    pytest.param('member(other.Packages, "vo_alice@JQ::V1.6-3")', SLOT, "TRUE", id="member-case"),
    pytest.param('member("ANALYSIS", other.GridPartitions)', SLOT, "TRUE", id="member-case-2"),
    pytest.param('member(other.Packages, "VO_ALICE@jq::v1.6")', SLOT, "FALSE", id="member-prefix"),
    pytest.param("member(8.0, other.CoreCounts)", SLOT, "TRUE", id="member-number"),
    pytest.param("member(other.CoreCounts, 6)", SLOT, "FALSE", id="member-number-absent"),
    pytest.param('member(other.Empty, "x")', SLOT, "FALSE", id="member-empty-list"),
    pytest.param('member({ "a", "b" }, "B")', SLOT, "TRUE", id="member-list-literal"),
    pytest.param('member(other.Missing, "x")', SLOT, "UNDEFINED", id="member-missing-list"),
    pytest.param('member("x", other.Missing)', SLOT, "UNDEFINED", id="member-missing-list-2nd"),
    pytest.param("member(other.Packages, other.Missing)", SLOT, "UNDEFINED", id="member-no-value"),
    pytest.param('member("a", "b")', SLOT, "ERROR", id="member-two-scalars"),
    pytest.param('member(other.CE, "x")', SLOT, "ERROR", id="member-scalar-attribute"),
    pytest.param("member(other.Packages, other.Packages)", SLOT, "ERROR", id="member-two-lists"),
    pytest.param('MEMBER(other.Packages, "VO_ALICE@jq::v1.6-3")', SLOT, "TRUE", id="member-name"),
    # type mismatches are ERROR, never a silent FALSE or a coercion
    pytest.param("other.CE == 1", SLOT, "ERROR", id="string-eq-number"),
    pytest.param("other.CE != 1", SLOT, "ERROR", id="string-ne-number"),
    pytest.param('other.TTL == "3600"', SLOT, "ERROR", id="number-eq-numeric-string"),
    pytest.param("other.CE < 1", SLOT, "ERROR", id="string-lt-number"),
    pytest.param('other.TTL >= "a"', SLOT, "ERROR", id="number-ge-string"),
    pytest.param("other.Docker == 1", SLOT, "ERROR", id="boolean-eq-number"),
    pytest.param('other.Packages == "x"', SLOT, "ERROR", id="list-eq-string"),
    pytest.param("other.CE < true", SLOT, "ERROR", id="string-lt-boolean"),
    pytest.param("other.Docker == true", SLOT, "TRUE", id="boolean-eq-boolean"),
    pytest.param("other.Docker", SLOT, "TRUE", id="boolean-attribute-alone"),
    pytest.param('other.TTL && other.CE == "x"', SLOT, "ERROR", id="number-as-and-operand"),
    pytest.param('"x" || true', SLOT, "ERROR", id="string-as-or-operand"),
    # isDefined / isUndefined
    pytest.param("isDefined(other.TTL)", SLOT, "TRUE", id="isdefined-present"),
    pytest.param("isDefined(other.Missing)", SLOT, "FALSE", id="isdefined-missing"),
    pytest.param("isUndefined(other.Missing)", SLOT, "TRUE", id="isundefined-missing"),
    pytest.param("isUndefined(other.TTL)", SLOT, "FALSE", id="isundefined-present"),
    pytest.param("isundefined(undefined)", SLOT, "TRUE", id="isundefined-literal"),
    pytest.param(
        "isDefined(other.Missing) && other.Missing > 1 || other.TTL > 1",
        SLOT,
        "TRUE",
        id="isdefined-guard",
    ),
    pytest.param(
        '!isDefined(other.GridPartitions) || member(other.GridPartitions, "multicore_8")',
        NO_CE,
        "TRUE",
        id="isdefined-guard-absent",
    ),
    # nested parentheses and precedence (&& binds tighter than ||)
    pytest.param("((((other.TTL > 1))))", SLOT, "TRUE", id="parens-deep"),
    pytest.param(
        '(other.TTL > 1 && (other.CE == "x" || (other.Price <= 1)))',
        SLOT,
        "TRUE",
        id="parens-nested",
    ),
    pytest.param(
        '((other.TTL > 1) && ((other.CE == "nope") || ((other.Price > 1))))',
        SLOT,
        "FALSE",
        id="parens-nested-false",
    ),
    pytest.param("other.TTL < 1 && other.TTL > 1 || true", SLOT, "TRUE", id="and-before-or"),
    pytest.param("other.TTL < 1 && (other.TTL > 1 || true)", SLOT, "FALSE", id="parens-override"),
    pytest.param("!((other.TTL < 1))", SLOT, "TRUE", id="not-of-parens"),
]


@pytest.mark.parametrize(("expression", "slot", "expected"), CASES)
def test_requirements_table(expression: str, slot: Mapping, expected: str) -> None:
    decision = decide(expression, slot)
    assert decision.outcome == expected, decision
    assert decision.matches is (expected == "TRUE")


# -- three-valued && and || --------------------------------------------------------------

# Each operand spelled two ways: read from the slot, and as a literal.
OPERANDS = {
    "TRUE": ("other.TTL > 1", "true"),
    "FALSE": ("other.TTL < 1", "false"),
    "UNDEFINED": ("other.Missing > 1", "undefined"),
}
AND = {
    ("TRUE", "TRUE"): "TRUE",
    ("TRUE", "FALSE"): "FALSE",
    ("TRUE", "UNDEFINED"): "UNDEFINED",
    ("FALSE", "TRUE"): "FALSE",
    ("FALSE", "FALSE"): "FALSE",
    ("FALSE", "UNDEFINED"): "FALSE",
    ("UNDEFINED", "TRUE"): "UNDEFINED",
    ("UNDEFINED", "FALSE"): "FALSE",
    ("UNDEFINED", "UNDEFINED"): "UNDEFINED",
}
OR = {
    ("TRUE", "TRUE"): "TRUE",
    ("TRUE", "FALSE"): "TRUE",
    ("TRUE", "UNDEFINED"): "TRUE",
    ("FALSE", "TRUE"): "TRUE",
    ("FALSE", "FALSE"): "FALSE",
    ("FALSE", "UNDEFINED"): "UNDEFINED",
    ("UNDEFINED", "TRUE"): "TRUE",
    ("UNDEFINED", "FALSE"): "UNDEFINED",
    ("UNDEFINED", "UNDEFINED"): "UNDEFINED",
}
LOGIC = [
    pytest.param(
        f"({OPERANDS[left][form]}) {op} ({OPERANDS[right][form]})",
        expected,
        id=f"{left}{op}{right}-{'slot' if form == 0 else 'literal'}",
    )
    for op, table in (("&&", AND), ("||", OR))
    for (left, right), expected in table.items()
    for form in (0, 1)
]


@pytest.mark.parametrize(("expression", "expected"), LOGIC)
def test_three_valued_logic(expression: str, expected: str) -> None:
    assert decide(expression).outcome == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("other.TTL < 1 && other.CE == 1", "FALSE", id="false-and-error"),
        pytest.param("other.TTL > 1 || other.CE == 1", "TRUE", id="true-or-error"),
        pytest.param("other.TTL > 1 && other.CE == 1", "ERROR", id="true-and-error"),
        pytest.param("other.TTL < 1 || other.CE == 1", "ERROR", id="false-or-error"),
        pytest.param("other.CE == 1 && other.TTL < 1", "ERROR", id="error-and-false"),
        pytest.param("other.CE == 1 || other.TTL > 1", "ERROR", id="error-or-true"),
        pytest.param("other.Missing > 1 && other.CE == 1", "ERROR", id="undefined-and-error"),
    ],
)
def test_error_in_logic(expression: str, expected: str) -> None:
    assert decide(expression).outcome == expected


# -- JAliEn's negation ---------------------------------------------------------------------


def test_jalien_negation_parses_as_negated_comparison() -> None:
    jalien = parse_expression('!other.CE == "X"')
    explicit = parse_expression('!(other.CE == "X")')
    assert jalien == explicit
    assert jalien != parse_expression('(!other.CE) == "X"')
    # rendered with the brackets that say what it means
    assert render(jalien) == '!(other.CE == "X")'
    # and && still groups the negated comparison as one clause
    assert parse_expression('!other.CE == "X" && other.TTL > 1') == parse_expression(
        '(!(other.CE == "X")) && (other.TTL > 1)'
    )


# -- non-boolean Requirements ------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param("other.TTL", id="number-attribute"),
        pytest.param("other.CE", id="string-attribute"),
        pytest.param("other.Packages", id="list-attribute"),
        pytest.param("3600", id="number-literal"),
        pytest.param('"yes"', id="string-literal"),
        pytest.param("other.TTL || true", id="number-or-true"),
    ],
)
def test_non_boolean_requirements_is_not_true(expression: str) -> None:
    decision = decide(expression)
    assert decision.outcome != "TRUE"
    assert not decision.matches


# -- the job's own attributes (my.*, self.* and bare names) ------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("other.TTL > my.MinTTL", "TRUE", id="my-number"),
        pytest.param("other.TTL > MinTTL", "TRUE", id="bare-number"),
        pytest.param("self.MinTTL == 100", "TRUE", id="self-scope"),
        pytest.param("my.minttl == 100", "TRUE", id="my-name-ignores-case"),
        pytest.param("MINTTL < 101", "TRUE", id="bare-name-ignores-case"),
        pytest.param("other.CE == my.Site", "TRUE", id="my-string-vs-slot"),
        pytest.param('member(my.Packages, "PKG-b")', "TRUE", id="my-list-member"),
        pytest.param('member("pkg-c", my.Packages)', "FALSE", id="my-list-member-absent"),
        pytest.param("my.Gate", "TRUE", id="my-expression-reads-slot"),
        pytest.param("my.Chained == 100", "TRUE", id="my-chained"),
        pytest.param("my.Missing == 1", "UNDEFINED", id="my-missing"),
        pytest.param("Missing", "UNDEFINED", id="bare-missing"),
        pytest.param("isUndefined(my.Missing)", "TRUE", id="isundefined-my-missing"),
        pytest.param("my.SelfRef", "ERROR", id="self-reference"),
        pytest.param("Loop", "ERROR", id="bare-self-reference"),
        pytest.param("my.PingA", "ERROR", id="mutual-reference"),
        pytest.param("my.SelfRef || other.TTL > 1", "ERROR", id="self-reference-in-or"),
    ],
)
def test_job_attributes(expression: str, expected: str) -> None:
    assert decide(expression, SLOT, job_attributes()).outcome == expected


@pytest.mark.parametrize("expression", ["my.MinTTL == 100", "MinTTL == 100"])
def test_job_references_without_a_job_are_undefined(expression: str) -> None:
    assert decide(expression, SLOT, None).outcome == "UNDEFINED"
    assert decide(expression, SLOT, {}).outcome == "UNDEFINED"


@pytest.mark.parametrize(
    "sources",
    [
        pytest.param({"A": "my.A"}, id="direct"),
        pytest.param({"A": "my.A > 1 && true"}, id="inside-an-expression"),
        pytest.param({"A": "my.B", "B": "my.C", "C": "my.A"}, id="cycle-of-three"),
    ],
)
def test_self_reference_is_error_not_recursion(sources: dict[str, str]) -> None:
    decision = decide("my.A", SLOT, job_attributes(sources))
    assert decision.outcome == "ERROR"
    assert "refers to itself" in decision.reason


def test_short_chain_of_job_attributes_resolves() -> None:
    sources = {f"A{i}": f"my.A{i + 1}" for i in range(8)}
    sources["A8"] = "other.TTL > 1"
    assert decide("my.A0", SLOT, job_attributes(sources)).outcome == "TRUE"
    sources["A8"] = "other.TTL < 1"
    assert decide("my.A0", SLOT, job_attributes(sources)).outcome == "FALSE"


def test_long_chain_of_job_attributes_is_not_a_recursion_error() -> None:
    # Regression: the evaluator once resolved A0 -> A1 -> ... recursively without a
    # bound, and a chain of ~1000 job attributes raised RecursionError.
    length = 1000
    sources = {f"A{i}": f"my.A{i + 1}" for i in range(length)}
    sources[f"A{length}"] = "other.TTL > 1"
    decision = decide("my.A0", SLOT, job_attributes(sources))
    assert decision.outcome == "ERROR"
    assert f"more than {MAX_REFERENCE_DEPTH} deep" in decision.reason


def test_cycle_value_does_not_depend_on_evaluation_order() -> None:
    job = job_attributes({"A": "my.B", "B": "isDefined(my.A)"})
    assert decide("my.A && my.B", SLOT, job).outcome == "ERROR"
    assert decide("my.B && my.A", SLOT, job).outcome == "ERROR"
    assert "cycle" in decide("my.A", SLOT, job).reason


def test_python_lists_in_a_slot_work_like_tuples() -> None:
    slot = Slot({"Packages": ["VO_ALICE@jq::v1.6-3"]})
    assert decide('member(other.Packages, "vo_alice@JQ::v1.6-3")', slot).outcome == "TRUE"


def test_job_attribute_value_does_not_depend_on_evaluation_order() -> None:
    length = 20
    sources = {f"A{i}": f"my.A{i + 1}" for i in range(length)}
    sources[f"A{length}"] = "other.TTL > 1"
    job = job_attributes(sources)
    # Regression: values were cached per node while depending on how deep the chain
    # already was when reached, so the outcome depended on the order of the clauses.
    near = decide("my.A10", SLOT, job).outcome
    far = decide("my.A0", SLOT, job).outcome
    assert near == "TRUE"
    assert far == "ERROR"  # 21 attributes deep: past MAX_REFERENCE_DEPTH
    # Each clause is the value it has alone, whatever was evaluated before it.
    assert decide("isDefined(my.A0) && my.A10", SLOT, job).outcome == "TRUE"
    assert decide("my.A10 && my.A0", SLOT, job).outcome == far
    assert decide("my.A0 && my.A10", SLOT, job).outcome == far


# -- the deciding clause ----------------------------------------------------------------


def test_false_names_the_failing_clause_and_its_inputs() -> None:
    slot = Slot({"TTL": 3600, "Packages": ("X",)})
    decision = decide('other.TTL > 72000 && member(other.Packages, "X")', slot)
    assert decision.outcome == "FALSE"
    assert decision.clause == "other.TTL > 72000"
    assert decision.clause_value == "FALSE"
    assert ("other.TTL", "3600") in decision.inputs
    # the member() clause did not decide, so its attribute is not reported
    assert all(name != "other.Packages" for name, _ in decision.inputs)


def test_false_on_the_right_names_the_right_clause() -> None:
    slot = Slot({"TTL": 86400, "Packages": ("Y",)})
    decision = decide('other.TTL > 72000 && member(other.Packages, "X")', slot)
    assert decision.outcome == "FALSE"
    assert decision.clause == 'member(other.Packages, "X")'
    assert decision.inputs == (("other.Packages", '{ "Y" }'),)


@pytest.mark.parametrize(
    ("expression", "missing"),
    [
        pytest.param(
            'other.TTL > 1 && member(other.GridPartitions, "multicore_8")',
            "other.GridPartitions",
            id="undefined-on-the-right",
        ),
        pytest.param(
            'other.Site == "CERN" && other.TTL > 1', "other.Site", id="undefined-on-the-left"
        ),
        pytest.param(
            'other.Site == "CERN" || other.TTL < 1', "other.Site", id="undefined-or-false"
        ),
        pytest.param(
            "!(other.TTL > 1 && other.Disk > 10)", "other.Disk", id="undefined-under-negation"
        ),
        pytest.param('!other.CE == "X"', "other.CE", id="jalien-negation"),
    ],
)
def test_undefined_names_the_missing_attribute(expression: str, missing: str) -> None:
    decision = decide(expression, Slot({"TTL": 3600}))
    assert decision.outcome == "UNDEFINED"
    assert missing in decision.clause
    assert (missing, "undefined") in decision.inputs


def test_error_names_the_clause_and_the_reason() -> None:
    decision = decide("other.TTL > 1 && other.CE == 1")
    assert decision.outcome == "ERROR"
    assert decision.clause == "other.CE == 1"
    assert ("other.CE", '"ALICE::CERN::X"') in decision.inputs
    assert "string" in decision.reason and "number" in decision.reason


def test_true_decision_matches() -> None:
    decision = decide('other.TTL > 1 && member(other.Packages, "VO_ALICE@jq::v1.6-3")')
    assert decision.outcome == "TRUE"
    assert decision.matches
    assert decision.reason == ""


# -- expressions the parser refuses -------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "col", "words"),
    [
        pytest.param('regexp("ALICE::CERN::.*", other.CE)', 1, ["regexp"], id="regexp"),
        pytest.param("foo()", 1, ["foo"], id="unknown-function"),
        pytest.param("other.TTL > 1 && foo(1)", 18, ["foo"], id="unknown-function-later"),
        pytest.param("  Strcmp(other.CE, 1)", 3, ["Strcmp"], id="unknown-function-indented"),
        pytest.param("member(1)", 1, ["member", "2", "1 given"], id="member-one-argument"),
        pytest.param(
            "other.TTL > 1 && member(1, 2, 3)", 18, ["member", "3 given"], id="member-three"
        ),
        pytest.param("isDefined()", 1, ["isDefined", "0 given"], id="isdefined-no-argument"),
        pytest.param(
            "isUndefined(other.A, other.B)", 1, ["isUndefined", "2 given"], id="isundefined-two"
        ),
    ],
)
def test_unsupported_calls_raise_jdlerror(expression: str, col: int, words: list[str]) -> None:
    with pytest.raises(JDLError) as info:
        parse_expression(expression)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.line, err.col) == (1, col)
    for word in words:
        assert word in err.message
    # the caret sits under the reported column
    headline, excerpt, caret = str(err).split("\n")
    assert headline.startswith(f"<expression>:1:{col}: ")
    assert caret.index("^") - 4 == col - 1
    assert excerpt[4:] == expression


def test_unknown_function_lists_the_supported_ones() -> None:
    with pytest.raises(JDLError, match=r"supported: isdefined, isundefined, member"):
        parse_expression('regexp(".*", other.CE)')


# -- slots read from TOML -------------------------------------------------------------------


def test_slot_from_toml_reads_scalars_and_lists() -> None:
    slot = Slot.from_toml(SLOTS_DIR / "scalars.toml")
    assert slot["Name"] == "worker-01"
    assert slot["Cores"] == 8 and isinstance(slot["Cores"], int)
    assert slot["LoadAverage"] == 0.75
    assert slot["Docker"] is True
    assert slot["Partitions"] == ("a", "b")
    assert slot["Mixed"] == ("x", 1, 2.5, False)
    assert slot["Empty"] == ()
    assert len(slot) == 7
    assert set(slot) == {"Name", "Cores", "LoadAverage", "Docker", "Partitions", "Mixed", "Empty"}
    # names are looked up without case, as other.* references are
    assert slot["cores"] == 8
    assert "PARTITIONS" in slot
    assert "Disk" not in slot


def test_slot_from_toml_feeds_evaluate() -> None:
    slot = Slot.from_toml(SLOTS_DIR / "scalars.toml")
    assert decide('other.cores >= 8 && member("B", other.Partitions) && other.Docker', slot).matches
    assert decide("member(other.Empty, 1)", slot).outcome == "FALSE"


@pytest.mark.parametrize(
    ("jdl", "args", "slot_file", "expected", "clause"),
    [
        pytest.param(
            "production_mc.jdl", None, "production_mc_match.toml", "TRUE", None, id="mc-match"
        ),
        pytest.param(
            "production_mc.jdl",
            None,
            "production_mc_short_ttl.toml",
            "FALSE",
            "other.TTL > 72000",
            id="mc-short-ttl",
        ),
        pytest.param(
            "production_mc.jdl",
            None,
            "production_mc_no_partitions.toml",
            "UNDEFINED",
            'member(other.GridPartitions, "multicore_8")',
            id="mc-no-partitions",
        ),
        pytest.param(
            "production_mc.jdl",
            None,
            "production_mc_legacy_ce.toml",
            "FALSE",
            '!(other.CE == "ALICE::LegacySite::CREAM")',
            id="mc-legacy-ce",
        ),
        pytest.param(
            "production_mc.jdl",
            None,
            "production_mc_ttl_string.toml",
            "ERROR",
            "other.TTL > 72000",
            id="mc-ttl-string",
        ),
        pytest.param(
            "user_analysis.jdl", None, "user_analysis_match.toml", "TRUE", None, id="analysis"
        ),
        pytest.param(
            "user_analysis.jdl",
            None,
            "production_mc_match.toml",
            "TRUE",
            None,
            id="analysis-on-mc-slot",
        ),
        pytest.param(
            "production_mc.jdl",
            None,
            "user_analysis_match.toml",
            "FALSE",  # UNDEFINED (no Type) && FALSE is FALSE
            'member(other.Packages, "VO_ALICE@O2PDPSuite::MC-prod-2024-v3-1")',
            id="mc-on-analysis-slot",
        ),
        pytest.param(
            "calibration.jdl",
            ["544121", "cpass0"],
            "calibration_match.toml",
            "TRUE",
            None,
            id="calibration",
        ),
    ],
)
def test_corpus_requirements_against_slot_files(
    jdl: str, args: list[str] | None, slot_file: str, expected: str, clause: str | None
) -> None:
    spec = load_job((CORPUS / jdl).read_bytes(), source=jdl, args=args)
    assert spec.requirements is not None
    decision = evaluate(
        spec.requirements, Slot.from_toml(SLOTS_DIR / slot_file), spec.job_attributes()
    )
    assert decision.outcome == expected
    if clause is not None:
        assert decision.clause == clause


def _non_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'CE = "caf\xe9"\n')
    return path


def _directory(tmp_path: Path) -> Path:
    return tmp_path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "no-such-slot.toml"


@pytest.mark.parametrize(
    ("make_path", "fragment"),
    [
        pytest.param(lambda _: SLOTS_DIR / "bad_invalid_toml.toml", "not valid TOML", id="bad"),
        pytest.param(lambda _: SLOTS_DIR / "bad_nested_table.toml", "'Resources'", id="table"),
        pytest.param(lambda _: SLOTS_DIR / "bad_inline_table.toml", "'Resources'", id="inline"),
        pytest.param(lambda _: SLOTS_DIR / "bad_date_value.toml", "'Expires'", id="date"),
        pytest.param(lambda _: SLOTS_DIR / "bad_datetime_value.toml", "'Started'", id="datetime"),
        pytest.param(lambda _: SLOTS_DIR / "bad_nested_list.toml", "'Partitions'", id="list-list"),
        pytest.param(_non_utf8, "not valid TOML", id="non-utf8"),
        pytest.param(_directory, "cannot read", id="directory"),
        pytest.param(_missing, "cannot read", id="missing-file"),
    ],
)
def test_slot_from_toml_rejects_bad_files(tmp_path: Path, make_path, fragment: str) -> None:
    path = make_path(tmp_path)
    with pytest.raises(ValueError) as info:
        Slot.from_toml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert fragment in message
    assert "\n" not in message.strip()


def test_chain_of_tall_attributes_is_error_not_recursion_error() -> None:
    # Each attribute is a 199-level chain; five of them together are too deep to walk.
    tall = " && ".join(["true"] * 198)
    sources = {f"A{i}": f"my.A{i + 1} && {tall}" for i in range(5)}
    sources["A5"] = "true"
    decision = decide("my.A0", SLOT, job_attributes(sources))
    assert decision.outcome == "ERROR"
    assert "levels through its references" in decision.reason


def test_slot_names_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "slot.toml"
    path.write_text('CE = "a"\nce = "b"\n')
    with pytest.raises(ValueError, match="are one attribute"):
        Slot.from_toml(path)
