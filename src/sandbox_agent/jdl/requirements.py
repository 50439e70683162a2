"""Evaluate a Requirements expression against a slot, with ClassAd's three-valued logic.

Values are TRUE, FALSE, UNDEFINED (an attribute that is not there) and ERROR (a type
mismatch such as comparing a string with a number).  A job matches a slot only when
its Requirements is TRUE.  Besides the value, evaluation reports the clause that
decided it, so ``jdl match`` can say *why* a job does not fit.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_agent.jdl.expr import (
    UNDEFINED,
    AttrRef,
    BinOp,
    Call,
    Expr,
    ListExpr,
    Literal,
    Not,
    Undefined,
    attribute_refs,
    height,
    render,
    render_scalar,
)

MAX_REFERENCE_DEPTH = 16  # my.A -> my.B -> ... chains of job attributes
# Tree levels along such a chain, all expressions together. With a Requirements of at
# most 200 levels (the parser's cap) evaluation stays within about 400 levels of
# recursion, well inside Python's stack.
MAX_CHAIN_HEIGHT = 200


@dataclass(frozen=True)
class Error:
    """ClassAd's ERROR value, with the reason a person needs."""

    reason: str


Value = str | int | float | bool | Undefined | Error | tuple["Value", ...]
SlotValue = str | int | float | bool | tuple[str | int | float | bool, ...]


