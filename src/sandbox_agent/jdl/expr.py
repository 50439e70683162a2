"""The expression tree of JDL values, and its rendering back to JDL text.

Every value on the right of ``=`` is parsed to this tree: a plain string is a
``Literal``, a list is a ``ListExpr``, and Requirements is an operator tree.  Nodes
are frozen and compare by content only (positions are carried for error messages
but take no part in equality), so a rendered and re-parsed value compares equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Undefined(Enum):
    """ClassAd's UNDEFINED: the value of an attribute that is not there."""

    UNDEFINED = "undefined"

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = Undefined.UNDEFINED

Scalar = str | int | float | bool | Undefined


@dataclass(frozen=True)
class Literal:
    value: Scalar
    offset: int = field(default=-1, compare=False)
    # a quoted string's text as written: JAliEn keeps it so (backslashes and all), splits
    # Arguments from it and exports it; rendered as it is, so the normal form keeps it
    raw: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Expr, ...]
    offset: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class AttrRef:
    """``other.Name`` (the slot), ``my.Name`` / ``self.Name`` or a bare ``Name`` (the job)."""

    scope: str | None  # "other", "my", or None; stored lower-case
    name: str  # as written; looked up case-insensitively
    offset: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Call:
    name: str  # canonical lower-case function name
    args: tuple[Expr, ...]
    offset: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Not:
    operand: Expr
    offset: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class BinOp:
    op: str  # one of || && == != < <= > >=
    left: Expr
    right: Expr
    offset: int = field(default=-1, compare=False)


Expr = Literal | ListExpr | AttrRef | Call | Not | BinOp

COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")

# Binding strength, loosest first.  Negation sits between && and the comparisons, so
# that ``!other.CE == "X"`` reads as ``!(other.CE == "X")`` as JAliEn users intend.
_PRECEDENCE = {"||": 1, "&&": 2, "!": 3, **{op: 4 for op in COMPARISONS}}
_ATOM = 5


def _strength(node: Expr) -> int:
    if isinstance(node, BinOp):
        return _PRECEDENCE[node.op]
    if isinstance(node, Not):
        return _PRECEDENCE["!"]
    return _ATOM


def quote(value: str) -> str:
    """A JDL string literal for ``value``."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("\r", "\\r")
        .replace("\b", "\\b")
        .replace("\f", "\\f")
    )
    return f'"{escaped}"'


def render(node: Expr) -> str:
    """JDL text for ``node``, with only the parentheses the grammar needs."""
    if isinstance(node, Literal):
        return f'"{node.raw}"' if node.raw is not None else render_scalar(node.value)
    if isinstance(node, ListExpr):
        return "{ " + ", ".join(render(item) for item in node.items) + " }" if node.items else "{}"
    if isinstance(node, AttrRef):
        return f"{node.scope}.{node.name}" if node.scope else node.name
    if isinstance(node, Call):
        return f"{node.name}(" + ", ".join(render(a) for a in node.args) + ")"
    if isinstance(node, Not):
        inner = render(node.operand)
        # Always bracket a compound operand: `!(other.CE == "X")` says what it means to
        # a reader, while `!other.CE == "X"` (the same tree) invites a misreading.
        if _strength(node.operand) < _ATOM:
            inner = f"({inner})"
        return f"!{inner}"
    mine = _PRECEDENCE[node.op]
    left, right = render(node.left), render(node.right)
    if node.op in COMPARISONS:
        # Comparisons do not chain, and a negation cannot stand on either side unwrapped.
        if _strength(node.left) <= mine:
            left = f"({left})"
        if _strength(node.right) <= mine:
            right = f"({right})"
    else:
        # || and && are left-associative.
        if _strength(node.left) < mine:
            left = f"({left})"
        if _strength(node.right) <= mine:
            right = f"({right})"
    return f"{left} {node.op} {right}"


def render_scalar(value: Scalar) -> str:
    if isinstance(value, Undefined):
        return "undefined"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, float):
        text = repr(value)
        return text if ("." in text or "e" in text) else text + ".0"
    return str(value)


def attribute_refs(node: Expr) -> list[AttrRef]:
    """Every attribute reference in ``node``, in source order."""
    found: list[AttrRef] = []
    stack: list[Expr] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, AttrRef):
            found.append(current)
        stack.extend(reversed(children(current)))
    return found


def children(node: Expr) -> tuple[Expr, ...]:
    if isinstance(node, ListExpr):
        return node.items
    if isinstance(node, Call):
        return node.args
    if isinstance(node, Not):
        return (node.operand,)
    if isinstance(node, BinOp):
        return (node.left, node.right)
    return ()


def height(node: Expr) -> int:
    """Levels of the tree under ``node`` (a leaf is 1), computed without recursion."""
    best = 0
    stack = [(node, 1)]
    while stack:
        current, level = stack.pop()
        best = max(best, level)
        stack.extend((child, level + 1) for child in children(current))
    return best
