"""The per-job audit record: what the agent did for one attempt, signed with its
jobagent token's key, for a reviewer to check afterwards.

A record (schema ``sandbox-agent/audit-record``, version 1; docs/audit.md) holds the
job and its final state, the agent's and the job token's fingerprints (never a key),
the effective policy with the origin of every value, the runtime's argv (variable
values redacted), the image it ran on with its digest, the binds this node lacked
(left out), the seccomp program's hash, the host's posture, what the kernel enforced
and what the agent only monitored, resource use, the states the wrapper reported,
the outputs with their SHA-256, and the teardown report.

Building it is the pilot's: this module. Its format (signing, writing, reading back,
verifying) is ``sandbox_agent.audit.record``, shared with the broker and the CLI.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import asdict
from typing import Any

from cryptography import x509

from sandbox_agent import hostfacts

# The record's format (signing, reading, checking) is audit.record's; the names this
# module does not use are kept here for callers of the place they had before.
from sandbox_agent.audit.record import (  # noqa: F401
    MAX_RECORD,
    RECORD,
    SCHEMA,
    VERSION,
    AuditError,
    Verified,
    canonical,
    load,
    now,
    parse,
    sign,
    verify,
    write,
)
from sandbox_agent.policy.explain import rows
from sandbox_agent.policy.gate import Answer, Verdict
from sandbox_agent.tokens import fingerprint

REDACTED = "<redacted>"
LISTED = 1000  # outputs, logs and problems listed in a record; past that, a count and digest


def redact(argv: tuple[str, ...] | list[str]) -> list[str]:
    """The argv with every variable's value replaced (bwrap's --setenv NAME VALUE, the
    landlock step's --env=NAME=VALUE): the names show what the payload was given, the
    values could hold secrets."""
    out = list(argv)
    for index, word in enumerate(out):
        if word == "--setenv" and index + 2 < len(out):
            out[index + 2] = REDACTED
        elif word.startswith("--env=") and "=" in word[len("--env=") :]:
            name = word[len("--env=") :].split("=", 1)[0]
            out[index] = f"--env={name}={REDACTED}"
    return out


def runtime_view(runtime: str, argv: tuple[str, ...], session: Any) -> dict[str, Any]:
    """The runtime and its argv; for an engine, whether the job's container is gone."""
    view: dict[str, Any] = {"name": runtime, "argv": redact(argv)}
    if runtime in ("docker", "podman") and session is not None:
        view["container"] = ("removed" if not session.container_left
                             else f"left: {session.container_left}")  # fmt: skip
    return view


def engine_held(answers: tuple[Answer, ...]) -> set[str]:
    """The limits a container engine's own cgroup held (read back before the job ran)."""
    return {a.key.removeprefix("limits.") for a in answers
            if a.key.startswith("limits.") and a.by == "runtime"
            and a.verdict is Verdict.ENFORCED}  # fmt: skip


def host_summary() -> dict[str, Any]:
    return {"kernel": platform.release(), "machine": platform.machine(),
            "facts": {k: {"available": f.available, "detail": f.detail}
                      for k, f in hostfacts.facts().items()}}  # fmt: skip


def teardown_view(teardown: Any, namespaces: dict[str, str], workdir: str) -> dict[str, Any]:
    """The teardown report: processes killed or left, the cgroup, IPC objects and mounts
    (gone with the sandbox's own namespaces), the work directory."""
    view: dict[str, Any] = asdict(teardown) if teardown is not None else {"cgroup": "none"}
    view["ipc"] = ("gone with the sandbox's IPC namespace" if namespaces.get("ipc") != "off"
                   else "the host's IPC namespace: objects may remain")  # fmt: skip
    view["mounts"] = ("gone with the sandbox's mount namespace" if namespaces.get("mount") != "off"
                      else "the host's mount namespace")  # fmt: skip
    view["workdir"] = workdir
    return view


