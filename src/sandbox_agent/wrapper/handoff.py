"""The framed protocol between the agent and the wrapper, in both directions.

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON: one object
with ``schema`` (which kind of frame), ``version`` and the kind's fields, nothing else.
The agent writes ONE handoff frame on the wrapper's stdin; the wrapper answers with
status frames on a pipe of its own. Both ends are untrusted by the other (the wrapper
shares the sandbox with the payload), so reading is strict: a length over the kind's
cap is refused before any of the body is read; a short read, bad UTF-8, bad JSON,
duplicate keys, NaN, a missing or unknown field, a wrong type, schema or version each
raise FrameError with one line saying what. No pickle, no eval.

The wrapper imports this module, so it uses the standard library only, and of JSON only
its C half: the json package imports re, enum and functools, which cost the sandbox's
Python more than ten milliseconds at every job's start. Where the C half is missing the
json package does the same work. It runs on the node's python3 from 3.6 on (EL8's), as
the JobWrapper does: every annotation Python evaluates is a string.
"""

import struct

TYPE_CHECKING = False  # typing costs milliseconds at every job's start; only mypy needs it
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO, Any

    Table = Mapping[str, Any]  # novm (a table of fields, below; never run: mypy only)

VERSION = 1
HEADER = struct.Struct(">I")


class FrameError(ValueError):
    """A frame that is not what the protocol allows: one line saying what."""


# Field kinds: a Python type, a tuple marking "list of", "map of str to", or a nested
# table of fields (an object). A name ending in "?" is optional.
STR, INT, BOOL = str, int, bool
STRINGS = ("list", str)
STR_MAP = ("map", str)
INT_MAP = ("map", int)

SPEC: "Table" = {
    "executable": STR,
    "arguments": STRINGS,
    "input_files": STRINGS,
    "outputs": STRINGS,  # the JDL's Output entries, as written (archive.zip:pat,pat@disk=1)
    "output_errors": STRINGS,  # its OutputErrorE entries: what to save when the job fails
    "validation?": STRINGS,
    "variables": STR_MAP,  # JDLVariables: name -> value, exported as ALIEN_JDL_<name>
}
TOKEN: "Table" = {
    "certificate": STR,  # PEM of the job token
    "key": STR,  # PEM of its private key: the wrapper writes it 0600 and exports the path
    "chain": STRINGS,  # PEM of the issuing CAs
}
KINDS: "dict[str, tuple[Table, int]]" = {
    # kind -> (fields, size cap in bytes)
    "handoff": (
        {
            "job_id": INT,
            "resubmission": INT,
            "user": STR,  # who submitted it: ALIEN_USER
            "site": STR,  # the slot's Site: ALIEN_SITE
            "spec": SPEC,
            "token": TOKEN,
            "environment": STR_MAP,
            "limits": INT_MAP,
            # 1: the agent keeps the wrapper's stdin open while the job runs, and its end
            # means the agent is gone (a container the engine would run on): the wrapper
            # ends the job at once
            "lifeline?": INT,
        },
        1024 * 1024,
    ),
    "status": (
        {
            "state": STR,
            "detail?": STR,
            "exit_code?": INT,
        },
        64 * 1024,
    ),
}


def schema_name(kind: str) -> str:
    return f"sandbox-agent/{kind}"


def encode(kind: str, fields: "Mapping[str, Any]") -> bytes:
    """The frame of ``kind`` holding ``fields``; raises FrameError if they do not fit."""
    table, cap = _kind(kind)
    message = {"schema": schema_name(kind), "version": VERSION, **fields}
    _check(message, _with_header(table), kind)
    try:
        data = _dumps(message).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, as os.environ makes of non-UTF-8 bytes
        raise FrameError(f"{kind} frame holds text that is not UTF-8") from None
    if len(data) > cap:
        raise FrameError(f"{kind} frame of {len(data)} bytes is over its cap of {cap}")
    return HEADER.pack(len(data)) + data


def write_frame(stream: "IO[bytes]", kind: str, fields: "Mapping[str, Any]") -> None:
    stream.write(encode(kind, fields))
    stream.flush()


def read_frame(stream: "IO[bytes]", kind: str) -> "dict[str, Any]":
    """The next frame of ``kind`` from ``stream``, checked; FrameError otherwise. None
    of a body over the cap is read."""
    cap = _kind(kind)[1]
    header = _read_exactly(stream, HEADER.size, f"{kind} frame header")
    (length,) = HEADER.unpack(header)
    if length > cap:
        raise FrameError(f"{kind} frame announces {length} bytes, over its cap of {cap}")
    return decode(kind, _read_exactly(stream, length, f"{kind} frame of {length} bytes"))


