"""The job spec: a JDL's statements turned into typed, normalized fields.

Defaults when a field is absent (documented in the README):
  Arguments none; TTL 3600 s; CPUCores 1; Price 1.0; MemorySize and WorkDirectorySize
  unset (the site policy's default applies); no inputs, outputs or Requirements.

Keys the spec does not model are kept in ``extra`` with their values, and keys named in
``JDLVariables`` become ``jdl_variables`` (exported as ``ALIEN_JDL_<NAME>``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sandbox_agent.jdl.errors import JDLError
from sandbox_agent.jdl.expr import (
    AttrRef,
    Expr,
    ListExpr,
    Literal,
    Undefined,
    render,
)
from sandbox_agent.jdl.lexer import STRING_BODY
from sandbox_agent.jdl.parser import Entry, ParsedJDL, parse_jdl
from sandbox_agent.jdl.units import format_size, parse_size
from sandbox_agent.printable import clipped

DEFAULT_TTL = 3600
DEFAULT_CPU_CORES = 1
DEFAULT_PRICE = 1.0
MAX_TTL = 366 * 86400  # a year: far beyond any grid job, short of absurd
MAX_CPU_CORES = 4096
MAX_PRICE = 1e9

_DIGITS = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,18})?")

_STORAGE_ELEMENT = re.compile(r"!?[A-Za-z0-9_.-]+::[A-Za-z0-9_.-]+::[A-Za-z0-9_.-]+")
_QOS_KINDS = ("disk", "tape")


@dataclass(frozen=True)
class InputFile:
    """An InputFile entry: a catalogue name (``LF:``) or a local path at submit time."""

    name: str
    catalogue: bool

    def jdl(self) -> str:
        return f"LF:{self.name}" if self.catalogue else self.name


@dataclass(frozen=True)
class InputData:
    """An InputData / InputDataCollection entry; ``nodownload`` leaves it remote."""

    name: str
    catalogue: bool
    nodownload: bool = False

    def jdl(self) -> str:
        text = f"LF:{self.name}" if self.catalogue else self.name
        return f"{text},nodownload" if self.nodownload else text


@dataclass(frozen=True)
class OutputSpec:
    """One output entry: files matching ``patterns``, zipped into ``archive`` when it is
    set, stored with ``qos`` replicas (``disk=2``) or on named storage elements."""

    patterns: tuple[str, ...]
    archive: str | None = None
    qos: tuple[tuple[str, int], ...] = ()
    storage_elements: tuple[str, ...] = ()
    source: str = "Output"  # the key it was written under: Output, OutputArchive, OutputFile
    # other storage options (noarchive, *SE replication targets), kept as written and
    # passed on as JAliEn does; this agent's storage does not act on them
    options: tuple[str, ...] = ()

    def jdl(self) -> str:
        text = ",".join(self.patterns)
        if self.archive is not None:
            text = f"{self.archive}:{text}"
        options = [f"{kind}={count}" for kind, count in self.qos]
        options += [*self.storage_elements, *self.options]
        return f"{text}@{','.join(options)}" if options else text


@dataclass(frozen=True)
class JobSpec:
    executable: str
    arguments: tuple[str, ...] = ()
    input_files: tuple[InputFile, ...] = ()
    input_data: tuple[InputData, ...] = ()
    input_data_collection: tuple[InputData, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    output_errors: tuple[OutputSpec, ...] = ()
    output_dir: str | None = None
    validation_command: str | None = None
    ttl: int = DEFAULT_TTL
    cpu_cores: int = DEFAULT_CPU_CORES
    memory_bytes: int | None = None
    workdir_bytes: int | None = None
    packages: tuple[str, ...] = ()
    price: float = DEFAULT_PRICE
    requirements: Expr | None = None
    jdl_variables: tuple[str, ...] = ()  # names of the keys exported as ALIEN_JDL_<NAME>
    job_tags: tuple[str, ...] = ()
    split: str | None = None
    split_arguments: tuple[str, ...] = ()
    user: str | None = None
    type: str | None = None
    extra: tuple[tuple[str, Expr], ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # the warnings that say JAliEn would read (or run) this JDL otherwise: jdl check --compat
    differences: tuple[str, ...] = field(default=(), compare=False)
    # The keys the JDL wrote, so a default (TTL 3600, 1 core) is not taken for a request.
    explicit: frozenset[str] = field(default=frozenset(), compare=False)

    def environment(self) -> dict[str, str]:
        """The ``ALIEN_JDL_*`` variables the payload sees for the JDLVariables."""
        entries = {name.casefold(): value for name, value in self.to_entries()}
        # Values come from the normalized entries, so the environment of a job is the
        # same whether its JDL was read from the user's text or from its normal form.
        return {
            f"ALIEN_JDL_{name.upper()}": variable_value(entries[name.casefold()])
            for name in self.jdl_variables
            if name.casefold() in entries
        }

    def job_attributes(self) -> dict[str, Expr]:
        """The job's own attributes, for ``my.*`` references in Requirements."""
        return dict(self.to_entries())

    def to_entries(self) -> list[tuple[str, Expr]]:
        """The spec as JDL statements in a fixed order; see ``render_jdl``."""
        out: list[tuple[str, Expr]] = []

        def put(name: str, value: Expr | None) -> None:
            if value is not None:
                out.append((name, value))

        def text(value: str | None) -> Literal | None:
            return None if value is None else Literal(value)

        def texts(values: tuple[str, ...]) -> ListExpr | None:
            return ListExpr(tuple(Literal(v) for v in values)) if values else None

        put("Type", text(self.type))
        put("User", text(self.user))
        put("Executable", Literal(self.executable))
        # written as JAliEn reads it: the words with one space between, kept as written
        joined = " ".join(self.arguments)
        put("Arguments", Literal(joined, raw=joined) if self.arguments else None)
        put("Packages", texts(self.packages))
        put("InputFile", texts(tuple(f.jdl() for f in self.input_files)))
        put("InputData", texts(tuple(d.jdl() for d in self.input_data)))
        put("InputDataCollection", texts(tuple(d.jdl() for d in self.input_data_collection)))
        put("Split", text(self.split))
        put("SplitArguments", texts(self.split_arguments))
        put("OutputDir", text(self.output_dir))
        for key in _OUTPUT_KEYS:
            put(key, texts(tuple(o.jdl() for o in self.outputs if o.source == key)))
        put("OutputErrorE", texts(tuple(o.jdl() for o in self.output_errors)))
        put("ValidationCommand", text(self.validation_command))
        put("TTL", Literal(self.ttl))
        put("CPUCores", Literal(self.cpu_cores))
        put("MemorySize", text(format_size(self.memory_bytes)) if self.memory_bytes else None)
        put(
            "WorkDirectorySize",
            text(format_size(self.workdir_bytes)) if self.workdir_bytes else None,
        )
        put("Price", Literal(self.price))
        put("JobTag", texts(self.job_tags))
        put("Requirements", self.requirements)
        put("JDLVariables", texts(self.jdl_variables))
        out.extend(self.extra)
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view, the form ``jdl check --json`` prints."""
        return {
            "executable": self.executable,
            "arguments": list(self.arguments),
            "input_files": [{"name": f.name, "catalogue": f.catalogue} for f in self.input_files],
            "input_data": [_data_json(d) for d in self.input_data],
            "input_data_collection": [_data_json(d) for d in self.input_data_collection],
            "outputs": [_output_json(o) for o in self.outputs],
            "output_errors": [_output_json(o) for o in self.output_errors],
            "output_dir": self.output_dir,
            "validation_command": self.validation_command,
            "ttl_seconds": self.ttl,
            "cpu_cores": self.cpu_cores,
            "memory_bytes": self.memory_bytes,
            "workdir_bytes": self.workdir_bytes,
            "packages": list(self.packages),
            "price": self.price,
            "requirements": render(self.requirements) if self.requirements is not None else None,
            "jdl_variables": list(self.jdl_variables),
            "environment": self.environment(),
            "job_tags": list(self.job_tags),
            "split": self.split,
            "split_arguments": list(self.split_arguments),
            "user": self.user,
            "type": self.type,
            "extra": {name: render(value) for name, value in self.extra},
        }


def _data_json(d: InputData) -> dict[str, Any]:
    return {"name": d.name, "catalogue": d.catalogue, "nodownload": d.nodownload}


def _output_json(o: OutputSpec) -> dict[str, Any]:
    return {
        "archive": o.archive,
        "patterns": list(o.patterns),
        "qos": dict(o.qos),
        "storage_elements": list(o.storage_elements),
        "options": list(o.options),
        "source": o.source,
    }


def render_jdl(spec: JobSpec) -> str:
    """Canonical JDL text for ``spec``: parsing it again gives an equal spec."""
    lines = []
    for name, value in spec.to_entries():
        if isinstance(value, ListExpr) and len(value.items) > 1:
            items = ",\n".join(f"    {render(item)}" for item in value.items)
            lines.append(f"{name} = {{\n{items}\n}};")
        else:
            lines.append(f"{name} = {render(value)};")
    return "\n".join(lines) + "\n"


def load_job(text: str | bytes, *, source: str = "<jdl>", args: list[str] | None = None) -> JobSpec:
    """Parse a JDL and build its spec; every problem is a ``JDLError``."""
    return job_spec(parse_jdl(text, source=source, args=args))


# -- building the spec -------------------------------------------------------------------


class _Reader:
    """Typed access to the entries of one parsed JDL, with located errors."""

    def __init__(self, parsed: ParsedJDL) -> None:
        self.parsed = parsed
        # warnings found while reading the values, with their (line, column)
        self.notes: list[tuple[tuple[int, int], str]] = []
        self.differences: list[tuple[tuple[int, int], str]] = []  # where JAliEn differs

    def fail(self, node: Expr | Entry, message: str) -> JDLError:
        return self.parsed.error(message, max(node.offset, 0))

    def note(self, node: Expr | Entry | int, message: str, *, differs: bool = False) -> None:
        """A warning at ``node`` (or an offset); ``differs``: JAliEn reads it otherwise."""
        offset = node if isinstance(node, int) else node.offset
        line, col = self.parsed.source.position(max(offset, 0))
        self.notes.append(((line, col), f"{self.parsed.source.name}:{line}:{col}: warning: "
                                        f"{message}"))  # fmt: skip
        if differs:
            self.differences.append(self.notes[-1])

    def scalar(self, entry: Entry) -> Expr:
        """The value, with a one-item list such as {"6000MB"} unwrapped."""
        value = entry.value
        if isinstance(value, ListExpr) and len(value.items) == 1:
            return value.items[0]
        return value

    def string_of(self, node: Expr, what: str, *, as_written: bool = False) -> str:
        if isinstance(node, Literal) and isinstance(node.value, str):
            if node.raw is not None and node.raw != node.value and not as_written:
                self.note(node, f"{what}: '{_clip(node.raw)}' is '{_clip(node.value)}' here, "
                          "escapes decoded; JAliEn keeps the text as written, backslashes "
                          "and all", differs=True)  # fmt: skip
            return node.value
        if isinstance(node, AttrRef) and node.scope is None:
            return node.name  # an unquoted word, as in {testflag, t2}
        if isinstance(node, Literal) and not isinstance(node.value, bool | Undefined):
            return render(node)
        raise self.fail(node, f'{what} must be a string, like {what} = "...";')

    def string(self, entry: Entry) -> str:
        return self.string_of(self.scalar(entry), entry.name)

    def strings(self, entry: Entry) -> tuple[str, ...]:
        """A string or a list of strings, as a tuple (an item written twice, once)."""
        if isinstance(entry.value, ListExpr):
            return tuple(text for text, _ in _items(self, entry))
        return (self.string(entry),)

    def unquoted(self, entry: Entry) -> None:
        """{testflag, t2}: two items here, ONE item 'testflag,t2' to JAliEn, which reads
        a brace list without any quote as its text. Said, since the readings differ."""
        value = entry.value
        if isinstance(value, ListExpr) and len(value.items) > 1 and \
                all(isinstance(item, AttrRef) and item.scope is None for item in value.items):
            count = len(value.items)
            self.note(entry, f"{entry.name}: unquoted items are {count} items here, one item "
                      "to JAliEn; quote each item so that both read them alike",
                      differs=True)  # fmt: skip

    def whole(self, entry: Entry, minimum: int, maximum: int, unit: str) -> int:
        node = self.scalar(entry)
        number: int | None = None
        if isinstance(node, Literal) and type(node.value) is int:
            number = node.value
        elif (
            isinstance(node, Literal)
            and isinstance(node.value, str)
            # ASCII digits only: str.isdigit() would let '²' through to int().
            and _DIGITS.fullmatch(node.value.strip())
        ):
            number = int(node.value.strip())
        if number is None:
            raise self.fail(
                node, f"{entry.name} must be a whole number of {unit}, like {entry.name} = 72000;"
            )
        if not minimum <= number <= maximum:
            raise self.fail(
                node, f"{entry.name} must be from {minimum} to {maximum} {unit}, not {number}"
            )
        return number

    def size(self, entry: Entry) -> int:
        node = self.scalar(entry)
        if isinstance(node, Literal) and type(node.value) is int:
            text = str(node.value)
        elif isinstance(node, Literal) and isinstance(node.value, str):
            text = node.value
        else:
            raise self.fail(node, f'{entry.name} must be a size, like {entry.name} = "8GB";')
        try:
            return parse_size(text)
        except ValueError as exc:
            raise self.fail(node, f"{entry.name}: {exc}") from None

    def number(self, entry: Entry) -> float:
        node = self.scalar(entry)
        value: float | None = None
        if isinstance(node, Literal) and isinstance(node.value, int | float):
            if not isinstance(node.value, bool):
                value = float(node.value)  # ints are at most 40 digits: no overflow
        elif (
            isinstance(node, Literal)
            and isinstance(node.value, str)
            and _DECIMAL.fullmatch(node.value.strip())
        ):
            value = float(node.value)
        if value is None or not 0 <= value <= MAX_PRICE:
            raise self.fail(
                node,
                f"{entry.name} must be a number from 0 to {MAX_PRICE:g}, like {entry.name} = 1;",
            )
        return value


def _items(reader: _Reader, entry: Entry, *, as_written: bool = False) -> list[tuple[str, Expr]]:
    """The string items of a string-or-list entry, each with its node for error places.
    An item written twice is kept once, as JAliEn keeps its lists (a set in order).
    ``as_written``: the caller reads each item's raw text, as JAliEn does."""
    reader.unquoted(entry)
    nodes = entry.value.items if isinstance(entry.value, ListExpr) else (entry.value,)
    items: list[tuple[str, Expr]] = []
    for node in nodes:
        text = reader.string_of(node, f"each item of {entry.name}", as_written=as_written)
        if any(text == seen for seen, _ in items):
            reader.note(node, f"'{_clip(text)}' is listed twice in {entry.name}; kept once, "
                              "as JAliEn keeps it")  # fmt: skip
            continue
        items.append((text, node))
    return items


