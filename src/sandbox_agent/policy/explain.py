"""Explaining an effective policy to a person (a table) or to a program (JSON).

Every row says what is isolated, the value, whether the kernel enforces it or the agent
only monitors it, whether the site marked it optional, and where the value came from.
The JSON form follows ``docs/policy-explain.schema.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sandbox_agent.jdl.units import format_size
from sandbox_agent.policy import gate
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.policy.gate import Verdict
from sandbox_agent.policy.model import Item
from sandbox_agent.policy.schema import FIELDS, LIMITS, LIST_KINDS, Kind

if TYPE_CHECKING:  # what the kernel provides is the caller's to find (hostfacts.facts)
    from sandbox_agent.hostfacts import Fact

SCHEMA_VERSION = 1

# Sections in the order a reviewer reads them, with the keys each shows.
SECTIONS: list[tuple[str, list[str]]] = [
    ("namespaces", [k for k in FIELDS if k.startswith("namespaces.")]),
    ("filesystem", [k for k in FIELDS if k.startswith("filesystem.")]),
    ("images", [k for k in FIELDS if k.startswith("images.")]),
    ("devices", [k for k in FIELDS if k.startswith("devices.")]),
    ("process", [k for k in FIELDS if k.startswith("process.")]),
    ("limits", [f"limits.{name}" for name in LIMITS]),
    ("outputs", [k for k in FIELDS if k.startswith("outputs.")]),
    ("disk", [k for k in FIELDS if k.startswith("disk.")]),
    ("network", ["network.mode"]),
    ("optional", ["optional.requirements"]),
]


def show_value(key: str, value: Any) -> str:
    """A value as a person reads it: sizes with units, seconds with s, lists joined."""
    spec = FIELDS.get(key) or FIELDS.get(f"{key}.default")
    kind = spec.kind if spec else None
    if isinstance(value, tuple) and all(isinstance(v, Item) for v in value):
        return ", ".join(show_value(key, v.value) for v in value) if value else "(none)"
    if kind is Kind.TMPFS and isinstance(value, tuple | list) and len(value) == 2:
        return f"{value[0]} ({format_size(value[1])})"
    if kind is Kind.MAPPING and isinstance(value, tuple | list) and len(value) == 2:
        return f"{value[0]}={value[1]}"
    if isinstance(value, tuple | list):
        return ", ".join(show_value(key, v) for v in value) if value else "(none)"
    if kind is Kind.SIZE and isinstance(value, int):
        return format_size(value) if value else "0"
    if kind is Kind.SECONDS and isinstance(value, int):
        return f"{value} s"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def rows(effective: EffectivePolicy) -> list[dict[str, Any]]:
    """One row per key: section, key, value, enforcement, optional, origin(s)."""
    optional = gate.optional_keys(effective)
    out = []
    for section, keys in SECTIONS:
        for key in keys:
            setting = effective[key]
            row: dict[str, Any] = {
                "section": section,
                "key": key,
                "value": _json_value(setting.value),
                "shown": show_value(key, setting.value),
                "origin": setting.origin,
                "optional": gate.is_optional(key, optional),
            }
            if _is_list(key):
                row["items"] = [
                    {"value": _json_value(i.value), "origin": i.origin} for i in setting.value
                ]
            if section == "limits":
                row["enforcement"] = effective.value(f"{key}.enforcement")
                row["max"] = effective[f"{key}.max"].value
            out.append(row)
    return out


def _is_list(key: str) -> bool:
    spec = FIELDS.get(key)
    return spec is not None and (spec.kind in LIST_KINDS or spec.kind is Kind.MAPPING)


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v.value if isinstance(v, Item) else v) for v in value]
    return value


# What a gate's answer means for a requirement of the kernel, as explain's host section says it.
_ON_HOST = {Verdict.ENFORCED: "available", Verdict.OPTIONAL: "runs without it",
            Verdict.REFUSED: "fails closed"}  # fmt: skip


def host_rows(effective: EffectivePolicy, found: Mapping[str, Fact]) -> list[dict[str, Any]]:
    """For each requirement that depends on the kernel: does this host provide it
    (``found``: hostfacts.facts() on this host), and what happens if not: the gate's
    answer (the job fails closed, or runs without it when optional)."""
    optional = gate.optional_keys(effective)
    out = []
    for key, fact in found.items():
        if not gate.needs_host(effective, key):
            level, verdict = "off", "not used"
        else:
            level = "optional" if gate.is_optional(key, optional) else "required"
            answer = gate.judge(key, fact.detail, met=fact.available, optional=optional)
            verdict = _ON_HOST[answer.verdict]
        out.append({"key": key, "needed": level, "available": fact.available,
                    "detail": fact.detail, "verdict": verdict})  # fmt: skip
    return out


def explain_json(
    effective: EffectivePolicy, job: str | None, found: Mapping[str, Fact]
) -> dict[str, Any]:
    return {
        "schema": "sandbox-agent/policy-explain",
        "version": SCHEMA_VERSION,
        "policy": effective.policy.name,
        "files": [str(f) for f in effective.policy.files],
        "job": job,
        "rows": rows(effective),
        "host": host_rows(effective, found),
    }


def explain_text(effective: EffectivePolicy, job: str | None, found: Mapping[str, Fact]) -> str:
    """The table: one line per key, list items each on their own line with their origin."""
    chain = " <- ".join(f.name for f in effective.policy.files)
    lines = [f"policy {effective.policy.name} ({chain})" + (f", job {job}" if job else "")]
    for section, _ in SECTIONS:
        lines.append("")
        lines.append(f"[{section}]")
        for row in (r for r in rows(effective) if r["section"] == section):
            key = row["key"].split(".", 1)[1]
            flags = []
            if "enforcement" in row:
                flags.append(row["enforcement"])
                flags.append(f"max {show_value(row['key'], row['max'])}")
            if row["optional"]:
                flags.append("optional")
            suffix = f"  ({', '.join(flags)})" if flags else ""
            items = row.get("items", [])
            # Items each on their own line when they do not all come from the key's line.
            if len(items) > 1 or any(i["origin"] != row["origin"] for i in items):
                lines.append(f"  {key:<24} {row['origin']}{suffix}")
                for item in row["items"]:
                    shown = show_value(row["key"], _tuple(item["value"]))
                    lines.append(f"      {shown:<40} {item['origin']}")
            else:
                lines.append(f"  {key:<24} {row['shown']:<30} {row['origin']}{suffix}")
    lines += ["", "[this host]  (what the kernel provides; see --runtime for who enforces it)"]
    for row in host_rows(effective, found):
        lines.append(f"  {row['key']:<24} {row['verdict']:<16} {row['detail']}")
    return "\n".join(lines)


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
