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
    PLACEHOLDER = "submit argument"  # $1 outside quotes: JAliEn puts the argument there
    OP = "operator"
    EOF = "end of input"


class Token(NamedTuple):
    kind: Kind
    text: str  # the operator or identifier as written; the decoded value of a string
    offset: int  # character offset of the token's first character
    raw: str | None = None  # a quoted string's text as written, escapes and all

    def describe(self) -> str:
        """How an error message names this token."""
        if self.kind is Kind.EOF:
            return "end of input"
        if self.kind is Kind.STRING:
            return "a string"
        return f"'{self.text}'"


_ESCAPES = {'"': '"', "\\": "\\", "'": "'", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
# What a string holds between its quotes: no raw control character (tab aside) or
# bidirectional override, and a backslash only before a visible character. A backslash
# before another character than those of _ESCAPES stays in the value, as JAliEn, which
# keeps every backslash, reads it: "a\d" is a, backslash, d.
_CONTROLS = r"\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"  # tab (\x09) aside
_BODY = rf"""(?:[^"\\{_CONTROLS}]|\\[^\s{_CONTROLS}])*"""
STRING_BODY = re.compile(_BODY)

# One pass of one regex finds every well-formed token; anything it cannot take (an
# unterminated string, a bad escape, a stray character) goes to the slow path below,
# which exists to say exactly what is wrong.
_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n\f\v]+)
  | (?P<comment>(?:\#|//)[^\n]*)
  | (?P<block>/\*.*?\*/)
  | (?P<string>"(?P<body>"""
    + _BODY
    + r""")")
  | (?P<float>[0-9]+(?:\.[0-9]+)?[eE][+-]?[0-9]+(?![A-Za-z0-9_]))
  | (?P<sized>[0-9]+(?:\.[0-9]+)?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+(?:\.[0-9]+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<placeholder>\$[0-9]{1,4}(?![A-Za-z0-9_]))
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
        # (offset, message): where JAliEn would read the text differently; see tokenize
        self.differences: list[tuple[int, str]] = []
        self.notes: list[tuple[int, str]] = []  # (offset, message): read alike, said

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
            resume = _unquoted_list(src, tokens, pos)
            resume = resume if resume is not None else _unquoted_value(src, tokens, pos)
            if resume is None:
                _refuse(src, pos)  # raises
            else:
                pos = resume
                continue
        group = m.lastgroup
        if group == "space":
            pass
        elif group == "comment" or group == "block":
            _comment_difference(src, m.group(), pos)
        elif group == "string":
            raw = body = m.group("body")
            if "\\" in body:
                body = unescape(body)
            append(Token(Kind.STRING, body, pos, raw))
        elif group == "op":
            append(Token(Kind.OP, m.group(), pos))
        elif group == "ident":
            append(Token(Kind.IDENT, m.group(), pos))
        elif group == "placeholder":
            append(Token(Kind.PLACEHOLDER, m.group(), pos))
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


def _comment_difference(src: Source, comment: str, pos: int) -> None:
    """JAliEn drops only lines that start with '#': it refuses a file with '//' or
    '/* */' ("Illegal character '/' in key"), and a '#' after a value on its line is
    read into the statement that follows. Said, since this parser reads them all."""
    if not comment.startswith("#"):
        kind = "'//'" if comment.startswith("//") else "'/* */'"
        src.differences.append((pos, f"JAliEn refuses {kind} comments ('Illegal character "
                                     "in key'); use a line that starts with '#'"))  # fmt: skip
        return
    line_start = src.text.rfind("\n", 0, pos) + 1
    if src.text[line_start:pos].strip():
        src.differences.append((pos, "JAliEn reads a '#' only at the start of a line as a "
                                     "comment; move this one to a line of its own"))  # fmt: skip


def unescape(raw: str) -> str:
    """A string's value from its text between the quotes: \\n is a newline, \\d stays."""
    return _UNESCAPE.sub(lambda e: _ESCAPES.get(e.group(1), e.group()), raw)


def _unquoted_list(src: Source, tokens: list[Token], pos: int) -> int | None:
    """A value ``Key = {stdout@disk=1};`` whose braces hold no quote at all is one item,
    its text as written (JAliEn reads ``{std*}`` so). Only for what no token can take:
    such a list is otherwise refused, and every list that tokenizes keeps its meaning.
    The tokens since the ``{`` become one string; the offset of the ``}``, or None."""
    text = src.text
    # back to the statement's start at most: many such values must not cost n^2
    opened = next((i for i in range(len(tokens) - 1, -1, -1)
                   if tokens[i].kind is Kind.OP and tokens[i].text in "{};["), None)  # fmt: skip
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
    if not item or not STRING_BODY.fullmatch(item):
        return None  # one line of text, no control characters: as a string must be
    del tokens[opened + 1 :]
    # its text as written and its value, as a quoted string's: the normal form keeps both
    tokens.append(Token(Kind.STRING, unescape(item), start, item))
    src.notes.append((start, f"unquoted item '{item[:40]}' is read as the text written, as "
                             "JAliEn reads it; quote it"))  # fmt: skip
    return close


# What an unquoted statement value may hold to be read as its text: a path or a name
# (JAliEn writes JDLPath = /alice/.../x.jdl; so), never expression or quote characters.
_UNQUOTED_VALUE = re.compile(r"[A-Za-z0-9_./:@+*%~,-]+")


def _unquoted_value(src: Source, tokens: list[Token], pos: int) -> int | None:
    """``JDLPath = /alice/x/mc.jdl;``: a statement's whole value that no token can take
    and that is one path-like word is that text, one string, as JAliEn reads it. Only
    for what is otherwise refused. The tokens since the '=' become one string; the offset
    of the ';' or line end after it, or None."""
    text = src.text
    eq = next((i for i in range(len(tokens) - 1, -1, -1)
               if tokens[i].kind is Kind.OP and tokens[i].text in "=;{}()[],"), None)  # fmt: skip
    if eq is None or eq == 0 or tokens[eq].text != "=" or tokens[eq - 1].kind is not Kind.IDENT:
        return None
    if eq >= 2 and not (tokens[eq - 2].kind is Kind.OP and tokens[eq - 2].text in ";["):
        return None  # the key must start its statement
    start = tokens[eq].offset + 1
    ends = [i for i in (text.find(";", pos), text.find("\n", pos)) if i >= 0]
    close = min(ends) if ends else len(text)
    item = text[start:close].strip()
    if not _UNQUOTED_VALUE.fullmatch(item) or "//" in item or "/*" in item:
        return None
    offset = text.index(item, start)
    del tokens[eq + 1 :]
    tokens.append(Token(Kind.STRING, item, offset, item))  # no backslash: value as written
    src.notes.append((offset, f"unquoted value '{item[:40]}' is read as the text written, "
                              "as JAliEn reads it; quote it"))  # fmt: skip
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
            after = text[pos + 1 : pos + 2]
            if not after or not STRING_BODY.fullmatch(text[pos : pos + 2]):
                shown = "end of line" if after in ("", "\n") else \
                    "a space" if after.isspace() else f"U+{ord(after):04X}"  # fmt: skip
                raise src.error(
                    f"a backslash before {shown} in a string; write '\\\\' for a backslash",
                    pos,
                    expected="a visible character after the backslash",
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
