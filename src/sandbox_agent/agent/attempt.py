"""One matched job, from the agent's side: its job token, its work directory with the
staged files placed, the JobWrapper run in the sandbox with heartbeats to the queue,
the wrapper's states relayed, the outputs kept once the sandbox is gone, one final
state reported, the work directory removed.

The agent's own token never leaves this process: the job token is made here from a
fresh key and a CSR for this job id and resubmission, signed by the authority only
while the queue says the job is leased to this agent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import SubprocessError
from typing import Any

from cryptography.hazmat.primitives import serialization

from sandbox_agent.agent import audit
from sandbox_agent.agent.backends import Backend, Placed
from sandbox_agent.agent.storage import SUCCESS_STATES, Caps, Manifest, Storage
from sandbox_agent.audit import record as records
from sandbox_agent.catalogue import CatalogueError
from sandbox_agent.images import ImageRefused
from sandbox_agent.jdl import JobSpec
from sandbox_agent.limits import workdisk
from sandbox_agent.limits.cgroups import CgroupError
from sandbox_agent.limits.monitor import StopRequest
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.queue import Job, LeaseError, State, StoreError, TransitionError, states
from sandbox_agent.runtime import binds
from sandbox_agent.runtime.containers import ContainerError
from sandbox_agent.runtime.egress import EgressError
from sandbox_agent.runtime.jobrun import (
    FINAL_FRAME_STATES,
    PROGRESS_STATES,
    JobResult,
    handoff_fields,
    run_job,
)
from sandbox_agent.runtime.launch import (
    SANDBOX_HOST_UID,
    RuntimeMissing,
    WorkdirRefused,
    check_workdir,
)
from sandbox_agent.runtime.plan import Unenforceable, environment
from sandbox_agent.runtime.workdir import remove_workdir
from sandbox_agent.seccomp.compile import CompileError
from sandbox_agent.tokens import (
    IssuanceRefused,
    JobScope,
    Token,
    TokenError,
)
from sandbox_agent.tokens.files import pem_bundle
from sandbox_agent.tokens.keys import key_pem
from sandbox_agent.tokens.request import new_job_request
from sandbox_agent.wrapper.jobwrapper import EXIT_BAD_HANDOFF

# Final states after which nothing of the payload's is saved: it never ran to an end.
NOTHING_TO_SAVE = frozenset({State.ERROR_IB, State.FAILED, State.KILLED})
STORAGE_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
MIB = 1 << 20


@dataclass
class Agent:
    """What every job of one pilot shares."""

    name: str  # unique per pilot process: the lease holder
    token: Token  # the jobagent token
    queue: Backend  # the home's queue and authority, or a broker
    storage: Storage
    work_area: Path
    lease: float
    grace: float
    interval: float = 1.0
    home_tag: str = ""  # in the names of its jobs' cgroups: whose they are on a shared node
    runtime: str = "bwrap"  # what runs the JobWrapper: bwrap, podman or docker
    runtime_binary: str | None = None  # where it was found


@dataclass
class Report:
    """What a person (or --json) is told about one job."""

    job_id: int
    resubmission: int
    state: str
    detail: str
    exit_code: int | None
    wall_seconds: float
    handed_back: bool = False
    outputs: str = ""
    manifest: Manifest | None = None
    states: list[str] = field(default_factory=list)


def cgroup_name(home_tag: str, job_id: int, resubmission: int) -> str:
    """The cgroup of one attempt: the home's tag, the job, the attempt, and a random part
    so that a retry never meets a leftover."""
    return f"job-{home_tag}-{job_id}-{resubmission}-{secrets.token_hex(4)}"


CGROUP_NAME = re.compile(r"job-([0-9a-f]{8})-([0-9]{1,18})-([0-9]{1,9})-[0-9a-f]{8}")


def workdir_name(home_tag: str, job_id: int, resubmission: int) -> str:
    """The work directory of one attempt, named like its cgroup: whose, which attempt,
    and a random part (its filesystem's image is this name plus '.disk')."""
    return f"job-{home_tag}-{job_id}.{resubmission}.{secrets.token_hex(4)}"


WORKDIR_NAME = re.compile(r"job-([0-9a-f]{8})-([0-9]{1,18})\.([0-9]{1,9})\.[0-9a-f]{8}")


class NoRoom(OSError):
    """The node's disk has not the room a job needs beside disk.reserve (ENOSPC)."""


def disk_shortfall(effective: EffectivePolicy, work_area: Path, storage: Path) -> str | None:
    """Why this node's disk cannot take the job ``effective`` describes now, or None:
    its work directory (an image of its size, allocated up front) in the work area,
    and room for its kept outputs and logs in the storage, each filesystem keeping
    the policy's disk.reserve free for the agent's queue, outputs and audit records.
    Asked at match (a job that does not fit is left for another node) and again
    before the work directory is made."""
    reserve = effective.view.disk.reserve
    size = effective.view.limits.workdir_size.value
    caps = Caps.from_policy(effective)
    needs = {"its work directory": (work_area, workdisk.image_size(size)),
             "its outputs and logs": (storage, caps.max_total + 2 * caps.max_log)}
    taken: dict[int, int] = {}  # by filesystem: the two may share one
    for what, (where, amount) in needs.items():
        while not where.exists() and where != where.parent:  # not made yet: its disk
            where = where.parent
        try:
            info = os.statvfs(where)
            device = os.stat(where).st_dev
        except OSError as exc:
            return f"cannot measure the free space of {where}: {exc.strerror}"
        taken[device] = taken.get(device, 0) + amount
        free = info.f_bavail * info.f_frsize
        if free - taken[device] < reserve:
            return (f"{where} has {free // MIB} MiB free; the job needs "
                    f"{taken[device] // MIB} MiB there ({what} included) and disk.reserve "
                    f"keeps {reserve // MIB} MiB for the agent's own state")  # fmt: skip
    return None


class NodeProblem(Exception):
    """This node cannot run jobs now (the sandbox does not start, no job token, the
    disk is full, processes outlive their kill): the job was handed back; stop."""


class NodeUnhealthy(NodeProblem):
    """A path the policy requires (filesystem.required) is missing: the job was handed
    back untouched, before anything of it was made; the site chooses whether the
    pilot waits for the path or stops."""

    def __init__(self, message: str, absent: list[binds.Absent]) -> None:
        super().__init__(message)
        self.absent = absent


# What makes a node unfit rather than a job bad.
NODE_ERRORS = (OSError, Unenforceable, RuntimeMissing, CompileError, SubprocessError,
               CgroupError, WorkdirRefused, EgressError, ContainerError)  # fmt: skip


class Attempt:
    """One job run by ``agent``; ``stop`` ends it early (the agent's SIGTERM)."""

    def __init__(self, agent: Agent, job: Job, spec: JobSpec, effective: EffectivePolicy,
                 stop: StopRequest, site: str = "local") -> None:  # fmt: skip
        self.agent = agent
        self.job = job
        self.site = site  # the Site of the slot it was matched to (ALIEN_SITE)
        self.spec = spec
        self.effective = effective
        self.stop = stop
        self.queue_state = str(job.state)
        self.frames: list[dict[str, Any]] = []  # the wrapper's status frames, as they came
        self.frames_at_stop: int | None = None
        self.lock = threading.RLock()  # the relay thread and this one both report states
        self.storage_fault = ""  # a full disk: the job is reported, then the node stops
        self.token: dict[str, Any] | None = None  # the job token, once signed
        self.result: JobResult | None = None  # the sandbox's run, once it ran
        self.final: Report | None = None  # what finish() reported, for the audit record
        self.workdir: Path | None = None  # once made, until removed
        self.removed = "none was made"  # what became of it, for the audit record
        self.disk: workdisk.WorkDisk | None = None  # the work directory's own filesystem
        # the states this agent reported to the queue, with when (the audit record's)
        self.history: list[dict[str, Any]] = [{"state": str(job.state), "time": None}]
        self.dropped: list[binds.Absent] = []  # binds left out: this node lacks them

    # -- the queue ---------------------------------------------------------------------

    def advance(self, target: str, detail: str = "", exit_code: int | None = None) -> bool:
        """Move the job to ``target`` in the queue, through the table's intermediate
        states; False when the queue no longer takes this agent's word (killed, lease
        lost) or the move is not allowed."""
        agent, job = self.agent, self.job
        with self.lock:
            try:
                route = states.path(self.queue_state, target)
                for step in route:
                    last = step == route[-1]
                    agent.queue.set_state(job, step, detail if last else "recorded by the agent",
                                          exit_code if last else None)  # fmt: skip
                    self.queue_state = str(step)
                    self.history.append({"state": str(step), "time": round(time.time(), 3)})
            except (LeaseError, TransitionError):
                return False
            except StoreError:  # the queue's file is busy or broken: the lease will tell
                return False
        return True

    def relay(self, frame: dict[str, Any]) -> None:
        """A status frame from the wrapper: its progress goes to the queue at once; its
        final word waits for the agent's verdict."""
        self.frames.append(frame)
        if self.frames_at_stop is not None:
            return  # what the wrapper does once stopped is its reaction to the stop
        if frame["state"] in PROGRESS_STATES and states.ORDER[states.parse(frame["state"])] > \
                states.ORDER[states.parse(self.queue_state)]:  # fmt: skip
            self.advance(str(frame["state"]), str(frame.get("detail", "")))

    def heartbeats(self, done: threading.Event) -> None:
        """Keep the lease from the match to the last report; a refused heartbeat (killed
        at the queue, lease lost) stops the job. A queue that stays busy past the lease
        means the lease is gone too."""
        agent, job = self.agent, self.job
        deadline = time.monotonic() + agent.lease
        while not done.wait(agent.lease / 3):
            try:
                held = agent.queue.heartbeat(job, agent.lease)
            except StoreError:
                held = time.monotonic() < deadline  # try again at the next beat
                if held:
                    continue
            if not held:
                self.stop.request("killed", agent.grace)
                return
            deadline = time.monotonic() + agent.lease

    def states(self) -> list[str]:
        return [str(frame["state"]) for frame in self.frames]

    # -- the job -------------------------------------------------------------------------

    def job_token(self) -> dict[str, Any]:
        """A fresh key and a CSR for this job and resubmission, signed by the queue's
        authority only while the job is leased to this agent."""
        job = self.job
        key, request = new_job_request(JobScope(job.id, job.resubmission, job.owner))
        certificate, chain = self.agent.queue.job_token(job, request, self.spec.ttl)
        pem = serialization.Encoding.PEM
        return {"certificate": certificate.public_bytes(pem).decode(),
                "key": key_pem(key).decode(),
                "chain": [pem_bundle([c]).decode() for c in chain]}  # fmt: skip

    def make_workdir(self) -> Path:
        """A fresh directory for the job in the work area (made by the pilot), the
        sandbox's host uid its owner when we are root (the sandbox then runs as that
        uid), checked as `sandbox exec` checks one. Where the policy wants workdir_size
        held by the kernel and this host can, it is a filesystem of that size of its own
        (limits/workdisk.py), allocated before anything runs; the work area keeps the
        policy's disk.reserve free beside it, or the job is handed back (OSError)."""
        job = self.job
        workdir = self.agent.work_area / workdir_name(self.agent.home_tag, job.id,
                                                      job.resubmission)  # fmt: skip
        owner = (SANDBOX_HOST_UID, SANDBOX_HOST_UID) if os.geteuid() == 0 else None
        short = disk_shortfall(self.effective, self.agent.work_area, self.agent.storage.directory)
        if short is not None:  # the match saw room; another job took it since
            raise NoRoom(errno.ENOSPC, short)
        self.workdir = workdir  # removed whatever happens next
        try:
            self.disk = workdisk.prepare(workdir, self.effective, owner)
        except workdisk.DiskError as exc:
            if exc.errno == errno.ENOSPC:  # another pilot on this disk took the room first
                raise NoRoom(errno.ENOSPC, str(exc)) from None
            raise
        check_workdir(workdir, self.effective)
        return workdir

    def drop_workdir(self) -> str | None:
        """Unmount and remove the work directory (once); what went wrong, or None."""
        workdir, self.workdir = self.workdir, None
        if workdir is None:
            return None
        problem = self.disk.release() if self.disk is not None else None
        problem = problem or remove_workdir(workdir)
        self.removed = f"not removed: {problem}" if problem else "removed"
        return problem

    def disk_left(self) -> bool:
        """Whether the home's output storage still has the policy's disk.reserve free."""
        where = self.agent.storage.directory
        while not where.exists() and where != where.parent:  # not made yet: its disk
            where = where.parent
        try:
            info = os.statvfs(where)
        except OSError:
            return False
        return info.f_bavail * info.f_frsize >= self.effective.view.disk.reserve


    def place_files(self, workdir: Path) -> JobSpec:
        """The catalogue files the job names, placed in its work directory under their
        base names; the spec as the wrapper must see it (staged programs as ./name)."""
        spec = self.spec
        wanted: list[Placed] = []

        def place(name: str, mode: int) -> str:
            lfn = name[3:]
            base = os.path.basename(lfn)
            wanted.append((lfn, base, mode))
            return f"./{base}"

        changes: dict[str, Any] = {}
        if spec.executable.startswith("LF:"):
            changes["executable"] = place(spec.executable, 0o755)
        if spec.validation_command and spec.validation_command.startswith("LF:"):
            changes["validation_command"] = place(spec.validation_command, 0o755)
        for item in spec.input_files:
            if item.catalogue:
                place(f"LF:{item.name}", 0o644)
        assert self.token is not None  # placed with the job's own token (from a broker)
        self.agent.queue.place_inputs(self.job, self.token, wanted, workdir)
        return dataclasses.replace(spec, **changes)

    def run(self, emit: Callable[[dict[str, Any]], None]) -> Report:
        """The whole attempt: it ends with the job in a final state or handed back, or
        with NodeProblem (the job handed back) when this node cannot run jobs now."""
        started = time.monotonic()
        job = self.job
        done = threading.Event()
        beat = threading.Thread(target=self.heartbeats, args=(done,), daemon=True)
        beat.start()  # the lease is kept from the match to the last report
        workdir: Path | None = None
        report: Report | None = None
        try:
            absent = binds.unhealthy(self.effective)
            if absent:  # before the job's token or directory: nothing of it is made
                why = binds.unhealthy_line(absent)
                self.hand_back_unfit(f"the agent could not run it: {why}", fault=False)
                raise NodeUnhealthy(f"job {job.id} was handed back: {why}", absent)
            try:
                token = self.token = self.job_token()
            except (IssuanceRefused, TokenError) as exc:
                if not self.still_ours():  # killed at the queue since the match
                    report = self.finish(State.KILLED, "killed before it started", started,
                                         report=False)
                    return report
                raise self.node_problem(f"no job token: {exc}") from None
            self.make_workdir()
            workdir = self.workdir
            assert workdir is not None
            try:
                spec = self.place_files(workdir)
            except CatalogueError as exc:
                report = self.finish(State.ERROR_IB, str(exc), started, workdir=workdir)
                return report
            if self.stop.reason is not None:  # told to stop before anything ran
                report = self.hand_back_stopped(started, workdir)
                return report
            env = dict(environment(self.effective, os.environ))
            fields = handoff_fields(spec, job.id, job.resubmission, token, env, self.effective,
                                    user=job.owner, site=self.site)  # fmt: skip
            self.dropped = binds.dropped(self.effective)
            emit({"event": "started", "job": job.id, "resubmission": job.resubmission,
                  "workdir": str(workdir),
                  "dropped_binds": [a.as_dict() for a in self.dropped]})  # fmt: skip
            cgroup = cgroup_name(self.agent.home_tag, job.id, job.resubmission)
            try:
                result = run_job(self.effective, fields, workdir, environ=os.environ,
                                 interval=self.agent.interval, stop=self.stop,
                                 runtime=self.agent.runtime, binary=self.agent.runtime_binary,
                                 on_frame=self.relay, name=cgroup,
                                 held=workdisk.held(self.disk))  # fmt: skip
            except ImageRefused as exc:
                # the image the job named fails it (any node has the same one); the site's
                # images (default, platforms) and this node's mounts fail every job here
                chose = self.effective["filesystem.image"].origin == "jdl:Image"
                if (chose or exc.job) and not exc.node:
                    report = self.finish(State.ERROR_IB, f"its image: {exc}", started,
                                         workdir=workdir)
                    return report
                raise self.node_problem(f"the site's image: {exc}") from None
            self.result = result
            report = self.conclude(result, started, workdir)
            if self.storage_fault:  # the job is reported; the next one would fare no better
                raise NodeProblem(f"job {job.id} ended {report.state}; {self.storage_fault}")
            return report
        except NoRoom as exc:  # the node's disk, not the job: no fault of the job's
            raise self.node_problem(str(exc), fault=False) from None
        except NODE_ERRORS as exc:
            raise self.node_problem(str(exc)) from None
        finally:
            done.set()
            beat.join()
            problem = self.drop_workdir()
            removed = self.removed
            if problem and report is not None:
                report.detail += f" (the work directory was not removed: {problem})"
            report = report or self.final  # a node problem after a final state has one too
            if report is not None and not report.handed_back:
                unaudited = self.write_audit(report, removed)
                if unaudited:
                    report.detail += f" ({unaudited})"

    def write_audit(self, report: Report, workdir: str) -> str:
        """Sign the attempt's audit record with the agent's key, keep it beside the
        attempt's outputs and send it where the job came from (agent/audit.py); what
        went wrong, or ""."""
        job, agent, result, manifest = self.job, self.agent, self.result, report.manifest
        token = agent.token
        try:
            record = audit.build(
                job={"id": job.id, "resubmission": job.resubmission, "owner": job.owner,
                     "state": report.state, "detail": report.detail,
                     "exit_code": report.exit_code},
                agent_name=agent.name, agent_token=token.certificate,
                job_token_pem=self.token["certificate"] if self.token else None,
                effective=self.effective, session=result.session if result else None,
                argv=result.argv if result else (), states=report.states,
                history=self.history,
                usage=dict(manifest.usage) if manifest else _usage(result),
                manifest=manifest, workdir=workdir,
                image=result.image if result else None,
                answers=result.answers if result else (),
                dropped=[a.as_dict() for a in self.dropped],
                runtime=result.runtime if result else self.agent.runtime)  # fmt: skip
            signed = records.sign(record, token.key, token.certificate, token.chain)
            where = agent.storage.attempt(job.id, job.resubmission)
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            records.write(where / records.RECORD, signed)
        except (OSError, ValueError) as exc:  # AuditError is a ValueError
            return f"no audit record: {exc}"
        try:
            agent.queue.keep_audit(job, (where / records.RECORD).read_bytes())
        except (StoreError, OSError) as exc:
            return f"the audit record is kept on this node only: {exc}"
        return ""

    def still_ours(self) -> bool:
        return self.agent.queue.holds(self.job)  # cannot tell: the node's problem

    def node_problem(self, why: str, *, fault: bool = True) -> NodeProblem:
        self.hand_back_unfit(f"the agent could not run it: {why}", fault=fault)
        return NodeProblem(f"job {self.job.id} was handed back: {why}")

    def conclude(self, result: JobResult, started: float, workdir: Path) -> Report:
        """The final state from the agent's view of the run, the outputs kept."""
        outcome = result.session
        reason = outcome.outcome.reason if outcome else None
        stopped = reason in ("killed", "stopped")  # then a sandbox cut short is no fault
        if outcome is not None and not outcome.payload_ran and not stopped:
            raise self.node_problem("the sandbox failed before the wrapper ran"
                                    + _last_said(result))  # fmt: skip
        if not result.states and result.exit_code is None and not stopped and \
                outcome is not None and outcome.outcome.returncode == EXIT_BAD_HANDOFF:  # fmt: skip
            raise self.node_problem("the wrapper could not start" + _last_said(result))
        if outcome is not None and outcome.teardown and not outcome.teardown.emptied:
            self.finish(State.FAILED, "processes of the job survived its kill: "
                        + outcome.teardown.summary(), started, workdir=workdir,
                        result=result)  # fmt: skip
            left = outcome.teardown.summary()
            raise NodeProblem(f"job {self.job.id}: processes survived the kill ({left}); "
                              "this node needs a look")  # fmt: skip
        if outcome is not None and outcome.container_left:  # its processes may run on
            self.finish(State.FAILED, "its container could not be removed: "
                        + outcome.container_left, started, workdir=workdir,
                        result=result)  # fmt: skip
            raise NodeProblem(f"job {self.job.id}: its container could not be removed "
                              f"({outcome.container_left}); this node needs a look")  # fmt: skip
        if reason == "killed":  # the queue already says KILLED: keep the logs only
            return self.finish(State.KILLED, result.detail, started, workdir=workdir,
                               result=result, report=False)  # fmt: skip
        if reason == "stopped":
            before = self.frames[: self.frames_at_stop]
            finals = [f for f in before if f["state"] in FINAL_FRAME_STATES]
            if not finals:
                return self.hand_back_stopped(started, workdir, result=result)
            said = finals[-1]  # the wrapper had finished before the stop: that stands
            return self.finish(str(said["state"]), str(said.get("detail", "")), started,
                               exit_code=said.get("exit_code"), workdir=workdir,
                               result=result)  # fmt: skip
        return self.finish(result.state, result.detail, started, exit_code=result.exit_code,
                           workdir=workdir, result=result)  # fmt: skip

    # Two ways a job goes back to the queue before its end, both "handed back" (as the
    # NodeProblem and the pilot's "handed_back" event say): this node cannot run it now
    # (hand_back_unfit), or the agent was told to stop (hand_back_stopped).

    def hand_back_unfit(self, reason: str, *, fault: bool = True) -> None:
        """Return the job to the queue at once (this node cannot run it now), rather than
        leave it to wait out its lease; a ``fault`` counts against the job."""
        agent, job = self.agent, self.job
        with self.lock, contextlib.suppress(StoreError, TransitionError):  # the lease decides
            agent.queue.release(job, reason[:500], fault=fault)

    def hand_back_stopped(self, started: float, workdir: Path, *,
                          result: JobResult | None = None) -> Report:  # fmt: skip
        """The agent was told to stop before the job ended: return it to the queue, not
        counted against it, its logs kept. A job already SAVING is not returned (a rerun
        would mix two attempts' outputs): it ends KILLED, as does one whose lease was
        lost meanwhile."""
        agent, job = self.agent, self.job
        with self.lock:
            try:
                agent.queue.release(job, "the agent was told to stop", fault=False)
            except TransitionError:  # SAVING: a rerun would mix two attempts' outputs
                pass
            except LeaseError:
                return self.finish(State.KILLED, "the lease was lost while stopping", started,
                                   workdir=workdir, result=result, report=False)  # fmt: skip
            else:
                self.agent.storage.save(job.id, job.resubmission, State.WAITING, workdir, (),
                                        result.wrapper_log if result else b"",
                                        caps=Caps.from_policy(self.effective),
                                        wrapper_log_size=result.wrapper_log_size if result
                                        else 0)  # fmt: skip
                return Report(job.id, job.resubmission, State.WAITING,
                              "handed back to the queue: the agent was told to stop", None,
                              time.monotonic() - started, handed_back=True,
                              states=self.states())  # fmt: skip
        return self.finish(State.KILLED, "the agent was told to stop while the job was saving",
                           started, workdir=workdir, result=result)  # fmt: skip

    def finish(self, state: str, detail: str, started: float, *, exit_code: int | None = None,
               workdir: Path | None = None, result: JobResult | None = None,
               report: bool = True) -> Report:  # fmt: skip
        """Keep what the final state says to keep, then report that state: its outputs
        (or OutputErrorE) and logs from ``workdir``, the wrapper's log from ``result``;
        with ``report`` False the queue is not told (it knows already)."""
        job, spec = self.job, self.spec
        manifest = None
        if workdir is not None:
            if state not in NOTHING_TO_SAVE and report:
                self.advance(State.SAVING, "the agent collects the outputs")
            entries = () if state in NOTHING_TO_SAVE else (
                spec.outputs if state in SUCCESS_STATES else spec.output_errors)  # fmt: skip
            log = result.wrapper_log if result else b""
            caps = Caps.from_policy(self.effective)
            try:
                manifest = self.agent.storage.save(
                    job.id, job.resubmission, state, workdir, entries, log, usage=_usage(result),
                    caps=caps, wrapper_log_size=result.wrapper_log_size if result else 0)
            except OSError as exc:
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                if full:
                    # the job's own files may be what filled the disk: they go first, so
                    # that its end can still be recorded in the queue and the audit record
                    self.drop_workdir()
                outgrew = result is not None and result.session is not None and \
                    result.session.outcome.reason == "workdir_size"  # fmt: skip
                if state in NOTHING_TO_SAVE or (full and outgrew):
                    # only the logs were lost (a job that outgrew its work directory
                    # filled the disk itself): the state stands, with why
                    detail += f" (its logs could not be kept: {exc.strerror})"
                else:
                    state, detail = State.ERROR_SV, f"the outputs could not be stored: {exc}"
                if exc.errno in STORAGE_FAULTS and not (full and self.disk_left()):
                    # a disk still full without the job's files, or a broken one: the
                    # next job would fare no better; a job that filled it stops nothing
                    self.storage_fault = f"the output storage failed: {exc}"
            else:
                if manifest.refused and state in SUCCESS_STATES:
                    state, detail = State.ERROR_SV, f"an output was refused: {manifest.refused[0]}"
                    self.agent.storage.record_state(job.id, job.resubmission, state)
                if state not in NOTHING_TO_SAVE and report and self.token is not None:
                    state, detail = self.send(manifest, state, detail)
        if report and not self.advance(state, detail, exit_code):
            detail = f"{detail} (the queue no longer took this agent's report)"
        where = str(self.agent.storage.attempt(job.id, job.resubmission)) if manifest else ""
        self.final = Report(job.id, job.resubmission, state, detail, exit_code,
                            time.monotonic() - started, outputs=where, manifest=manifest,
                            states=self.states())  # fmt: skip
        return self.final

    def send(self, manifest: Manifest, state: str, detail: str) -> tuple[str, str]:
        """The kept files to where their owner fetches them (a broker; the home's own
        storage needs nothing sent); a failure to send is ERROR_SV for a success."""
        job = self.job
        where = self.agent.storage.attempt(job.id, job.resubmission)
        kept = [(f"outputs/{item['name']}", where / str(item["stored"])) for item in manifest.files]
        kept += [(f"logs/{name}", where / "logs" / name) for name in manifest.logs]
        assert self.token is not None
        try:
            self.agent.queue.keep(job, self.token, kept)
        except StoreError as exc:
            if state in SUCCESS_STATES:
                state, detail = State.ERROR_SV, str(exc)
                self.agent.storage.record_state(job.id, job.resubmission, state)
            else:
                detail += f" ({exc})"
        return state, detail

    def stopping(self) -> None:
        """The agent was told to stop: remember what the wrapper had said by then."""
        if self.frames_at_stop is None:
            self.frames_at_stop = len(self.frames)
        self.stop.request("stopped", self.agent.grace)


def _last_said(result: JobResult) -> str:
    """The last line the wrapper (or bwrap before it) wrote on stderr, for the reason."""
    lines = result.wrapper_log.decode(errors="replace").strip().splitlines()
    return f": {lines[-1][:300]}" if lines else ""


def _usage(result: JobResult | None) -> dict[str, Any]:
    """The job's resource use, for `status`: wall time, and what the cgroup counted."""
    if result is None or result.session is None:
        return {}
    outcome = result.session.outcome
    used: dict[str, Any] = {"wall_seconds": round(outcome.wall_seconds, 3)}
    if outcome.reason:
        used["kill_reason"] = outcome.reason
    if outcome.usage is not None:
        used.update({k: v for k, v in dataclasses.asdict(outcome.usage).items() if v is not None})
    used.update({f"{name}_peak": value for name, value in outcome.peaks.items()})
    return used