class Slot(Mapping[str, SlotValue]):
    """What a worker slot offers (``other.*`` in Requirements), keyed case-insensitively."""

    def __init__(self, attributes: Mapping[str, SlotValue]) -> None:
        self._attrs = {
            name.casefold(): (name, tuple(value) if isinstance(value, list) else value)
            for name, value in attributes.items()
        }

    def __getitem__(self, name: str) -> SlotValue:
        return self._attrs[name.casefold()][1]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._attrs.values())

    def __len__(self) -> int:
        return len(self._attrs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.casefold() in self._attrs

    @classmethod
    def from_toml(cls, path: Path) -> Slot:
        """Read a slot description: top-level ``Name = value`` pairs (strings, numbers,
        booleans, or lists of those).  Raises ValueError with the file and the fix."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the slot description: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
        except RecursionError:
            raise ValueError(f"{path}: nested too deeply to be a slot description") from None
        attrs: dict[str, SlotValue] = {}
        seen: dict[str, str] = {}
        for name, value in data.items():
            if name.casefold() in seen:
                raise ValueError(
                    f"{path}: slot attributes '{seen[name.casefold()]}' and '{name}' are one "
                    "attribute (names ignore case); keep one"
                )
            seen[name.casefold()] = name
            attrs[name] = _slot_value(path, name, value)
        return cls(attrs)


def _slot_value(path: Path, name: str, value: object) -> SlotValue:
    scalar = (str, int, float, bool)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path}: slot attribute '{name}' must be a finite number")
    if isinstance(value, scalar):
        return value
    if isinstance(value, list) and all(isinstance(v, scalar) for v in value):
        return tuple(value)
    raise ValueError(
        f"{path}: slot attribute '{name}' must be a string, number, boolean or a list of "
        "those (tables and dates are not slot attributes)"
    )


@dataclass(frozen=True)
class Decision:
    """The outcome of a Requirements, and the innermost clause that decided it."""

    outcome: str  # TRUE, FALSE, UNDEFINED or ERROR
    clause: str  # the deciding clause, rendered as JDL
    clause_value: str  # what that clause evaluated to
    inputs: tuple[tuple[str, str], ...]  # the attributes the clause read, and their values
    reason: str = ""  # for ERROR: what went wrong

    @property
    def matches(self) -> bool:
        return self.outcome == "TRUE"


def evaluate(
    requirements: Expr, slot: Mapping[str, SlotValue], job: Mapping[str, Expr] | None = None
) -> Decision:
    """Evaluate ``requirements`` with ``other.*`` read from ``slot`` and ``my.*`` (or bare
    names) from the job's own attributes ``job``."""
    ctx = _Context(slot, {k.casefold(): v for k, v in (job or {}).items()})
    value, clause = ctx.explain(requirements)
    clause_value = ctx.value(clause)
    return Decision(
        outcome=outcome_name(value),
        clause=render(clause),
        clause_value=outcome_name(clause_value)
        if isinstance(clause_value, bool | Undefined | Error)
        else show(clause_value),
        inputs=tuple((render(ref), show(ctx.value(ref))) for ref in _refs(clause)),
        reason=value.reason if isinstance(value, Error) else "",
    )


def outcome_name(value: Value) -> str:
    if value is True:
        return "TRUE"
    if value is False:
        return "FALSE"
    if isinstance(value, Undefined):
        return "UNDEFINED"
    if isinstance(value, Error):
        return "ERROR"
    return "ERROR"  # a Requirements that is not boolean is an error


def show(value: Value) -> str:
    """A value as a person reads it in a match report."""
    if isinstance(value, Error):
        return f"ERROR ({value.reason})"
    if isinstance(value, tuple):
        return "{ " + ", ".join(show(v) for v in value) + " }" if value else "{}"
    return render_scalar(value)


def _refs(node: Expr) -> list[AttrRef]:
    """The distinct attributes ``node`` reads, in source order."""
    seen: dict[str, AttrRef] = {}
    for ref in attribute_refs(node):
        seen.setdefault(render(ref).casefold(), ref)
    return list(seen.values())


def _is_number(value: Value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple):
        return "a list"
    return "a value"


def _order(op: str, a: Any, b: Any) -> bool:
    """a OP b for two numbers or two case-folded strings."""
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _equal(left: Value, right: Value) -> bool | Error:
    """ClassAd == on two defined scalars: numbers numerically, strings without case."""
    if _is_number(left) and _is_number(right):
        return left == right
    if isinstance(left, str) and isinstance(right, str):
        return left.casefold() == right.casefold()
    if isinstance(left, bool) and isinstance(right, bool):
        return left == right
    return Error(f"cannot compare {_kind(left)} with {_kind(right)}")


def _unsafe_attributes(job: dict[str, Expr]) -> dict[str, str]:
    """Job attributes whose value must be ERROR, decided from the reference graph before
    anything is evaluated: those on a cycle of references, and those whose chain of
    references is longer than MAX_REFERENCE_DEPTH or nests deeper, all expressions along
    it together, than MAX_CHAIN_HEIGHT.

    Deciding it statically keeps an attribute's value independent of the order in which
    clauses reach it (values are cached), and bounds how deep evaluation recurses."""
    edges = {
        name: sorted(
            {r.name.casefold() for r in attribute_refs(expr) if r.scope != "other"} & job.keys()
        )
        for name, expr in job.items()
    }
    unsafe: dict[str, str] = {}
    links: dict[str, int] = {}  # attributes along the longest chain from here
    cost: dict[str, int] = {}  # tree levels along the deepest chain from here
    for component in _components(edges):
        if len(component) > 1 or component[0] in edges[component[0]]:
            for name in component:
                unsafe[name] = "refers to itself through a cycle of references"
            continue
        name = component[0]
        # Components come out dependencies first, so every child is decided already;
        # an unsafe child answers ERROR at once and adds nothing to the depth.
        safe = [c for c in edges[name] if c not in unsafe]
        links[name] = 1 + max((links[c] for c in safe), default=0)
        cost[name] = height(job[name]) + max((cost[c] for c in safe), default=0)
        if links[name] > MAX_REFERENCE_DEPTH:
            unsafe[name] = f"refers to attributes more than {MAX_REFERENCE_DEPTH} deep"
        elif cost[name] > MAX_CHAIN_HEIGHT:
            unsafe[name] = f"nests more than {MAX_CHAIN_HEIGHT} levels through its references"
    return unsafe


def _components(edges: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), dependencies first, without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            children = edges[node]
            if position < len(children):
                work.append((node, position + 1))
                child = children[position]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


class _Context:
    def __init__(self, slot: Mapping[str, SlotValue], job: dict[str, Expr]) -> None:
        self.slot = slot if isinstance(slot, Slot) else Slot(slot)
        self.job = job
        self.unsafe = _unsafe_attributes(job)
        self.cache: dict[int, Value] = {}

    def value(self, node: Expr) -> Value:
        key = id(node)
        if key not in self.cache:
            self.cache[key] = self._value(node)
        return self.cache[key]

    def _value(self, node: Expr) -> Value:
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, ListExpr):
            return tuple(self.value(item) for item in node.items)
        if isinstance(node, AttrRef):
            return self.attribute(node)
        if isinstance(node, Not):
            inner = self.value(node.operand)
            if isinstance(inner, bool):
                return not inner
            if isinstance(inner, Undefined | Error):
                return inner
            return Error(f"! needs a boolean, got {_kind(inner)}")
        if isinstance(node, Call):
            return self.call(node)
        return self.explain(node)[0]

    def attribute(self, ref: AttrRef) -> Value:
        if ref.scope == "other":
            if ref.name not in self.slot:
                return UNDEFINED
            return self.slot[ref.name]
        folded = ref.name.casefold()
        target = self.job.get(folded)
        if target is None:
            return UNDEFINED
        problem = self.unsafe.get(folded)
        if problem is not None:
            return Error(f"'{ref.name}' {problem}")
        return self.value(target)

    def call(self, node: Call) -> Value:
        args = [self.value(arg) for arg in node.args]
        if node.name == "isdefined":
            return not isinstance(args[0], Undefined)
        if node.name == "isundefined":
            return isinstance(args[0], Undefined)
        # member(): JAliEn writes member(list, value), ClassAds member(value, list).
        first, second = args
        for value in (first, second):
            if isinstance(value, Error):
                return value
        lists = [v for v in (first, second) if isinstance(v, tuple)]
        if isinstance(first, Undefined) or isinstance(second, Undefined):
            return UNDEFINED
        if len(lists) != 1:
            return Error("member() needs one list and one value")
        items, needle = (first, second) if isinstance(first, tuple) else (second, first)
        assert isinstance(items, tuple)
        if isinstance(needle, tuple):
            return Error("member() needs one list and one value")
        for item in items:
            if isinstance(item, Undefined | Error | tuple):
                continue
            if _equal(item, needle) is True:
                return True
        return False

    def compare(self, node: BinOp) -> Value:
        left, right = self.value(node.left), self.value(node.right)
        for value in (left, right):
            if isinstance(value, Error):
                return value
        if isinstance(left, Undefined) or isinstance(right, Undefined):
            return UNDEFINED
        if isinstance(left, tuple) or isinstance(right, tuple):
            return Error(f"'{node.op}' cannot compare lists; use member()")
        if node.op in ("==", "!="):
            equal = _equal(left, right)
            if isinstance(equal, Error):
                return equal
            return equal if node.op == "==" else not equal
        if _is_number(left) and _is_number(right):
            return _order(node.op, left, right)
        if isinstance(left, str) and isinstance(right, str):
            return _order(node.op, left.casefold(), right.casefold())
        return Error(f"'{node.op}' cannot order {_kind(left)} and {_kind(right)}")

    def explain(self, node: Expr) -> tuple[Value, Expr]:
        """The value of ``node`` and the innermost clause that decided it."""
        if not isinstance(node, BinOp) or node.op not in ("&&", "||"):
            if (
                isinstance(node, Not)
                and isinstance(node.operand, BinOp)
                and node.operand.op
                in (
                    "&&",
                    "||",
                )
            ):
                return self.value(node), self.explain(node.operand)[1]
            if isinstance(node, BinOp):
                return self.compare(node), node
            return self.value(node), node
        left, left_clause = self.explain(node.left)
        if not isinstance(left, bool | Undefined | Error):
            return Error(f"'{node.op}' needs booleans, got {_kind(left)}"), left_clause
        if isinstance(left, Error):
            return left, left_clause
        short_circuit = node.op == "||"  # the left value that decides alone
        if left is short_circuit:
            return left, left_clause
        right, right_clause = self.explain(node.right)
        if not isinstance(right, bool | Undefined | Error):
            return Error(f"'{node.op}' needs booleans, got {_kind(right)}"), right_clause
        if isinstance(right, Error):
            return right, right_clause
        if left is not short_circuit and isinstance(left, bool):
            # TRUE && x or FALSE || x: x decides
            return right, right_clause
        # left is UNDEFINED: only a deciding right value can settle it
        if right is short_circuit:
            return right, right_clause
        return UNDEFINED, left_clause