def decode(kind: str, body: bytes) -> "dict[str, Any]":
    """A frame body (without its header), checked against ``kind``."""
    table, _cap = _kind(kind)
    try:
        message = strict_loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise FrameError(f"{kind} frame is not UTF-8") from None
    except RecursionError:
        raise FrameError(f"{kind} frame is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ours from the hooks
        raise FrameError(
            f"{kind} frame is not valid JSON: {_short(exc, 80, quoted=False)}"
        ) from None
    if not isinstance(message, dict):
        raise FrameError(f"{kind} frame is not a JSON object")
    # which frame and which version first: a frame of another kind is named as such
    if message.get("schema") != schema_name(kind):
        got = _short(message.get("schema", "no schema"))
        raise FrameError(f"expected a {schema_name(kind)} frame, got {got}")
    version = message.get("version")
    if not _is(version, int) or version != VERSION:
        shown = _short(version, quoted=False)
        raise FrameError(f"{kind} frame version {shown}; this end speaks {VERSION}")
    _check(message, _with_header(table), kind)
    return message


def _kind(kind: str) -> "tuple[Table, int]":
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind!r}")
    return KINDS[kind]


def _with_header(table: "Table") -> "Table":
    return {"schema": STR, "version": INT, **table}


def _check(value: "Mapping[str, Any]", table: "Table", where: str) -> None:
    names = {name.rstrip("?"): name.endswith("?") for name in table}
    for key in value:
        if key not in names:
            raise FrameError(f"{where}: unknown field {_short(key)}")
    for name, optional in names.items():
        if name not in value:
            if optional:
                continue
            raise FrameError(f"{where}: missing field {name}")
        _check_value(value[name], table[name + ("?" if optional else "")], f"{where}.{name}")


def _check_value(value: "Any", kind: "Any", where: str) -> None:
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            raise FrameError(f"{where} must be an object")
        _check(value, kind, where)
    elif isinstance(kind, tuple):
        shape, item = kind
        if shape == "list":
            if not isinstance(value, list):
                raise FrameError(f"{where} must be a list")
            for index, element in enumerate(value):
                _check_value(element, item, f"{where}[{index}]")
        else:
            if not isinstance(value, dict):
                raise FrameError(f"{where} must be an object of {item.__name__} values")
            for key, element in value.items():
                if not isinstance(key, str):  # JSON would turn 1 into "1" on the way
                    raise FrameError(f"{where} keys must be str, not {type(key).__name__}")
                _check_value(element, item, f"{where}.{_short(key)}")
    elif not _is(value, kind):
        raise FrameError(f"{where} must be {kind.__name__}, not {type(value).__name__}")


def _is(value: "Any", kind: type) -> bool:
    # bool is an int to Python, never to the protocol
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _no_duplicates(pairs: "list[tuple[str, Any]]") -> "dict[str, Any]":
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_short(key)}")
        out[key] = value
    return out


def _no_nan(constant: str) -> "Any":
    raise ValueError(f"{constant} is not a number JSON allows")


class _Decoding:
    """What the C scanner asks its context for: json.loads's strict defaults, with
    duplicate keys and NaN refused."""

    strict = True
    object_hook = None
    object_pairs_hook = staticmethod(_no_duplicates)
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_nan)


_WHITESPACE = " \t\n\r"  # what JSON allows around a value


def strict_loads(text: str) -> "Any":
    """One JSON value, nothing but whitespace around it, duplicate keys and NaN refused
    (ValueError): json.loads with our hooks. The broker reads request bodies with it too."""
    try:
        import _json

        start = len(text) - len(text.lstrip(_WHITESPACE))
        # typeshed types the context as a scanner; the C code reads only these attributes
        value, end = _json.make_scanner(_Decoding())(text, start)  # type: ignore[arg-type]
        if not text[end:].strip(_WHITESPACE):
            return value
    except RecursionError:
        raise
    except Exception:  # noqa: S110 (the json package below says what is wrong)
        # The C half reports a syntax error through json.decoder, which it expects loaded:
        # without it the error comes out as a SystemError with no message.
        pass
    import json  # a refused frame, or a Python without the C half

    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_nan)


def _dumps(message: "Mapping[str, Any]") -> str:
    """Compact JSON, UTF-8 kept as is, NaN refused: json.dumps by its C half."""
    try:
        import _json
    except ImportError:
        import json

        return json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    encode = _json.make_encoder({}, _unencodable, _json.encode_basestring, None, ":", ",",
                                False, False, False)  # fmt: skip
    return "".join(encode(message, 0))


def _unencodable(value: "Any") -> "Any":
    raise TypeError(f"{type(value).__name__} is not JSON")


def _read_exactly(stream: "IO[bytes]", size: int, what: str) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise FrameError(f"{what}: the stream ended after {len(data)} bytes")
        data += chunk
    return data


def _short(text: object, limit: int = 40, *, quoted: bool = True) -> str:
    """A value from the other end, for a message: printable, clipped, quoted."""
    shown = "".join(c if c.isprintable() else "?" for c in str(text))
    shown = shown if len(shown) <= limit else shown[:limit] + "..."
    return repr(shown) if quoted else shown
