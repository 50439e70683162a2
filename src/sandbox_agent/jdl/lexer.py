"""Tokens of the JDL: identifiers, strings, numbers, sized words and operators.

Comments are dropped here: ``#`` and ``//`` run to the end of the line and ``/* */``
blocks may span lines, but only outside strings, so ``"#alien_counter_03i#"`` is data.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from enum import Enum

from sandbox_agent.jdl.errors import JDLError


class Kind(Enum):
    IDENT = "identifier"
    STRING = "string"
    INT = "integer"
    FLOAT = "number"
    WORD = "sized value"  # a number glued to a unit, such as 8GB: read as a string
    OP = "operator"
    EOF = "end of input"


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str  # the operator or identifier as written; the decoded value of a string
    offset: int  # character offset of the token's first character

    def describe(self) -> str:
        """How an error message names this token."""
        if self.kind is Kind.EOF:
            return "end of input"
        if self.kind is Kind.STRING:
            return "a string"
        return f"'{self.text}'"


_ESCAPES = {'"': '"', "\\": "\\", "'": "'", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FLOAT_EXP = re.compile(r"\d+(?:\.\d+)?[eE][+-]?\d+(?![A-Za-z0-9_])")
_SIZED = re.compile(r"\d+(?:\.\d+)?[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"\d+(\.\d+)?")
_SPACE = re.compile(r"[ \t\r\n\f\v]+")
_TWO_CHAR_OPS = ("==", "!=", "<=", ">=", "&&", "||")
_ONE_CHAR_OPS = "=;,{}[]()<>!.-"


class Source:
    """The JDL text with a fast offset -> (line, column) map for error messages."""

    def __init__(self, text: str, name: str = "<jdl>") -> None:
        self.text = text
        self.name = name
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def position(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self._line_starts, offset) - 1
        return index + 1, offset - self._line_starts[index] + 1

    def error(self, message: str, offset: int, expected: str | None = None) -> JDLError:
        line, col = self.position(offset)
        return JDLError(message, line, col, text=self.text, source=self.name, expected=expected)


def tokenize(src: Source) -> list[Token]:
    """Split the whole text into tokens, ending with one EOF token."""
    text = src.text
    tokens: list[Token] = []
    pos = 0
    end = len(text)
    while pos < end:
        ch = text[pos]
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
            continue
        if ch == "#" or text.startswith("//", pos):
            newline = text.find("\n", pos)
            pos = end if newline < 0 else newline
            continue
        if text.startswith("/*", pos):
            close = text.find("*/", pos + 2)
            if close < 0:
                raise src.error("unterminated /* comment", pos, expected="'*/' to close it")
            pos = close + 2
            continue
        if ch == '"':
            value, pos_after = _string(src, pos)
            tokens.append(Token(Kind.STRING, value, pos))
            pos = pos_after
            continue
        if ch.isascii() and ch.isdigit():
            for pattern, kind in (
                (_FLOAT_EXP, Kind.FLOAT),
                (_SIZED, Kind.WORD),
                (_NUMBER, Kind.INT),
            ):
                m = pattern.match(text, pos)
                if m:
                    if kind is Kind.INT and m.group(1):
                        kind = Kind.FLOAT
                    tokens.append(Token(kind, m.group(0), pos))
                    pos = m.end()
                    break
            continue
        m = _IDENT.match(text, pos)
        if m:
            tokens.append(Token(Kind.IDENT, m.group(0), pos))
            pos = m.end()
            continue
        two = text[pos : pos + 2]
        if two in _TWO_CHAR_OPS:
            tokens.append(Token(Kind.OP, two, pos))
            pos += 2
            continue
        if ch in _ONE_CHAR_OPS:
            tokens.append(Token(Kind.OP, ch, pos))
            pos += 1
            continue
        if ch in "&|":
            raise src.error(f"single '{ch}' is not an operator", pos, expected=f"'{ch}{ch}'")
        if ch == "'":
            raise src.error("single quotes do not make a string in a JDL; use double quotes", pos)
        shown = ch if ch.isprintable() else f"U+{ord(ch):04X}"
        raise src.error(
            f"unexpected character '{shown}'; a value with such characters must be quoted",
            pos,
        )
    tokens.append(Token(Kind.EOF, "", end))
    return tokens


def _string(src: Source, start: int) -> tuple[str, int]:
    """Decode the string literal opening at ``start``; return it and the offset after it."""
    text = src.text
    out: list[str] = []
    pos = start + 1
    while True:
        # Copy runs of plain characters at once; long strings are common (InputData).
        stop = pos
        while stop < len(text) and text[stop] not in '"\\\n':
            stop += 1
        chunk = text[pos:stop]
        if "\x00" in chunk:
            # No NUL can reach an argv, a path or an environment variable.
            raise src.error("a NUL character cannot be part of a string", pos + chunk.index("\x00"))
        out.append(chunk)
        pos = stop
        if pos >= len(text) or text[pos] == "\n":
            raise src.error(
                "unterminated string", start, expected="a closing '\"' on the same line"
            )
        if text[pos] == '"':
            return "".join(out), pos + 1
        # a backslash
        if pos + 1 >= len(text) or text[pos + 1] not in _ESCAPES:
            shown = text[pos + 1 : pos + 2].replace("\n", "\\n")
            raise src.error(
                f"unknown escape '\\{shown}' in a string; write '\\\\' for a backslash",
                pos,
                expected="one of \\\" \\\\ \\' \\n \\t \\r \\b \\f",
            )
        out.append(_ESCAPES[text[pos + 1]])
        pos += 2