# JAliEn's JobWrapper splits Arguments with a java.util.StringTokenizer: these five
# characters, and nothing else, separate words; quotes and backslashes are plain text.
_WORD_SEPARATORS = re.compile("[ \t\n\r\f]+")


def _argument_words(reader: _Reader, entry: Entry) -> tuple[str, ...]:
    """The argv words of Arguments, as JAliEn's JobWrapper makes them: the text as
    written (a list's items joined with spaces) split on white space. No shell rule
    applies and no shell ever sees them."""
    texts = []
    for text, node in _items(reader, entry, as_written=True):
        raw = node.raw if isinstance(node, Literal) and node.raw is not None else text
        if not STRING_BODY.fullmatch(raw):
            raise reader.fail(node, "Arguments: a backslash before white space cannot be "
                              "written back as a JDL string; remove it")  # fmt: skip
        texts.append(raw)
    words = tuple(w for w in _WORD_SEPARATORS.split(" ".join(texts)) if w)
    if any(c in "\"'\\" for word in words for c in word):
        reader.note(entry, "Arguments: quotes and backslashes are plain characters, as in "
                    f"JAliEn's JobWrapper, which splits on white space only: the words are "
                    f"{_clip(' | '.join(words), 80)}")  # fmt: skip
    return words


def _catalogue_path(reader: _Reader, entry: Entry, program: str) -> None:
    """JAliEn fetches every program from its catalogue; here an absolute path is one in
    the sandbox (the host's or the image's) and LF:/... is fetched. A program under
    /alice/, ALICE's catalogue, is one the real JDL meant to be fetched: said."""
    if program.startswith("/alice/"):
        reader.note(entry, f"{entry.name}: JAliEn fetches '{_clip(program)}' from its "
                    "catalogue; here it is a path in the sandbox: write "
                    f"\"LF:{_clip(program, 160)}\" to have it fetched", differs=True)  # fmt: skip