def build(*, job: dict[str, Any], agent_name: str, agent_token: x509.Certificate,
          job_token_pem: str | None, effective: Any, session: Any, argv: tuple[str, ...],
          states: list[str], history: list[dict[str, Any]], usage: dict[str, Any], manifest: Any,
          workdir: str, image: dict[str, Any] | None = None,
          answers: tuple[Answer, ...] = (), runtime: str = "bwrap",
          dropped: list[dict[str, str]] | None = None) -> dict[str, Any]:  # fmt: skip
    """The unsigned record of one attempt (see the module's docstring). ``dropped``: the
    binds left out because this node lacks them (runtime.binds)."""
    job_fp = None
    if job_token_pem:
        job_fp = fingerprint(x509.load_pem_x509_certificate(job_token_pem.encode()))
    namespaces = {"ipc": effective.view.namespaces.ipc, "mount": effective.view.namespaces.mount}
    limits = session.limits if session is not None else None
    unenforced = sorted({*(session.unenforced if session else ()),
                         *(limits.unenforced if limits else ())})  # fmt: skip
    return {
        "schema": SCHEMA, "version": VERSION, "signed_at": now(),
        "job": job,
        "agent": {"name": agent_name, "token_fingerprint": fingerprint(agent_token)},
        "job_token_fingerprint": job_fp,
        "policy": {"name": effective.policy.name,
                   "files": [str(f) for f in effective.policy.files],
                   "settings": [_redacted_row(r) for r in rows(effective)]},
        "runtime": runtime_view(runtime, argv, session),
        "image": image,
        "dropped_binds": list(dropped or []),
        "seccomp_sha256": session.seccomp_sha256 if session else None,
        "landlock": session.landlock if session else None,
        "network": network_view(effective, session),
        "host": host_summary(),
        "enforcement": {"kernel": sorted({*(limits.kernel if limits else ()),
                                          *engine_held(answers)}),
                        "monitored": sorted(limits.monitored) if limits else [],
                        "held_by_slot": sorted(limits.by_slot) if limits else [],
                        "unenforced": unenforced,
                        "notes": list(limits.notes) if limits else [],
                        "requirements": [{"key": a.key, "verdict": str(a.verdict), "how": a.how,
                                          "by": a.by} for a in answers],
                        "cgroup": session.cgroup if session else None},
        "usage": usage,
        "states": states,
        "history": history,
        **_listed("outputs", [{"name": f["name"], "size": f["size"], "sha256": f["sha256"]}
                              for f in (manifest.files if manifest else [])]),
        **_listed("logs", list(manifest.logs) if manifest else []),
        **_listed("problems", list(manifest.problems) if manifest else []),
        "teardown": teardown_view(session.teardown if session else None, namespaces, workdir),
    }  # fmt: skip


def network_view(effective: Any, session: Any) -> dict[str, Any]:
    """The job's network mode, and in egress mode what the agent's relay let through
    and refused (the first refusals, each naming the destination and why), and the
    allow names that did not resolve when the job started (they opened nothing)."""
    out: dict[str, Any] = {"mode": effective.view.network.mode}
    tally = getattr(session, "egress", None)
    if tally is not None:
        out |= {"connections": tally.allowed, "refused": tally.refused,
                "refusals": list(tally.refusals), "unresolved": list(tally.unresolved)}  # fmt: skip
    return out


def _listed(key: str, items: list[Any]) -> dict[str, Any]:
    """``key``: the first LISTED items (the payload chooses how many outputs it makes,
    and a record over the broker's cap would not be kept); past that, how many there
    were and the SHA-256 of the whole list, which the manifest beside it lists."""
    if len(items) <= LISTED:
        return {key: items}
    whole = hashlib.sha256(canonical({"items": items})).hexdigest()
    return {key: items[:LISTED], f"{key}_count": len(items), f"{key}_sha256": whole}


def _redacted_row(row: dict[str, Any]) -> dict[str, Any]:
    """A policy row, the values of the variables it sets replaced (as in the argv)."""
    if row.get("key") != "process.environment.set":
        return row
    pairs = [[str(pair[0]), REDACTED] for pair in row.get("value") or []]
    return {**row, "value": pairs, "shown": " ".join(f"{n}={v}" for n, v in pairs),
            "items": [{**item, "value": [str(item["value"][0]), REDACTED]}
                      for item in row.get("items") or []]}  # fmt: skip
