"""Tokens of the JDL: identifiers, strings, numbers, sized words and operators.

Comments are dropped here: ``#`` and ``//`` run to the end of the line and ``/* */``
blocks may span lines, but only outside strings, so ``"#alien_counter_03i#"`` is data.
"""

from __future__ import annotations

import bisect
import re
from enum import Enum
from typing import NamedTuple, NoReturn

from sandbox_agent.jdl.errors import JDLError


class Kind(Enum):
    IDENT = "identifier"
    STRING = "string"
    INT = "integer"
    FLOAT = "number"
    WORD = "sized value"  # a number glued to a unit, such as 8GB: read as a string
    OP = "operator"
    EOF = "end of input"


class Token(NamedTuple):
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

# One pass of one regex finds every well-formed token; anything it cannot take (an
# unterminated string, a bad escape, a stray character) goes to the slow path below,
# which exists to say exactly what is wrong.
_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n\f\v]+)
  | (?P<comment>(?:\#|//)[^\n]*)
  | (?P<block>/\*.*?\*/)
  | (?P<string>"(?:[^"\\\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]|\\["\\'ntrbf])*")
  | (?P<float>[0-9]+(?:\.[0-9]+)?[eE][+-]?[0-9]+(?![A-Za-z0-9_]))
  | (?P<sized>[0-9]+(?:\.[0-9]+)?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+(?:\.[0-9]+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[=;,{}\[\]()<>!.\-])
    """,
    re.VERBOSE | re.DOTALL,
)
_UNESCAPE = re.compile(r"\\(.)")
# Characters a string may not hold raw: control characters (tab aside), which could
# drive a terminal that shows a normalized JDL, and bidirectional overrides, which make
# text read differently from what it is ("Trojan Source").
FORBIDDEN_CHARACTERS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
MAX_NUMBER_LENGTH = 40  # digits and unit together; anything longer is not a real value
MAX_TOKENS = 250_000  # far above any real JDL; caps the work hostile input can cause


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
    append = tokens.append
    pos = 0
    end = len(text)
    match = _TOKEN.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            raw = _unquoted_list(text, tokens, pos)
            if raw is None:
                _refuse(src, pos)  # raises
            else:
                pos = raw
                continue
        group = m.lastgroup
        if group == "space" or group == "comment" or group == "block":
            pass
        elif group == "string":
            body = m.group()[1:-1]
            if "\\" in body:
                body = _UNESCAPE.sub(lambda e: _ESCAPES[e.group(1)], body)
            append(Token(Kind.STRING, body, pos))
        elif group == "op":
            append(Token(Kind.OP, m.group(), pos))
        elif group == "ident":
            append(Token(Kind.IDENT, m.group(), pos))
        else:
            text_ = m.group()
            if len(text_) > MAX_NUMBER_LENGTH:
                raise src.error(f"number longer than {MAX_NUMBER_LENGTH} characters", pos)
            if group == "number":
                append(Token(Kind.FLOAT if "." in text_ else Kind.INT, text_, pos))
            elif group == "float":
                append(Token(Kind.FLOAT, text_, pos))
            else:
                append(Token(Kind.WORD, text_, pos))
        if len(tokens) > MAX_TOKENS:
            raise src.error(f"more than {MAX_TOKENS} tokens; the JDL is too large to be real", pos)
        pos = m.end()
    append(Token(Kind.EOF, "", end))
    return tokens


def _unquoted_list(text: str, tokens: list[Token], pos: int) -> int | None:
    """A value ``Key = {stdout@disk=1};`` whose braces hold no quote at all is one item,
    its text as written (JAliEn reads ``{std*}`` so). Only for what no token can take:
    such a list is otherwise refused, and every list that tokenizes keeps its meaning.
    The tokens since the ``{`` become one string; the offset of the ``}``, or None."""
    opened = next((i for i in range(len(tokens) - 1, -1, -1)
                   if tokens[i].kind is Kind.OP and tokens[i].text in "{}"), None)  # fmt: skip
    if opened is None or tokens[opened].text != "{" or opened == 0:
        return None
    before = tokens[opened - 1]
    if before.kind is not Kind.OP or before.text != "=":
        return None  # only a statement's whole value, never inside an expression
    start = tokens[opened].offset + 1
    close = text.find("}", pos)
    if close < 0:
        return None
    body = text[start:close]
    if any(c in body for c in '"{;#') or "//" in body or "/*" in body:
        return None
    item = body.strip()
    if not item or FORBIDDEN_CHARACTERS.search(item):
        return None  # one line of text, no control characters: as a string must be
    del tokens[opened + 1 :]
    tokens.append(Token(Kind.STRING, item, start))
    return close


def _refuse(src: Source, pos: int) -> NoReturn:
    """Explain why no token starts at ``pos``."""
    text = src.text
    ch = text[pos]
    if ch == '"':
        _string(src, pos)  # raises with the exact problem
    if text.startswith("/*", pos):
        raise src.error("unterminated /* comment", pos, expected="'*/' to close it")
    if ch in "&|":
        raise src.error(f"single '{ch}' is not an operator", pos, expected=f"'{ch}{ch}'")
    if ch == "'":
        raise src.error("single quotes do not make a string in a JDL; use double quotes", pos)
    shown = ch if ch.isprintable() else f"U+{ord(ch):04X}"
    raise src.error(
        f"unexpected character '{shown}'; a value with such characters must be quoted", pos
    )


def _string(src: Source, start: int) -> NoReturn:
    """Find what is wrong with the string literal opening at ``start``, and raise it."""
    text = src.text
    pos = start + 1
    while pos < len(text):
        ch = text[pos]
        if ch == "\n":
            break
        if ch == '"':
            raise AssertionError("the token regex accepts every well-formed string")
        if ch == "\\":
            if pos + 1 >= len(text) or text[pos + 1] not in _ESCAPES:
                shown = text[pos + 1 : pos + 2]
                shown = shown if shown.isprintable() else f"U+{ord(shown):04X}" if shown else ""
                raise src.error(
                    f"unknown escape '\\{shown}' in a string; write '\\\\' for a backslash",
                    pos,
                    expected="one of \\\" \\\\ \\' \\n \\t \\r \\b \\f",
                )
            pos += 2
            continue
        if ch == "\x00":
            # No NUL can reach an argv, a path or an environment variable.
            raise src.error("a NUL character cannot be part of a string", pos)
        if FORBIDDEN_CHARACTERS.match(ch):
            raise src.error(
                f"control or bidirectional character U+{ord(ch):04X} in a string; "
                "remove it (write \\t, \\n and the like as escapes)",
                pos,
            )
        pos += 1
    raise src.error("unterminated string", start, expected="a closing '\"' on the same line")