_Item = TypeVar("_Item", "InputFile", "InputData", "OutputSpec")


def _once(items: Iterable[_Item]) -> tuple[_Item, ...]:
    """Items that read the same ("a" and " a", "LF:/x" and "lf:/x") kept once: their
    normal form is one text, which a second reading would keep once anyway."""
    return tuple(dict.fromkeys(items))


def _input_file(reader: _Reader, text: str, node: Expr) -> InputFile:
    name, catalogue = _strip_lf(text)
    if not name or "\x00" in name:
        raise reader.fail(node, 'an InputFile entry must name a file, like "LF:/alice/.../file"')
    return InputFile(name, catalogue)


def _input_data(reader: _Reader, text: str, node: Expr, key: str) -> InputData:
    name, *options = text.split(",")
    name, catalogue = _strip_lf(name.strip())
    nodownload = False
    for option in options:
        if option.strip().casefold() != "nodownload":
            raise reader.fail(
                node, f"unknown {key} option '{_clip(option.strip())}'; only 'nodownload' exists"
            )
        nodownload = True
    if not name or "\x00" in name:
        raise reader.fail(node, f'a {key} entry must name a file, like "LF:/alice/.../AO2D.root"')
    return InputData(name, catalogue, nodownload)


def _strip_lf(text: str) -> tuple[str, bool]:
    if text[:3].casefold() == "lf:":
        return text[3:], True
    return text, False


