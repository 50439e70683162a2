"""Explaining an effective policy to a person (a table) or to a program (JSON).

Every row says what is isolated, the value, whether the kernel enforces it or the agent
only monitors it, whether the site marked it optional, and where the value came from.
The JSON form follows ``docs/policy-explain.schema.json``. Under its network rows, the
text says in words what the mode lets a job reach and what stays closed
(``network_reach``).
"""

from __future__ import annotations

import ipaddress
import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sandbox_agent.jdl.units import format_size
from sandbox_agent.policy import destinations, gate
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
    ("network", [k for k in FIELDS if k.startswith("network.")]),
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
    if kind is Kind.STRING and value == "":
        return "(none)"
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


# The cloud metadata address, named where explain says what a mode exposes or closes.
METADATA = ipaddress.ip_address("169.254.169.254")
PROXY_VARIABLES = "http_proxy, https_proxy, HTTP_PROXY and HTTPS_PROXY"


def network_reach(effective: EffectivePolicy) -> list[str]:
    """What ``network.mode`` lets a job reach and what stays closed, in sentences: the
    lines explain's text shows under the network rows."""
    network = effective.view.network
    proxy = network.proxy.removeprefix("http://").removesuffix("/")
    given = f"the job gets network.proxy as {PROXY_VARIABLES}"
    unused = [k for k, v in (("network.allow", network.allow), ("network.deny", network.deny))
              if v]  # fmt: skip
    out = []
    if network.mode == "none":
        out.append("none: the job has a network namespace of its own with its loopback "
                   "only; it reaches nothing outside the sandbox")  # fmt: skip
        if network.proxy:
            out.append(f"{given}, but cannot reach it")
    elif network.mode == "host":
        out.append("host: the payload shares the node's network: every service listening "
                   "on the node, its loopback included; the cloud metadata address "
                   f"{METADATA}; anything the node can reach")  # fmt: skip
        if network.proxy:
            out.append(given)
    else:
        out.append("egress: the job has a network namespace of its own; the agent relays its "
                   "TCP connections and its DNS queries, and nothing else leaves it")  # fmt: skip
        out.append(_egress_reachable(network.allow, network.deny, proxy))
        if network.proxy:
            out.append(given)
        out.append(_egress_closed())
        dead = _egress_dead(network.allow, proxy)
        if dead:
            out.append(dead)
    if unused and network.mode != "egress":
        out.append(f"{' and '.join(unused)}: no effect, only egress mode reads "
                   f"{'them' if len(unused) > 1 else 'it'}")  # fmt: skip
    return out


def _egress_reachable(allow: tuple[str, ...], deny: tuple[str, ...], proxy: str) -> str:
    parts = ["DNS, through the agent's resolver"]
    opened = [e for e in allow if destinations.unreachable(e) is None]
    if opened:
        text = f"over TCP, {', '.join(opened)} (network.allow)"
        if deny:
            text += f" except {', '.join(deny)} (network.deny)"
        if any(destinations.split(e)[2] is None for e in opened):
            text += "; names are resolved by the agent when each job starts"
        parts.append(text)
    if proxy and destinations.unreachable(proxy) is None:
        parts.append(f"the proxy {proxy} (network.proxy), whatever network.allow says")
    reach = "; ".join(parts)
    if not opened:
        reach += "; nothing else, since network.allow opens nothing"
    return f"reachable: {reach}"


def _egress_closed() -> str:
    ranges = ", ".join(
        f"{n} (the cloud metadata address {METADATA} among them)" if METADATA in n else str(n)
        for n in destinations.ALWAYS_DENIED
    )  # fmt: skip
    return ("closed whatever the lists say: this node's own addresses, its loopback among "
            f"them (checked at each connection); {ranges}; and IPv6 beyond the job's own "
            "loopback (egress mode carries IPv4 only)")  # fmt: skip


def _egress_dead(allow: tuple[str, ...], proxy: str) -> str | None:
    """The entries (and the proxy) egress mode names but can never reach, each with why."""
    named = [(e, e) for e in allow] + ([(f"the proxy {proxy}", proxy)] if proxy else [])
    dead = [f"{shown} ({why})" for shown, entry in named
            if (why := destinations.unreachable(entry))]  # fmt: skip
    return f"named but never reached: {', '.join(dead)}" if dead else None


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
        if section == "network":  # in words: what the mode reaches and what stays closed
            for sentence in network_reach(effective):
                lines += _wrap(sentence)
    lines += ["", "[this host]  (what the kernel provides; see --runtime for who enforces it)"]
    for row in host_rows(effective, found):
        lines.append(f"  {row['key']:<24} {row['verdict']:<16} {row['detail']}")
    return "\n".join(lines)


def _wrap(sentence: str) -> list[str]:
    """A sentence under a section's rows: indented deeper than a key, its continuation
    deeper than a list item."""
    return textwrap.wrap(sentence, 100, initial_indent=" " * 4, subsequent_indent=" " * 8,
                         break_on_hyphens=False, break_long_words=False)  # fmt: skip


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
