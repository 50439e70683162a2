"""Request bodies, checked strictly: a JSON object with exactly the fields its endpoint
names, each of its kind, strings and lists capped. Anything else is one line saying
which field and why (the service answers it with 400)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandbox_agent.printable import clipped


class BadRequest(ValueError):
    """A request that is not what its endpoint takes: one line."""


@dataclass(frozen=True)
class Field:
    kind: str  # "str", "int", "bool", "ints" (list of int), "scalars" (name -> scalar)
    required: bool = True
    cap: int = 4096  # characters of a string, items of a list or a map
    doc: str = ""


SCALARS = (str, int, float, bool)


def check(body: Any, fields: Mapping[str, Field], where: str) -> dict[str, Any]:
    """``body`` as the endpoint takes it, or BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest(f"{where}: the body must be a JSON object")
    for name in body:
        if name not in fields:
            raise BadRequest(f"{where}: unknown field {_shown(name)}")
    for name, field in fields.items():
        if name not in body:
            if field.required:
                raise BadRequest(f"{where}: missing field {name}")
            continue
        _check_value(body[name], field, f"{where}: field {name}")
    return body


def _check_value(value: Any, field: Field, where: str) -> None:
    kind = field.kind
    if kind == "str":
        if not isinstance(value, str):
            raise BadRequest(f"{where} must be a string")
        if len(value) > field.cap:
            raise BadRequest(f"{where} is longer than {field.cap} characters")
        if "\x00" in value:
            raise BadRequest(f"{where} holds a NUL character")
    elif kind == "int":
        if not _is_int(value):
            raise BadRequest(f"{where} must be an integer of 64 bits")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise BadRequest(f"{where} must be true or false")
    elif kind == "ints":
        if not isinstance(value, list):
            raise BadRequest(f"{where} must be a list")
        if len(value) > field.cap:
            raise BadRequest(f"{where} has more than {field.cap} items")
        if not all(_is_int(v) for v in value):
            raise BadRequest(f"{where} must list integers")
    elif kind == "scalars":
        if not isinstance(value, dict):
            raise BadRequest(f"{where} must be an object")
        if len(value) > field.cap:
            raise BadRequest(f"{where} has more than {field.cap} entries")
        for key, item in value.items():
            scalar = isinstance(item, SCALARS) or (
                isinstance(item, list) and all(isinstance(i, SCALARS) for i in item)
            )
            if len(key) > 128 or not scalar:
                raise BadRequest(f"{where}.{_shown(key)} must be a string, number, "
                                 "boolean or a list of those")  # fmt: skip
    else:  # a table of ours that names a kind this module does not know
        raise AssertionError(f"unknown field kind {kind}")


INT64 = 1 << 63  # what the databases store: larger integers are refused here, not there


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -INT64 <= value < INT64


def _shown(text: object, limit: int = 40) -> str:
    """A name from the client, for a message: printable, clipped, quoted."""
    return repr(clipped(text, limit))


def openapi_schema(fields: Mapping[str, Field]) -> dict[str, Any]:
    """The JSON Schema of a body, for the OpenAPI document."""
    kinds: dict[str, dict[str, Any]] = {
        "str": {"type": "string"},
        "int": {"type": "integer"},
        "bool": {"type": "boolean"},
        "ints": {"type": "array", "items": {"type": "integer"}},
        "scalars": {"type": "object"},
    }
    properties: dict[str, Any] = {}
    for name, field in fields.items():
        schema = dict(kinds[field.kind])
        if field.kind == "str":
            schema["maxLength"] = field.cap
        elif field.kind == "ints":
            schema["maxItems"] = field.cap
        if field.doc:
            schema["description"] = field.doc
        properties[name] = schema
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": [n for n, f in fields.items() if f.required]}  # fmt: skip
