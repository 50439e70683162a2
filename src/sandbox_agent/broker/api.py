"""Every endpoint of the broker: its method and path, who may call it, what its body
holds. The service routes by this table and nothing else, and the OpenAPI document
(GET /v1/openapi.json) is made from it, so the two cannot disagree.

Who may call, in two steps: the role named here (from the client certificate, checked
before the body is read), then the scope the endpoint checks against the queue (a
jobagent must hold the job's lease, a job token must be for that job id and
resubmission, a user must own the job).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sandbox_agent.broker.files import FILE_CAP
from sandbox_agent.broker.schema import Field, openapi_schema

VERSION = "1"
OPENAPI_PATH = "/v1/openapi.json"
AGENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
SMALL = 16 * 1024  # bytes of a body that carries no JDL
JDL_CAP = 64 * 1024  # characters of a submitted JDL (a production JDL is a few KB)
AUDIT_CAP = 4 * 1024 * 1024  # bytes of an audit record (agent/audit.py reads no more)

# The roles of tokens (sandbox_agent.tokens.roles.Role values)
JOBAGENT, JOB, USER, ADMIN = "jobagent", "job", "user", "admin"

_AGENT = Field("str", cap=64, doc="the pilot's name for itself: with its certificate's "
               "fingerprint, the lease holder")  # fmt: skip
_RESUB = Field("int", doc="the resubmission the caller works on")
_REQUEST = Field("str", required=False, cap=64, doc="a key of the caller's: a repeat (the "
                 "answer was lost) gets the first one's answer, for ten minutes")  # fmt: skip


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # with {id} for a job id
    roles: frozenset[str]
    scope: str  # who, beyond the role, in words (the endpoint checks it)
    summary: str
    body: dict[str, Field] | None = None  # None: no body
    cap: int = SMALL  # bytes of the body
    raw: bool = False  # a file's bytes, not JSON: the body of a PUT, the answer of a GET

    def pattern(self) -> re.Pattern[str]:
        path = re.escape(self.path).replace(r"\{id\}", "(?P<id>[1-9][0-9]{0,17})")
        return re.compile("^" + path.replace(r"\{name\}", "(?P<name>.+)") + "$")


ROUTES: tuple[Route, ...] = (
    Route("openapi", "GET", OPENAPI_PATH, frozenset({JOBAGENT, JOB, USER, ADMIN}),
          "any valid token", "this document"),
    Route("match", "POST", "/v1/match", frozenset({JOBAGENT}), "any jobagent",
          "lease the best waiting job the slot can run",
          {"agent": _AGENT,
           "slot": Field("scalars", cap=64, doc="the other.* attributes: CPUCores, Memory, "
                         "Disk, TTL, Site, CE, Platform, ..."),
           "lease": Field("int", doc="seconds the lease lasts without a heartbeat"),
           "exclude": Field("ints", required=False, cap=1000,
                            doc="job ids this agent's policy refuses"),
           "request": _REQUEST}),
    Route("job_token", "POST", "/v1/jobs/{id}/token", frozenset({JOBAGENT}),
          "the jobagent holding the job's lease",
          "sign a job token from the agent's certificate request",
          {"agent": _AGENT, "resubmission": _RESUB,
           "csr": Field("str", cap=16384, doc="PEM certificate request for this job")}),
    # The broker decides: a refusal (revoked, past the site's renewal limit, nothing
    # longer to give) is 403 with why; an expired token never gets past the handshake.
    Route("renew", "POST", "/v1/agent/token", frozenset({JOBAGENT}),
          "a jobagent, for its own key, while its token is valid and not revoked",
          "a new jobagent token for the caller's key and line (the same origin), as long "
          "as the site renews (broker serve --agent-token-lifetime, --renew-limit)"),
    Route("heartbeat", "POST", "/v1/jobs/{id}/heartbeat", frozenset({JOBAGENT, JOB}),
          "the jobagent holding the lease, or the job's own token (resource use only: it "
          "never extends the lease)",
          "extend the lease; false means stop the job (killed, or the lease lost)",
          {"agent": Field("str", required=False, cap=64, doc="for a jobagent token"),
           "resubmission": _RESUB, "lease": Field("int"),
           "usage": Field("scalars", required=False, cap=32,
                          doc="resource use so far: cpu_seconds, memory_bytes, ...")}),
    # Not the job token's: the payload holds it, and states decide what a job ended as.
    Route("state", "POST", "/v1/jobs/{id}/state", frozenset({JOBAGENT}),
          "the jobagent holding the lease",
          "report the job's state, forward along the documented transitions",
          {"agent": _AGENT, "resubmission": _RESUB, "state": Field("str", cap=32),
           "detail": Field("str", required=False, cap=1000),
           "exit_code": Field("int", required=False)}),
    Route("release", "POST", "/v1/jobs/{id}/release", frozenset({JOBAGENT}),
          "the jobagent holding the lease", "hand the job back to the queue",
          {"agent": _AGENT, "resubmission": _RESUB,
           "reason": Field("str", cap=500),
           "fault": Field("bool", required=False,
                          doc="the node could not run it (the default); false: the agent is "
                              "stopping. Node faults are counted: past the queue's bound the "
                              "job ends FAILED")}),
    Route("submit", "POST", "/v1/jobs", frozenset({USER, ADMIN}),
          "any user; the job is theirs", "queue a job",
          {"jdl": Field("str", cap=JDL_CAP, doc="the job description, normalized or not"),
           "priority": Field("int", required=False, doc="higher runs first"),
           "request": _REQUEST},
          cap=4 * JDL_CAP),
    Route("jobs", "GET", "/v1/jobs", frozenset({USER, ADMIN}),
          "a user sees their own jobs, an admin every job", "list jobs (?state=S)"),
    Route("status", "GET", "/v1/jobs/{id}", frozenset({USER, ADMIN, JOB}),
          "its owner, an admin, or the job's own token", "one job and its state history"),
    Route("put_file", "PUT", "/v1/jobs/{id}/files/{name}", frozenset({JOB}),
          "the job's own token, while its agent saves it (SAVING); never replaces a file",
          "keep one output (outputs/NAME) or log (logs/NAME): the body is its bytes, "
          "X-Content-SHA256 their digest", raw=True, cap=FILE_CAP),
    Route("files", "GET", "/v1/jobs/{id}/files", frozenset({USER, ADMIN, JOB}),
          "its owner, an admin, or the job's own token",
          "the files kept for the job's last attempt: names, sizes, SHA-256"),
    Route("get_file", "GET", "/v1/jobs/{id}/files/{name}", frozenset({USER, ADMIN}),
          "its owner or an admin", "one kept file: its bytes, X-Content-SHA256 their digest",
          raw=True),
    Route("put_input", "PUT", "/v1/inputs/{name}", frozenset({USER, ADMIN}),
          "any user; kept as LF:/local/USER/<SHA-256, 16 hex>/NAME, never replaced",
          "keep one input file for the caller's jobs to name by LF: (the answer says "
          "which): the body is its bytes, X-Content-SHA256 their digest",
          raw=True, cap=FILE_CAP),
    Route("get_input", "GET", "/v1/jobs/{id}/inputs/{name}", frozenset({JOB}),
          "the job's own token, while the job is leased; only files its JDL names",
          "one input file the job names (the path is its LFN without the first '/'): its "
          "bytes, X-Content-SHA256 their digest", raw=True),
    Route("put_audit", "PUT", "/v1/jobs/{id}/audit", frozenset({JOBAGENT}),
          "the jobagent that ran the attempt, once it has ended; signed by that token",
          "keep an attempt's signed audit record (the body; X-Content-SHA256 its digest): "
          "checked against the CA, the caller and the queue's history, never replaced",
          raw=True, cap=AUDIT_CAP),
    Route("get_audit", "GET", "/v1/jobs/{id}/audit", frozenset({USER, ADMIN}),
          "its owner or an admin",
          "the audit record of the job's last attempt (?resubmission=N for another)",
          raw=True),
    Route("kill", "POST", "/v1/jobs/{id}/kill", frozenset({USER, ADMIN}),
          "its owner or an admin", "kill the job; its agent stops it at the next heartbeat",
          {"reason": Field("str", required=False, cap=500)}),
)  # fmt: skip


def find(method: str, path: str) -> tuple[Route | None, int | None, str | None, bool]:
    """The route for ``method`` and ``path``, the job id and the file name in the path
    (still percent-encoded), and whether the path exists with another method (405
    rather than 404)."""
    other = False
    for route in ROUTES:
        match = route.pattern().match(path)
        if match is None:
            continue
        if route.method != method:
            other = True
            continue
        found = match.groupdict()
        job_id = int(found["id"]) if "id" in found else None
        return route, job_id, found.get("name"), False
    return None, None, None, other


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ROUTES."""
    paths: dict[str, Any] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "operationId": route.name,
            "summary": route.summary,
            "description": f"Who: {route.scope} (roles: {', '.join(sorted(route.roles))}).",
            "responses": {
                "200": {"description": "done; a JSON object"},
                "400": {"description": "the request is not what this endpoint takes"},
                "403": {"description": "this certificate may not do this; the reason"},
                "404": {"description": "no such job"},
                "409": {"description": "the queue refuses: lease lost, or no such move"},
                "413": {"description": "the body is over its cap"},
            },
        }
        if "{id}" in route.path:
            operation["parameters"] = [{"name": "id", "in": "path", "required": True,
                                        "schema": {"type": "integer", "minimum": 1}}]  # fmt: skip
        if "{name}" in route.path:
            name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            operation.setdefault("parameters", []).append(name)
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {**openapi_schema(route.body), "x-max-bytes": route.cap}}}}  # fmt: skip
        elif route.raw and route.method == "PUT":
            operation["requestBody"] = {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                        "x-max-bytes": route.cap}}}}  # fmt: skip
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sandbox-agent broker",
            "version": VERSION,
            "description": "Every request over mutual TLS; the client certificate's role "
            "and scope decide what it may do.",
        },
        "paths": paths,
    }