def _output(reader: _Reader, text: str, node: Expr, key: str) -> OutputSpec:
    """Parse ``archive:pat,pat@disk=2,SE::NAME::X`` or ``file@disk=1`` as JAliEn does: an
    archive is a zip under whatever name it is given, empty names are skipped, and
    storage options this agent does not use are kept and passed on."""
    files, _, options = text.strip().partition("@")
    archive: str | None = None
    if ":" in files:
        archive, _, files = files.partition(":")
        archive = archive.strip()
        problem = _bad_output_name(archive)
        problem = problem or ("must be a file name in the work directory"
                              if "/" in archive or archive == "." else None)  # fmt: skip
        if problem:
            raise reader.fail(node, f"{key}: archive '{_clip(archive)}' {problem}")
    patterns = tuple(p for p in (p.strip() for p in files.split(",")) if p)
    if not patterns:
        raise reader.fail(node, f"{key}: '{_clip(text)}' names no file")
    for pattern in patterns:
        problem = _bad_output_name(pattern)
        if problem:
            raise reader.fail(node, f"{key}: output '{_clip(pattern)}' {problem}")
    qos: list[tuple[str, int]] = []
    elements: list[str] = []
    kept: list[str] = []
    for option in (o.strip() for o in options.split(",")) if options else ():
        kind, eq, count = option.partition("=")
        if not option:
            continue  # "@disk=1," as users write it
        if eq and kind.strip().casefold() in _QOS_KINDS:
            if not re.fullmatch("[0-9]{1,2}", count.strip()) or int(count) < 1:
                raise reader.fail(node, f"{key}: storage option '{_clip(option)}' must be "
                                  "disk=N or tape=N, N from 1 to 99")  # fmt: skip
            qos.append((kind.strip().casefold(), int(count)))
        elif _STORAGE_ELEMENT.fullmatch(option):
            elements.append(option)
        elif len(option) > 200 or "@" in option or not option.isprintable():
            raise reader.fail(node, f"{key}: storage option '{_clip(option)}' is not one "
                              "(printable, no '@', at most 200 characters)")  # fmt: skip
        else:
            kept.append(option)
            reader.note(node, f"{key}: storage option '{_clip(option)}' is passed on as "
                        "JAliEn passes it; this agent's storage does not act on it",
                        differs=True)  # fmt: skip
    return OutputSpec(patterns, archive, tuple(qos), tuple(elements), source=key,
                      options=tuple(kept))  # fmt: skip


