"""What each broker endpoint does, once the service has verified the client
certificate and checked the body: the scope checks (whose lease, whose job, which job
token), then the queue and the authority.

Every refusal is a Refused with an HTTP status and one line for the client. Nothing
here echoes a server path, a key or a token body.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sandbox_agent.broker.api import ADMIN, JOB, JOBAGENT, USER, openapi
from sandbox_agent.broker.caller import Caller, Refused
from sandbox_agent.broker.files import FILE_CAP, FileStore
from sandbox_agent.broker.inputs import InputRefused, Inputs
from sandbox_agent.broker.transfers import Transfers
from sandbox_agent.catalogue import Catalogue
from sandbox_agent.jdl import JDLError, JobSpec, Slot, load_job, render_jdl
from sandbox_agent.jdl.expr import render
from sandbox_agent.jdl.fit import refusal
from sandbox_agent.queue import (
    Job,
    LeaseError,
    NoSuchJob,
    State,
    Store,
    StoreError,
    TransitionError,
    states,
)
from sandbox_agent.tokens import (
    IssuanceRefused,
    JobScope,
    RenewalPolicy,
    TokenAuthority,
    TokenError,
    files,
    fingerprint,
)

SPEC_CACHE = 10_000  # parsed JDLs kept between matches
LOGGED = "_log"  # an answer's entry the service writes to its log line, never sends
ANSWERS_KEPT = 600.0  # seconds a keyed request's answer is kept for its repeats
MAX_LEASE = 3600  # seconds: a lease longer than this would hide a dead agent for too long


Handler = Callable[["Endpoints", Caller, int | None, dict[str, Any], Mapping[str, str]],
                   dict[str, Any]]  # fmt: skip


class Endpoints(Transfers):
    def __init__(self, store: Store, authority: TokenAuthority, certs: Path,
                 files: FileStore | None = None, inputs: Inputs | None = None,
                 renewal: RenewalPolicy | None = None) -> None:  # fmt: skip
        self.store = store
        self.authority = authority
        self.renewal = renewal or RenewalPolicy()
        self.certs = certs
        self.files = files or FileStore(certs.parent / "broker-files")
        self.inputs = inputs or Inputs(Catalogue(certs.parent / "catalogue", max_file=FILE_CAP))
        self._specs: dict[tuple[int, str], JobSpec | str] = {}
        self._usage: dict[tuple[int, int], dict[str, Any]] = {}  # last reported, per attempt
        self._lock = threading.Lock()
        self._crl: tuple[tuple[int, int, int], x509.CertificateRevocationList] | None = None
        # keyed requests (match, submit): (fingerprint, key) -> (done, when, answer)
        self._answers: dict[tuple[str, str], tuple[threading.Event, float, list[Any]]] = {}

    def handle(self, name: str, caller: Caller, job_id: int | None, body: dict[str, Any],
               query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        handler: Handler = getattr(type(self), f"do_{name}")
        if "request" in body:
            return self.once(caller, str(body["request"]),
                             lambda: self.run(handler, caller, job_id, body, query))  # fmt: skip
        return self.run(handler, caller, job_id, body, query)

    def once(self, caller: Caller, key: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Carry out a keyed request once: a repeat of it (its answer was lost to the
        caller) waits for the first and gets the same answer or refusal."""
        now = time.monotonic()
        ident = (caller.fingerprint, key)
        with self._lock:
            stale = [k for k, (_, when, _) in self._answers.items() if now - when > ANSWERS_KEPT]
            for old in stale:
                del self._answers[old]
            first = ident not in self._answers
            if first:
                self._answers[ident] = (threading.Event(), now, [])
            done, _when, outcome = self._answers[ident]
        if first:
            try:
                outcome.append(work())
            except Refused as refused:
                outcome.append(refused)
            finally:
                done.set()
        elif not done.wait(60):
            raise Refused(503, "the first of these requests is still being carried out; retry")
        if not outcome or (isinstance(outcome[0], Refused) and outcome[0].status == 503):
            with self._lock:  # nothing was done: a repeat must try afresh
                self._answers.pop(ident, None)
        if not outcome:
            raise Refused(503, "the first of these requests failed; retry")
        if isinstance(outcome[0], Refused):
            raise outcome[0]
        answer: dict[str, Any] = outcome[0]
        return answer

    def run(self, handler: Handler, caller: Caller, job_id: int | None, body: dict[str, Any],
            query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        try:
            return handler(self, caller, job_id, body, query)
        except LeaseError as exc:
            raise Refused(409, f"the lease is not yours: {self.no_path(exc)}") from None
        except TransitionError as exc:
            raise Refused(409, self.no_path(exc)) from None
        except StoreError as exc:  # the database is busy or down: nothing was done
            raise Refused(503, f"the queue cannot answer now ({self.no_path(exc)}); "
                          "retry") from None  # fmt: skip

    def no_path(self, exc: Exception) -> str:
        """The store's message without where the store is (a server detail)."""
        return str(exc).replace(self.store.where, "the queue")

    # -- helpers -------------------------------------------------------------------------

    def job(self, job_id: int | None) -> Job:
        assert job_id is not None  # the route's path has {id}
        try:
            return self.store.get(job_id)
        except NoSuchJob:  # only a missing row: a busy queue is a 503 (run()), never
            # a 404, which a pilot takes for "this job is gone" and drops
            raise Refused(404, f"no job {job_id}") from None

    def spec(self, job: Job) -> JobSpec | str:
        """The job's parsed JDL, or why it does not parse. Kept: matching asks for it
        while it holds the queue's lock, so it is parsed at submit (or by warm())."""
        key = (job.id, job.jdl_text)
        with self._lock:
            if key in self._specs:
                return self._specs[key]
        try:
            parsed: JobSpec | str = load_job(job.jdl_text, source=f"job {job.id}")
        except JDLError as exc:
            parsed = f"its JDL does not parse: {exc}"
        self.keep(key, parsed)
        return parsed

    def keep(self, key: tuple[int, str], spec: JobSpec | str) -> None:
        with self._lock:
            if len(self._specs) >= SPEC_CACHE:  # the oldest half goes
                for old in list(self._specs)[: SPEC_CACHE // 2]:
                    del self._specs[old]
            self._specs[key] = spec

    def warm(self) -> None:
        """Parse the waiting jobs' JDLs before any match needs them (at start)."""
        try:
            for job in self.store.jobs(State.WAITING):
                self.spec(job)
        except StoreError:
            pass  # the matches will parse what they meet

    def crl(self) -> x509.CertificateRevocationList | None:
        """Looked at on every use (a token revoked a moment ago is refused now), parsed
        again only when the file changed."""
        path = self.certs / files.CRL
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            if self._crl is not None and self._crl[0] == stamp:
                return self._crl[1]
        crl = files.load_crl(path)
        with self._lock:
            self._crl = (stamp, crl)
        return crl

    def own_job(self, caller: Caller, job: Job, resubmission: int | None = None) -> None:
        """A job token speaks for its job id and resubmission only; a user for their
        own jobs; an admin for all."""
        if caller.role == ADMIN:
            return
        if caller.role == USER:
            if job.owner != caller.user:
                raise Refused(403, f"job {job.id} is not yours")
            return
        if caller.role == JOB:
            scope = caller.token.identity.job
            assert scope is not None  # a verified job token has one
            if scope.job_id != job.id:
                raise Refused(403, f"this token is for job {scope.job_id}, not job {job.id}")
            if scope.user != job.owner:
                raise Refused(403, f"this token is for a job of {scope.user}, not of {job.owner}")
            wanted = job.resubmission if resubmission is None else resubmission
            if scope.resubmission != wanted or job.resubmission != scope.resubmission:
                raise Refused(
                    403,
                    f"this token is for resubmission {scope.resubmission} "
                    f"of job {job.id}, now at resubmission {job.resubmission}",
                )
            return
        raise Refused(403, f"a {caller.role} token cannot act on a job's record")

    def holder_of(self, caller: Caller, body: Mapping[str, Any]) -> str:
        """The lease a jobagent's call speaks for: its own name, bound to its
        certificate."""
        if "agent" not in body:
            raise Refused(400, "a jobagent names itself: field agent is missing")
        return caller.holder(str(body["agent"]))

    # -- agents --------------------------------------------------------------------------

    def do_match(self, caller: Caller, _id: int | None, body: dict[str, Any],
                 _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        holder = caller.holder(body["agent"])
        lease = _lease(body["lease"])
        try:
            slot = Slot(body["slot"])
        except ValueError as exc:
            raise Refused(400, f"slot: {exc}") from None
        exclude = frozenset(body.get("exclude", ()))

        def fits(job: Job) -> bool:
            if job.id in exclude:
                return False
            spec = self.spec(job)
            return not isinstance(spec, str) and refusal(spec, slot) is None

        job = self.store.match(holder, fits, lease)
        return {"job": None if job is None else _job_view(job)}

    def do_job_token(self, caller: Caller, job_id: int | None, body: dict[str, Any],
                     _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        job = self.job(job_id)
        holder = caller.holder(body["agent"])
        resubmission = int(body["resubmission"])
        try:
            request = x509.load_pem_x509_csr(str(body["csr"]).encode())
        except ValueError:
            raise Refused(400, "csr: not a PEM certificate request") from None
        spec = self.spec(job)
        if isinstance(spec, str):
            raise Refused(409, f"job {job.id}: {spec}")

        def leased(fingerprint: str, asked: JobScope) -> bool:
            now = self.store.get(asked.job_id)
            return (fingerprint == caller.fingerprint and now.agent == holder
                    and now.resubmission == asked.resubmission
                    and now.state in states.LEASED)  # fmt: skip

        try:
            issued = self.authority.issue_job_token(
                request, agent=caller.token.certificate, agent_chain=caller.token.chain[1:],
                scope=JobScope(job.id, resubmission, job.owner), ttl_seconds=spec.ttl,
                leased=leased, crl=self.crl())  # fmt: skip
        except (IssuanceRefused, TokenError) as exc:
            raise Refused(403, str(exc)) from None
        pem = serialization.Encoding.PEM
        return {"certificate": issued.certificate.public_bytes(pem).decode(),
                "chain": [c.public_bytes(pem).decode() for c in issued.chain]}  # fmt: skip

    def do_renew(self, caller: Caller, _id: int | None, _body: dict[str, Any],
                 _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        """A new token for the caller's own key (proved in the handshake), its line's
        origin kept: no lease, no job, no key travels. The caller's token was verified
        for this request (revocation included); the authority checks it again, with
        what the site allows (RenewalPolicy)."""
        try:
            issued = self.authority.renew_jobagent_token(
                caller.token.certificate, caller.token.chain[1:], policy=self.renewal,
                crl=self.crl())  # fmt: skip
        except (IssuanceRefused, TokenError) as exc:
            raise Refused(403, str(exc)) from None
        pem = serialization.Encoding.PEM
        certificate = issued.certificate
        return {"certificate": certificate.public_bytes(pem).decode(),
                "chain": [c.public_bytes(pem).decode() for c in issued.chain],
                "not_after": certificate.not_valid_after_utc.isoformat(),
                LOGGED: {"issued": fingerprint(certificate).removeprefix("sha256:")[:16],
                         "serial": f"{certificate.serial_number:x}",
                         "not_after": certificate.not_valid_after_utc.isoformat()}}  # fmt: skip

    def do_heartbeat(self, caller: Caller, job_id: int | None, body: dict[str, Any],
                     _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        """A jobagent's heartbeat extends its lease. A job token's (the payload holds it)
        only sends resource use and learns whether its job is still held: it never
        extends the lease, which would keep a job alive past its agent."""
        job = self.job(job_id)
        resubmission = int(body["resubmission"])
        if caller.role == JOBAGENT:
            held = self.store.heartbeat(job.id, self.holder_of(caller, body), resubmission,
                                        _lease(body["lease"]))  # fmt: skip
        else:
            self.own_job(caller, job, resubmission)
            held = job.state in states.LEASED
        if held and "usage" in body:
            with self._lock:
                self._usage[(job.id, resubmission)] = dict(body["usage"])
        return {"held": held}

    def do_state(self, caller: Caller, job_id: int | None, body: dict[str, Any],
                 _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        job = self.job(job_id)
        holder = self.holder_of(caller, body)
        resubmission = int(body["resubmission"])
        try:
            target = states.parse(str(body["state"]))
        except ValueError as exc:
            raise Refused(400, f"state: {exc}") from None
        try:
            self.store.set_state(job.id, holder, resubmission, target,
                                 detail=str(body.get("detail", "")),
                                 exit_code=body.get("exit_code"))  # fmt: skip
        except (LeaseError, TransitionError):
            if not self.already(job.id, holder, resubmission, target):
                raise
        return {"state": target.value}

    def already(self, job_id: int, holder: str, resubmission: int, target: State) -> bool:
        """Whether this holder's report of ``target`` is in the history already: a report
        retried because its answer was lost (a broker restart) is taken, not refused."""
        last = self.store.history(job_id)[-1]
        return (last.state is target and last.agent == holder
                and last.resubmission == resubmission)  # fmt: skip

    def do_release(self, caller: Caller, job_id: int | None, body: dict[str, Any],
                   _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        job = self.job(job_id)
        holder = self.holder_of(caller, body)
        self.store.release(
            job.id,
            holder,
            int(body["resubmission"]),
            str(body["reason"]),
            fault=bool(body.get("fault", True)),
        )
        return {"state": str(self.store.get(job.id).state)}

    # -- people --------------------------------------------------------------------------

    def do_submit(self, caller: Caller, _id: int | None, body: dict[str, Any],
                  _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        assert caller.user is not None  # user and admin tokens name their user
        try:
            spec = load_job(str(body["jdl"]), source="the submitted JDL")
        except JDLError as exc:
            raise Refused(400, str(exc).splitlines()[0][:500]) from None
        try:
            self.inputs.check_job(spec, caller.user)
        except InputRefused as exc:
            raise Refused(exc.status, str(exc)) from None
        requirements = render(spec.requirements) if spec.requirements is not None else None
        text = render_jdl(spec)
        job_id = self.store.submit(text, owner=caller.user,
                                   priority=int(body.get("priority", 0)),
                                   requirements=requirements)  # fmt: skip
        self.keep((job_id, text), spec)  # parsed now, not under the queue's lock later
        return {"id": job_id}

    def do_jobs(self, caller: Caller, _id: int | None, _body: dict[str, Any],
                query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        state = query.get("state")
        if state is not None:
            try:
                state = states.parse(state).value
            except ValueError as exc:
                raise Refused(400, f"state: {exc}") from None
        listed = self.store.jobs(state)
        if caller.role != ADMIN:
            listed = [j for j in listed if j.owner == caller.user]
        return {"jobs": [_job_view(j, jdl=False) for j in listed]}

    def do_status(self, caller: Caller, job_id: int | None, _body: dict[str, Any],
                  _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        job = self.job(job_id)
        self.own_job(caller, job)
        history = [{"time": c.time, "state": c.state.value, "resubmission": c.resubmission,
                    "agent": c.agent, "detail": c.detail, "exit_code": c.exit_code}
                   for c in self.store.history(job.id)]  # fmt: skip
        with self._lock:
            usage = self._usage.get((job.id, job.resubmission), {})
        return {"job": _job_view(job), "history": history, "usage": usage}

    def do_kill(self, caller: Caller, job_id: int | None, body: dict[str, Any],
                _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        job = self.job(job_id)
        self.own_job(caller, job)
        reason = str(body.get("reason") or f"killed by {caller.role} {caller.user}")
        self.store.kill(job.id, reason)
        return {"state": State.KILLED.value}

    def do_openapi(self, _caller: Caller, _id: int | None, _body: dict[str, Any],
                   _query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
        return openapi()


def _lease(seconds: Any) -> int:
    if not 1 <= int(seconds) <= MAX_LEASE:
        raise Refused(400, f"lease: give 1 to {MAX_LEASE} seconds")
    return int(seconds)


def _job_view(job: Job, *, jdl: bool = True) -> dict[str, Any]:
    view = {"id": job.id, "owner": job.owner, "priority": job.priority,
            "state": job.state.value, "resubmission": job.resubmission, "agent": job.agent,
            "lease_until": job.lease_until, "submitted": job.submitted,
            "exit_code": job.exit_code}  # fmt: skip
    if jdl:
        view["jdl"] = job.jdl_text
    return view
