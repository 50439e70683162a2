"""The broker's file endpoints: a job's outputs and logs (sent by its job token while
SAVING), its inputs (sent by its owner, fetched by its job token while ASSIGNED) and
its attempts' signed audit records (sent by the agent that ran them). Mixed into
Endpoints, whose scope checks (``job``, ``own_job``, ``spec``) they use."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography import x509

from sandbox_agent.audit import record as records
from sandbox_agent.broker.caller import Caller, Refused
from sandbox_agent.broker.files import FileRefused, FileStore
from sandbox_agent.broker.inputs import InputRefused, Inputs
from sandbox_agent.printable import clipped
from sandbox_agent.queue import State, Store, states
from sandbox_agent.tokens import TokenAuthority, fingerprint

if TYPE_CHECKING:
    from sandbox_agent.jdl import JobSpec
    from sandbox_agent.queue import Job


class Transfers:
    store: Store
    authority: TokenAuthority
    files: FileStore
    inputs: Inputs

    if TYPE_CHECKING:  # Endpoints' own

        def job(self, job_id: int | None) -> Job: ...

        def own_job(self, caller: Caller, job: Job, resubmission: int | None = None) -> None: ...

        def spec(self, job: Job) -> JobSpec | str: ...

    def do_put_file(self, caller: Caller, job_id: int | None, body: dict[str, Any],
                    _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        """A job token's file, while its agent saves the job. The payload holds the token
        too, but has ended by then; a process it left with the network on could send a
        name first, and since kept files are never replaced the agent's own send then
        fails and the job ends ERROR_SV, never with the payload's file in its place."""
        job = self.job(job_id)
        scope = caller.token.identity.job
        assert scope is not None  # the route takes job tokens only
        self.own_job(caller, job, scope.resubmission)
        if job.state is not State.SAVING:
            raise Refused(409, f"job {job.id} is {job.state.value}: files are taken while its "
                          "agent saves it (SAVING)")  # fmt: skip
        try:
            kept = self.files.put(job.id, job.resubmission, str(body["name"]), body["data"],
                                  str(body["sha256"]))  # fmt: skip
        except FileRefused as exc:
            raise Refused(exc.status, str(exc)) from None
        return {"kept": kept}

    def do_files(self, caller: Caller, job_id: int | None, _body: dict[str, Any],
                 _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        job = self.job(job_id)
        self.own_job(caller, job)
        return {"job": job.id, "resubmission": job.resubmission, "state": job.state.value,
                "files": self.files.listing(job.id, job.resubmission)}  # fmt: skip

    def do_get_file(self, caller: Caller, job_id: int | None, body: dict[str, Any],
                    _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        job = self.job(job_id)
        self.own_job(caller, job)
        try:
            content, sha256 = self.files.get(job.id, job.resubmission, str(body["name"]))
        except FileRefused as exc:
            raise Refused(exc.status, str(exc)) from None
        return {"content": content, "sha256": sha256}

    def do_put_input(self, caller: Caller, _id: int | None, body: dict[str, Any],
                     _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        assert caller.user is not None  # user and admin tokens name their user
        try:
            entry = self.inputs.add(caller.user, str(body["name"]), body["data"],
                                    str(body["sha256"]))  # fmt: skip
        except InputRefused as exc:
            raise Refused(exc.status, str(exc)) from None
        return {"lfn": entry.lfn, "size": entry.size, "sha256": entry.sha256}

    def do_get_input(self, caller: Caller, job_id: int | None, body: dict[str, Any],
                     _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        """An input of the job, for its agent to place before the sandbox starts."""
        job = self.job(job_id)
        scope = caller.token.identity.job
        assert scope is not None  # the route takes job tokens only
        self.own_job(caller, job, scope.resubmission)
        if job.state is not State.ASSIGNED:  # placed before the sandbox (and payload) starts
            raise Refused(409, f"job {job.id} is {job.state.value}: its inputs are given "
                          "to its agent before it starts (ASSIGNED)")  # fmt: skip
        spec = self.spec(job)
        if isinstance(spec, str):
            raise Refused(409, f"job {job.id}: {spec}")
        try:
            content, sha256 = self.inputs.fetch(spec, job.id, job.owner, "/" + str(body["name"]))
        except InputRefused as exc:
            raise Refused(exc.status, str(exc)) from None
        return {"content": content, "sha256": sha256}

    def do_put_audit(self, caller: Caller, job_id: int | None, body: dict[str, Any],
                     _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        """An attempt's record, from the agent that ran it: signed by the caller's own
        token (compared first, then checked against the CA), about this job, an attempt
        the queue's history says this agent was matched to, and that attempt over."""
        job = self.job(job_id)
        data: bytes = body["data"]
        if hashlib.sha256(data).hexdigest() != str(body["sha256"]).lower():
            raise Refused(400, "the body's SHA-256 is not the one announced")
        try:
            signed = records.parse(data, "the body")
            certificate = x509.load_pem_x509_certificate(
                str(signed["signature"]["certificate"]).encode()
            )
            if fingerprint(certificate) != caller.fingerprint:  # cheap, before the chain
                raise Refused(403, "the record is signed by another token than this caller's")
            record = records.verify(signed, [self.authority.root]).record
            about, resubmission = record["job"]["id"], record["job"]["resubmission"]
            name = record["agent"]["name"]
            if type(about) is not int or type(resubmission) is not int or \
                    not isinstance(name, str):  # fmt: skip
                raise ValueError("job.id and job.resubmission must be integers, agent.name text")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # AuditError too
            shown = clipped(exc, 300)
            raise Refused(400, f"not a valid audit record: {shown}") from None
        if about != job.id:
            raise Refused(400, f"the record is about job {about}, not job {job.id}")
        holder = caller.holder(name)
        # the match itself: a lease that ended also writes a row, with the next
        # resubmission and the old holder, which must not count as having run it
        if not any(c.state is State.ASSIGNED and c.resubmission == resubmission
                   and c.agent == holder for c in self.store.history(job.id)):  # fmt: skip
            raise Refused(403, f"this agent did not run job {job.id}.{resubmission}")
        if resubmission == job.resubmission and job.state not in states.FINAL:
            raise Refused(409, f"job {job.id} is {job.state.value}: its record comes when "
                          "the attempt has ended")  # fmt: skip
        try:
            self.files.put_record(job.id, resubmission, data)
        except FileRefused as exc:
            raise Refused(exc.status, str(exc)) from None
        return {"kept": {"job": job.id, "resubmission": resubmission, "size": len(data)}}

    def do_get_audit(self, caller: Caller, job_id: int | None, _body: dict[str, Any],
                     query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        job = self.job(job_id)
        self.own_job(caller, job)
        wanted = query.get("resubmission", str(job.resubmission))
        if not re.fullmatch(r"[0-9]{1,9}", wanted):
            raise Refused(400, "resubmission: give a number")
        try:
            content = self.files.get_record(job.id, int(wanted))
        except FileRefused as exc:
            raise Refused(exc.status, str(exc)) from None
        return {"content": content, "sha256": hashlib.sha256(content).hexdigest()}