def _bad_output_name(pattern: str) -> str | None:
    """Why an output pattern is unsafe or empty, or None.  Outputs are read from the
    job's work directory, so no pattern may leave it."""
    if not pattern:
        return "is empty"
    if pattern.startswith("/"):
        return "must be relative to the work directory"
    if any(part == ".." for part in pattern.split("/")):
        return "must not climb out of the work directory with '..'"
    if "\x00" in pattern or any(not c.isprintable() for c in pattern):
        return "contains a control character"
    return None


_OUTPUT_KEYS = ("Output", "OutputArchive", "OutputFile")

# Keys the spec models with typed fields; every other key is kept in ``extra``.
_CONSUMED = frozenset(
    name.casefold()
    for name in (
        "Executable", "Arguments", "InputFile", "InputData", "InputDataCollection", "Output",
        "OutputArchive", "OutputFile", "OutputErrorE", "OutputDir", "ValidationCommand",
        "TTL", "CPUCores", "MemorySize", "WorkDirectorySize", "Packages", "Price",
        "Requirements", "JDLVariables", "JobTag", "Split", "SplitArguments", "User", "Type",
    )
)  # fmt: skip


def job_spec(parsed: ParsedJDL) -> JobSpec:
    """Build the typed spec of a parsed JDL; every problem is a located ``JDLError``."""
    r = _Reader(parsed)
    get = parsed.get
    fields: dict[str, Any] = {}

    executable = get("Executable")
    if executable is None:
        raise JDLError(
            'no Executable: every job needs one, like Executable = "/bin/echo";',
            0,
            0,
            source=parsed.source.name,
        )
    fields["executable"] = r.string(executable)
    if not fields["executable"].strip():
        raise r.fail(executable, "Executable must not be empty")
    _catalogue_path(r, executable, fields["executable"])

    if (entry := get("Arguments")) is not None:
        fields["arguments"] = _argument_words(r, entry)

    if (entry := get("InputFile")) is not None:
        fields["input_files"] = _once(_input_file(r, t, n) for t, n in _items(r, entry))
    for key, attr in (
        ("InputData", "input_data"),
        ("InputDataCollection", "input_data_collection"),
    ):
        if (entry := get(key)) is not None:
            fields[attr] = _once(_input_data(r, t, n, key) for t, n in _items(r, entry))

    outputs: list[OutputSpec] = []
    for key in _OUTPUT_KEYS:
        if (entry := get(key)) is not None:
            outputs.extend(_output(r, t, n, key) for t, n in _items(r, entry))
    fields["outputs"] = _once(outputs)
    if (entry := get("OutputErrorE")) is not None:
        fields["output_errors"] = _once(
            _output(r, t, n, "OutputErrorE") for t, n in _items(r, entry)
        )

    for key, attr in (
        ("OutputDir", "output_dir"),
        ("ValidationCommand", "validation_command"),
        ("Split", "split"),
        ("User", "user"),
        ("Type", "type"),
    ):
        if (entry := get(key)) is not None:
            fields[attr] = r.string(entry)
            if key == "ValidationCommand":
                _catalogue_path(r, entry, fields[attr])
    for key, attr in (
        ("Packages", "packages"),
        ("JobTag", "job_tags"),
        ("SplitArguments", "split_arguments"),
    ):
        if (entry := get(key)) is not None:
            fields[attr] = r.strings(entry)

    dropped: set[str] = set()  # keys written that count as not written (as to JAliEn)
    if (entry := get("TTL")) is not None:
        node = r.scalar(entry)
        if isinstance(node, Literal) and isinstance(node.value, str) and \
                not _DIGITS.fullmatch(node.value.strip()):  # fmt: skip
            # JAliEn's getInteger gives no number for "18 hours": its default TTL applies
            r.note(entry, f"TTL '{_clip(node.value)}' is not a number of seconds; the default "
                   f"({DEFAULT_TTL} s, or the site's) applies, as in JAliEn")  # fmt: skip
            dropped.add("TTL")
        elif isinstance(node, Literal) and type(node.value) is float and \
                1 <= node.value < MAX_TTL + 1:  # fmt: skip
            fields["ttl"] = int(node.value)  # JAliEn takes the whole seconds of 7200.5
        else:
            fields["ttl"] = r.whole(entry, 1, MAX_TTL, "seconds")
    if (entry := get("CPUCores")) is not None:
        fields["cpu_cores"] = r.whole(entry, 1, MAX_CPU_CORES, "cores")
    if (entry := get("MemorySize")) is not None:
        fields["memory_bytes"] = r.size(entry)
    if (entry := get("WorkDirectorySize")) is not None:
        fields["workdir_bytes"] = r.size(entry)
    if (entry := get("Price")) is not None:
        fields["price"] = r.number(entry)
    if (entry := get("Requirements")) is not None:
        if isinstance(entry.value, Literal) and isinstance(entry.value.value, str):
            raise r.fail(
                entry, "Requirements must be an expression, not a string: remove the quotes"
            )
        if isinstance(entry.value, ListExpr):
            # JAliEn stores a braced value as a list and matches only on a bare expression
            r.note(entry, "Requirements in braces is a list to JAliEn, not an expression, and "
                   "is not used; write it without braces: Requirements = member(...);")  # fmt: skip
        else:
            fields["requirements"] = entry.value

    for offset, message in parsed.source.differences:
        r.note(offset, message, differs=True)
    for offset, message in parsed.source.notes:
        r.note(offset, message)
    r.notes += [((w.line, w.col), w.format(parsed.source.name)) for w in parsed.warnings]
    fields["extra"] = tuple(
        (entry.name, entry.value)
        for folded, entry in parsed.entries.items()
        if folded not in _CONSUMED
    )
    if (entry := get("JDLVariables")) is not None:
        names: list[str] = []
        present = {name.casefold(): name for name, _ in JobSpec(**fields).to_entries()}
        for name, node in _items(r, entry):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise r.fail(
                    node, f"JDL variable '{name}' is not a valid name (letters, digits, '_')"
                )
            if name.casefold() not in present:
                r.note(node, f"JDL variable '{_clip(name)}' is listed in JDLVariables but has "
                       "no value; it is not exported")  # fmt: skip
            elif present[name.casefold()] not in names:
                names.append(present[name.casefold()])
        fields["jdl_variables"] = tuple(names)
    explicit = frozenset(entry.name for entry in parsed.entries.values()) - dropped
    return JobSpec(**fields, warnings=tuple(text for _, text in sorted(r.notes)),
                   differences=tuple(text for _, text in sorted(r.differences)),
                   explicit=explicit)  # fmt: skip


def variable_value(node: Expr) -> str:
    """A JDL variable's value as the payload's environment holds it: a string as written
    (JAliEn decodes no escape), list items joined with '##', as JAliEn's JobWrapper joins
    them (ALIEN_JDL_PACKAGES = "a##b")."""
    if isinstance(node, ListExpr):
        return "##".join(variable_value(item) for item in node.items)
    if isinstance(node, Literal) and isinstance(node.value, str):
        return node.raw if node.raw is not None else node.value  # as written, as JAliEn
    if isinstance(node, Literal) and isinstance(node.value, bool):
        return "true" if node.value else "false"
    if isinstance(node, AttrRef) and node.scope is None:
        return node.name
    return render(node)


def _clip(text: str, width: int = 40) -> str:
    """A user's value as an error message quotes it: short, and printable."""
    return clipped(text, width)


__all__ = [
    "InputData",
    "InputFile",
    "JobSpec",
    "OutputSpec",
    "job_spec",
    "load_job",
    "render_jdl",
]
