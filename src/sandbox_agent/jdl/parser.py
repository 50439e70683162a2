"""Parse JDL text into ordered ``Key = value`` entries whose values are expression trees.

The grammar (loosest binding first)::

    jdl        := '[' statements ']' | statements
    statements := statement (';' statement?)*          final ';' optional
    statement  := KEY '=' or
    or         := and ('||' and)*
    and        := negation ('&&' negation)*
    negation   := '!' negation | comparison             so !a == b is !(a == b)
    comparison := unary (('=='|'!='|'<'|'<='|'>'|'>=') unary)?
    unary      := '!' unary | '-' number | primary
    primary    := STRING | number | SIZED | true | false | undefined
                | scope '.' NAME | NAME | NAME '(' args ')' | '(' or ')' | '{' items '}'

Caps on size, nesting and list length turn hostile input into a ``JDLError`` rather
than a hang or a ``RecursionError``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from sandbox_agent.jdl.errors import JDLError
from sandbox_agent.jdl.expr import (
    COMPARISONS,
    UNDEFINED,
    AttrRef,
    BinOp,
    Call,
    Expr,
    ListExpr,
    Literal,
    Not,
    Scalar,
)
from sandbox_agent.jdl.lexer import (
    FORBIDDEN_CHARACTERS,
    STRING_BODY,
    Kind,
    Source,
    Token,
    tokenize,
    unescape,
)
from sandbox_agent.jdl.tags import canonical_name

MAX_BYTES = 2 * 1024 * 1024  # production JDLs with long InputData lists stay far below
MAX_DEPTH = 48  # nested (), {}, ! and calls
MAX_HEIGHT = 200  # operator chains too: every later walk of the tree recurses this deep
MAX_LIST_ITEMS = 50_000
MAX_STATEMENTS = 10_000

# Supported ClassAd functions and how many arguments each takes.
FUNCTIONS = {"member": 2, "isdefined": 1, "isundefined": 1}
_SCOPES = {"other": "other", "target": "other", "my": "my", "self": "my"}
_KEYWORDS: dict[str, Scalar] = {"true": True, "false": False, "undefined": UNDEFINED}
_PLACEHOLDER = re.compile(r"\$([0-9]+)")  # ASCII digits: \d would take any script's
_NUMBER = re.compile(r"-?[0-9]{1,18}(?:\.[0-9]{1,18})?")


@dataclass(frozen=True)
class Entry:
    """One statement: the key as shown, its value, and where the value starts."""

    name: str
    value: Expr
    offset: int


@dataclass(frozen=True)
class Warning_:
    line: int
    col: int
    message: str

    def format(self, source: str) -> str:
        return f"{source}:{self.line}:{self.col}: warning: {self.message}"


@dataclass
class ParsedJDL:
    """The statements of one JDL, keyed case-insensitively, in the order of their last
    definition (a key defined again moves to where it was defined last)."""

    source: Source
    entries: dict[str, Entry] = field(default_factory=dict)
    warnings: list[Warning_] = field(default_factory=list)
    # each key's spelling where it was first defined: JAliEn keeps keys case-sensitively
    # and reads the first spelling, so 'split' after 'Split' does not replace it there
    spellings: dict[str, str] = field(default_factory=dict)
    placeholders: set[int] = field(default_factory=set)  # where $N stands outside quotes

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name.casefold())

    def error(self, message: str, offset: int, expected: str | None = None) -> JDLError:
        return self.source.error(message, offset, expected)


def parse_jdl(
    text: str | bytes, *, source: str = "<jdl>", args: list[str] | None = None
) -> ParsedJDL:
    """Parse a whole JDL.  ``args`` are the submit arguments that replace ``$1..$N``
    inside strings; with ``args=None`` placeholders are left as written."""
    decoded = _decode(text, source)
    src = Source(decoded, source)
    parsed = _Parser(src, tokenize(src)).jdl()
    if args is not None:
        for number, arg in enumerate(args, 1):
            bad = FORBIDDEN_CHARACTERS.search(arg)
            if bad:
                raise JDLError(
                    f"submit argument {number} holds the control character "
                    f"U+{ord(bad.group()):04X}; remove it",
                    0,
                    0,
                    source=source,
                )
        _substitute(parsed, args)
    return parsed


def parse_expression(text: str, *, source: str = "<expression>") -> Expr:
    """Parse one expression, such as a Requirements given on the command line."""
    src = Source(_decode(text, source), source)
    parser = _Parser(src, tokenize(src))
    node = parser.or_()
    parser.expect_end("after the expression")
    return node


def _decode(text: str | bytes, source: str) -> str:
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise JDLError(
            f"JDL is {size} bytes; the limit is {MAX_BYTES} "
            "(move long file lists into an InputDataCollection)",
            1,
            1,
            source=source,
        )
    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = raw[: exc.start]
            line = before.count(b"\n") + 1
            col = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
            raise JDLError(
                "not UTF-8 text; save the JDL as UTF-8", line, col, source=source
            ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    # One line ending everywhere, so that a CR-only file does not become one long line
    # (and one long comment).
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


class _Parser:
    def __init__(self, src: Source, tokens: list[Token]) -> None:
        self.src = src
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.missing_commas: list[int] = []  # offsets of list items with no comma before
        self.placeholders: set[int] = set()  # offsets of $N written outside quotes
        # id(node) -> (height, node); holding the node keeps its id from being reused by
        # a new node after a duplicate key dropped the old tree.
        self.heights: dict[int, tuple[int, Expr]] = {}

    # -- token helpers -------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def at(self, op: str) -> bool:
        token = self.tokens[self.i]
        return token.text == op and token.kind is Kind.OP

    def at_end(self) -> bool:
        return self.tok.kind is Kind.EOF

    def advance(self) -> Token:
        token = self.tokens[self.i]
        if token.kind is not Kind.EOF:
            self.i += 1
        return token

    def fail(
        self, message: str, token: Token | None = None, expected: str | None = None
    ) -> JDLError:
        return self.src.error(message, (token or self.tok).offset, expected)

    def expect_op(self, op: str, context: str) -> Token:
        if not self.at(op):
            raise self.fail(f"expected '{op}' {context}, found {self.tok.describe()}")
        return self.advance()

    def expect_end(self, context: str) -> None:
        if self.tok.kind is not Kind.EOF:
            raise self.fail(f"unexpected {self.tok.describe()} {context}")

    def enter(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels", token)

    def built(self, node: Expr, *children: Expr) -> Expr:
        """Record the height of a new inner node; refuse trees too tall to walk."""
        height = 1 + max((self.heights.get(id(c), (1, c))[0] for c in children), default=1)
        if height > MAX_HEIGHT:
            raise self.src.error(
                f"expression more than {MAX_HEIGHT} levels deep; split it into simpler clauses",
                node.offset,
            )
        self.heights[id(node)] = (height, node)
        return node

    # -- statements ----------------------------------------------------------------

    def jdl(self) -> ParsedJDL:
        parsed = ParsedJDL(self.src)
        bracketed = self.at("[")
        if bracketed:
            self.advance()
        closer = "]" if bracketed else None
        count = 0
        while True:
            while self.at(";"):
                self.advance()
            if self.tok.kind is Kind.EOF or (closer and self.at(closer)):
                break
            count += 1
            if count > MAX_STATEMENTS:
                raise self.fail(f"more than {MAX_STATEMENTS} statements")
            self.statement(parsed)
            if self.at(";"):
                continue
            if self.at_end() or (closer and self.at(closer)):
                break
            raise self.fail(
                f"expected ';' before {self.tok.describe()}: each statement ends with ';'"
            )
        if bracketed:
            if not self.at("]"):
                raise self.fail("expected ']' to close the '[' that opens the JDL")
            self.advance()
            while self.at(";"):
                self.advance()
        if self.tok.kind is not Kind.EOF:
            raise self.fail(f"unexpected {self.tok.describe()} after the end of the JDL")
        parsed.placeholders = self.placeholders
        for offset in self.missing_commas:
            parsed.warnings.append(Warning_(*self.src.position(offset), (
                "no ',' before this list item; it is read as the next item, as JAliEn "
                "reads it; add the comma")))  # fmt: skip
        return parsed

    def statement(self, parsed: ParsedJDL) -> None:
        key = self.tok
        if key.kind is not Kind.IDENT:
            if key.kind in (Kind.INT, Kind.WORD, Kind.FLOAT):
                raise self.fail(f"key '{key.text}' must start with a letter or '_'", key)
            raise self.fail(f"expected a key such as 'Executable', found {key.describe()}")
        self.advance()
        glued = self.tok
        if (
            glued.kind is Kind.OP
            and glued.text in "-."
            and glued.offset == key.offset + len(key.text)
        ):
            raise self.fail(
                f"a key may hold only letters, digits and '_'; '{glued.text}' after '{key.text}'",
                glued,
            )
        self.expect_op("=", f"after the key '{key.text}'")
        if self.at(";") or self.tok.kind is Kind.EOF or self.at("]"):
            raise self.fail(f"missing value for '{key.text}' before {self.tok.describe()}")
        start = self.tok.offset
        value = self.or_()
        folded = key.text.casefold()
        previous = parsed.entries.get(folded)
        if previous is not None:
            line, col = self.src.position(key.offset)
            old_line, _ = self.src.position(previous.offset)
            first = parsed.spellings[folded]
            if first != key.text:  # another spelling: JAliEn reads the first one
                parsed.warnings.append(Warning_(line, col, (
                    f"'{key.text}' is '{first}' (line {old_line}) in another spelling; "
                    "the first is used, as JAliEn uses it, and this one is ignored")))  # fmt: skip
                return
            parsed.warnings.append(
                Warning_(
                    line,
                    col,
                    f"'{key.text}' is defined again (first on line {old_line}); "
                    "the later value wins",
                )
            )
            del parsed.entries[folded]
        parsed.spellings.setdefault(folded, key.text)
        parsed.entries[folded] = Entry(canonical_name(key.text), value, start)

    # -- expressions ---------------------------------------------------------------

    def or_(self) -> Expr:
        node = self.and_()
        while self.at("||"):
            op = self.advance()
            right = self.and_()
            node = self.built(BinOp("||", node, right, op.offset), node, right)
        return node

    def and_(self) -> Expr:
        node = self.negation()
        while self.at("&&"):
            op = self.advance()
            right = self.negation()
            node = self.built(BinOp("&&", node, right, op.offset), node, right)
        return node

    def negation(self) -> Expr:
        if self.at("!"):
            bang = self.advance()
            self.enter(bang)
            operand = self.negation()
            self.depth -= 1
            return self.built(Not(operand, bang.offset), operand)
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.unary()
        if self.tok.kind is Kind.OP and self.tok.text in COMPARISONS:
            op = self.advance()
            right = self.unary()
            if self.tok.kind is Kind.OP and self.tok.text in COMPARISONS:
                raise self.fail("comparisons do not chain; join them with && and parentheses")
            return self.built(BinOp(op.text, left, right, op.offset), left, right)
        return left

    def unary(self) -> Expr:
        if self.at("!"):
            bang = self.advance()
            self.enter(bang)
            operand = self.unary()
            self.depth -= 1
            return self.built(Not(operand, bang.offset), operand)
        if self.at("-"):
            minus = self.advance()
            if self.tok.kind not in (Kind.INT, Kind.FLOAT):
                raise self.fail("'-' must be followed by a number", expected="a number")
            number = self.primary()
            assert isinstance(number, Literal) and isinstance(number.value, int | float)
            return Literal(-number.value, minus.offset)
        return self.primary()

    def primary(self) -> Expr:
        token = self.tok
        kind = token.kind
        if kind is Kind.STRING or kind is Kind.WORD:
            self.advance()
            return Literal(token.text, token.offset, token.raw)
        if kind is Kind.PLACEHOLDER:  # TTL = $1;  the argument's value, once given
            self.advance()
            self.placeholders.add(token.offset)
            return Literal(token.text, token.offset)
        if kind is Kind.INT:
            self.advance()
            return Literal(int(token.text), token.offset)
        if kind is Kind.FLOAT:
            self.advance()
            value = float(token.text)
            if not math.isfinite(value):
                raise self.fail(f"number {token.text} is out of range", token)
            return Literal(value, token.offset)
        if kind is Kind.IDENT:
            return self.name()
        if self.at("("):
            self.advance()
            self.enter(token)
            node = self.or_()
            self.depth -= 1
            if not self.at(")"):
                line, col = self.src.position(token.offset)
                raise self.fail(
                    f"expected ')' to close the '(' at {line}:{col}, found {self.tok.describe()}"
                )
            self.advance()
            return node
        if self.at("{"):
            return self.list_()
        raise self.fail(f"expected a value, found {token.describe()}", expected="a value")

    def name(self) -> Expr:
        token = self.advance()
        word = token.text
        folded = word.casefold()
        if self.at("."):
            scope = _SCOPES.get(folded)
            if scope is None:
                raise self.fail(
                    f"unknown scope '{word}'; use other.Name for the slot or my.Name for the job",
                    token,
                )
            self.advance()
            attr = self.tok
            if attr.kind is not Kind.IDENT:
                raise self.fail(f"expected an attribute name after '{word}.'")
            self.advance()
            return AttrRef(scope, attr.text, token.offset)
        if self.at("("):
            return self.call(token)
        if folded in _KEYWORDS:
            return Literal(_KEYWORDS[folded], token.offset)
        return AttrRef(None, word, token.offset)

    def call(self, token: Token) -> Expr:
        folded = token.text.casefold()
        if folded not in FUNCTIONS:
            supported = ", ".join(sorted(FUNCTIONS))
            raise self.fail(f"unsupported function '{token.text}'; supported: {supported}", token)
        self.advance()  # (
        self.enter(token)
        args: list[Expr] = []
        if not self.at(")"):
            args.append(self.or_())
            while self.at(","):
                self.advance()
                args.append(self.or_())
        if not self.at(")"):
            raise self.fail(
                f"expected ',' or ')' in the arguments of {token.text}(), "
                f"found {self.tok.describe()}"
            )
        self.advance()
        self.depth -= 1
        if len(args) != FUNCTIONS[folded]:
            raise self.fail(
                f"{token.text}() takes {FUNCTIONS[folded]} argument(s), {len(args)} given", token
            )
        return self.built(Call(folded, tuple(args), token.offset), *args)

    def list_(self) -> Expr:
        brace = self.advance()
        self.enter(brace)
        items: list[Expr] = []
        while not self.at("}"):
            if len(items) >= MAX_LIST_ITEMS:
                raise self.fail(f"list longer than {MAX_LIST_ITEMS} items")
            items.append(self.or_())
            if self.at(","):
                self.advance()  # a trailing comma before '}' is accepted, as users write it
                continue
            if self.tok.kind is Kind.STRING and isinstance(items[-1], Literal) and \
                    items[-1].raw is not None:  # fmt: skip
                # "a" "b" with no comma between: two items to JAliEn too (a generator of
                # real JDLs, DelphesO2's grid script, writes them so)
                self.missing_commas.append(self.tok.offset)
                continue
            if not self.at("}"):
                line, col = self.src.position(brace.offset)
                raise self.fail(
                    f"expected ',' or '}}' in the list opened at {line}:{col}, "
                    f"found {self.tok.describe()}"
                )
        self.advance()
        self.depth -= 1
        return self.built(ListExpr(tuple(items), brace.offset), *items)


def _substitute(parsed: ParsedJDL, args: list[str]) -> None:
    """Replace $1..$N in every string value with the submit arguments.

    Done on parsed strings, never on the text, so an argument cannot change the
    structure of the JDL. Within a string it is read as JAliEn reads it, written into
    the text: the text as written takes the argument, and the value is that text read
    (so the normal form, read again, gives the same value). JAliEn's text substitution
    lets a '"' in an argument end the string and the rest become JDL: such an argument
    is refused, since no reading of it would be the same in both."""

    def visit(node: Expr) -> Expr:
        if isinstance(node, Literal) and node.offset in parsed.placeholders:
            match = _PLACEHOLDER.fullmatch(str(node.value))
            assert match is not None  # the lexer made it of $ and digits
            return _argument_value(lookup(match, node), node.offset)
        if isinstance(node, Literal) and isinstance(node.value, str) and "$" in node.value:
            written = node.raw if node.raw is not None else node.value
            raw = _PLACEHOLDER.sub(lambda m: lookup(m, node), written)
            return Literal(unescape(_lexable(raw, node.offset)), node.offset, raw)
        if isinstance(node, ListExpr):
            return replace(node, items=tuple(visit(item) for item in node.items))
        if isinstance(node, Call):
            return replace(node, args=tuple(visit(arg) for arg in node.args))
        if isinstance(node, Not):
            return replace(node, operand=visit(node.operand))
        if isinstance(node, BinOp):
            return replace(node, left=visit(node.left), right=visit(node.right))
        return node

    def lookup(match: re.Match[str], node: Literal) -> str:
        digits = match.group(1)
        if digits == "0":
            return match.group(0)
        if len(digits) > 5 or int(digits) > len(args):
            raise parsed.error(
                f"'${digits[:8]}' needs at least {digits[:8]} submit argument(s), "
                f"{len(args)} given",
                node.offset,
            )
        text = args[int(digits) - 1]
        if '"' in text:
            raise parsed.error(
                f"submit argument {digits} holds '\"'; JAliEn writes submit arguments into "
                "the JDL's text, where a quote ends or opens a string: leave it out",
                node.offset,
            )
        return text

    def _lexable(raw: str, offset: int) -> str:
        if not STRING_BODY.fullmatch(raw):
            raise parsed.error("a submit argument leaves a backslash before white space "
                               "or at the end of this string", offset)  # fmt: skip
        return raw

    def _argument_value(text: str, offset: int) -> Literal:
        """``TTL = $1;``: the argument as JAliEn reads it written there: a number, a
        boolean, or else a word (as an unquoted value is read)."""
        if _NUMBER.fullmatch(text):
            return Literal(float(text) if "." in text else int(text), offset)
        if text.casefold() in ("true", "false"):
            return Literal(text.casefold() == "true", offset)
        return Literal(unescape(_lexable(text, offset)), offset, text)

    for folded, entry in parsed.entries.items():
        parsed.entries[folded] = replace(entry, value=visit(entry.value))
