"""The pilot loop (JobAgent): describe the slot, match the best job it can run, run it
in the sandbox, report, and go on while there is time and work.

It stops when the queue gives nothing twice in a row, when the time left is under
what every waiting job needs, after --max-jobs or --once, or on SIGTERM/SIGINT: the
running job then gets SIGTERM, a grace period and the kill, and is handed back to the
queue unless it had already finished. A second signal stops at once (the job is
killed and its cgroup removed; the lease returns the job).

The time left is capped by the jobagent token's validity (less a margin for a job's
end): a pilot on a broker renews its token there between jobs, never during one (its
leases are held in the name of its certificate), and says so when its token is why it
takes no work.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from sandbox_agent.agent import slot as slots
from sandbox_agent.agent.attempt import (
    CGROUP_NAME,
    NODE_ERRORS,
    WORKDIR_NAME,
    Agent,
    Attempt,
    NodeProblem,
    NodeUnhealthy,
    Report,
    disk_shortfall,
)
from sandbox_agent.agent.backends import Backend, BrokerQueue, LocalQueue
from sandbox_agent.agent.storage import Storage
from sandbox_agent.broker.client import BrokerClient, BrokerError
from sandbox_agent.catalogue import Catalogue, CatalogueError
from sandbox_agent.images import prepare
from sandbox_agent.jdl import JDLError, JobSpec, Slot, load_job
from sandbox_agent.jdl.fit import refusal
from sandbox_agent.limits import workdisk
from sandbox_agent.limits.cgroups import CgroupError, discover
from sandbox_agent.limits.monitor import StopRequest
from sandbox_agent.policy import Policy, PolicyRejection, compose
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.printable import clipped
from sandbox_agent.queue import Job, Store
from sandbox_agent.runtime import binds, containers
from sandbox_agent.runtime.agentproc import harden, raise_terminated, signals_handled
from sandbox_agent.runtime.launch import SANDBOX_HOST_UID
from sandbox_agent.runtime.workdir import remove_workdir
from sandbox_agent.selftest.probe_in_sandbox import SelftestError, preflight_attacks, run_probe
from sandbox_agent.tokens import (
    Role,
    Token,
    TokenAuthority,
    TokenError,
    TokenVerifier,
    files,
    fingerprint,
)
from sandbox_agent.tokens.certificates import CLOCK_SKEW
from sandbox_agent.tokens.keys import key_pem, same_key
from sandbox_agent.tokens.local import ensure_authority

EMPTY_MATCHES_TO_STOP = 2
SPEC_CACHE = 10_000  # parsed JDLs kept between matches
RENEW_FRACTION = 0.5  # a token with less than this part of its lifetime left is renewed
# ... and one with less than this left when no job fits the time it leaves (a fresher one
# would gain little from a renewal)
RENEW_IF_SHORT = 0.9
# The token limits the slot when it leaves less than this part of the pilot's own time
# (a fresh token as long-lived as the pilot's --ttl is no limit worth naming)
TOKEN_SHORT = 0.9
RENEW_RETRY = 60.0  # seconds before a renewal the broker could not answer is tried again


@dataclass
class PilotConfig:
    home: Path
    policy: Policy
    ttl: int = slots.DEFAULT_TTL
    max_jobs: int | None = None
    once: bool = False
    lease: float = 120.0
    grace: float = 10.0
    poll: float = 1.0  # seconds between two matches that found nothing
    interval: float = 1.0  # the monitor's
    work_area: Path | None = None
    # a broker instead of the home's queue: its client, and this agent's token (the
    # client certificate) with the CA it is checked against
    broker: BrokerClient | None = None
    broker_token: tuple[Path, Path, Path] | None = None  # cert, key, CA
    runtime: str = "bwrap"  # what runs the JobWrapper: bwrap, podman or docker
    runtime_binary: str | None = None  # where it was found (runtime.choose)
    # seconds of the jobagent token's validity kept back from every slot: a job's end,
    # its outputs and its reports are the agent's, with its token, after the job's TTL
    token_margin: int = slots.TOKEN_MARGIN
    # a path filesystem.required names is missing: "stop" (exit 3, for a batch slot
    # or a unit that restarts) or "wait" until it is back (a long-lived pilot)
    when_unhealthy: str = "stop"


@dataclass(frozen=True)
class RenewalFailure:
    """Why the broker did not renew a token (said once per token)."""

    fingerprint: str  # of the token it was asked for
    reason: str
    final: bool  # the broker refused (not asked again for this token); else retried
    when: float  # time.monotonic()


class PilotError(Exception):
    """The pilot cannot start: one line with the fix."""


class Pilot:
    def __init__(self, config: PilotConfig, emit: Callable[[dict[str, Any]], None]) -> None:
        self.config = config
        self.emit = emit
        self.started = time.monotonic()
        self.stopping: str | None = None  # the signal's name, once told to stop
        self.current: Attempt | None = None
        self.woken = threading.Event()  # a stop cuts the wait between matches short
        self._specs: dict[tuple[int, str], JobSpec | str] = {}
        # job id -> the policy's refusal, or the job's effective policy
        self._rejected: dict[int, str | EffectivePolicy] = {}
        self.renewal_failure: RenewalFailure | None = None

    # -- set-up ------------------------------------------------------------------------

    def agent(self, store: Store | None) -> Agent:
        home = self.config.home
        if store is None:
            token = broker_token(self.config.broker_token)
        else:
            authority, token = jobagent_token(home / "certs")
        digest = fingerprint(token.certificate).removeprefix("sha256:")[:12]
        name = f"{socket.gethostname()}-{os.getpid()}-{digest}"
        queue: Backend
        if store is None:
            assert self.config.broker is not None and self.config.broker_token is not None
            queue = BrokerQueue(self.config.broker, name, self.config.broker_token[2])
        else:
            try:
                catalogue = Catalogue(home / "catalogue")
            except CatalogueError as exc:
                raise PilotError(str(exc)) from None
            queue = LocalQueue(store, authority, token, home / "certs", name, catalogue)
        work_area = (self.config.work_area or home / "work").absolute()
        prepare.keep_hashes_in(home / "cache" / "image-hashes.json")  # across pilot runs
        try:
            made = make_work_area(work_area)
        except OSError as exc:
            raise PilotError(f"{work_area}: cannot make the work area: {exc.strerror}; give "
                             "--work-area a directory this user can write") from None  # fmt: skip
        if made is not None:
            raise PilotError(f"{work_area}: {made}")
        blocked = unreachable(work_area)
        if blocked is not None:
            raise PilotError(
                f"{work_area}: as root the sandbox runs as uid {SANDBOX_HOST_UID}, which cannot "
                f"reach it ({blocked} is not searchable by others); give --work-area on a path "
                "it can reach, such as /var/tmp/sandbox-agent"
            )
        tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]
        return Agent(name, token, queue, Storage(home / "outputs"), work_area,
                     self.config.lease, self.config.grace, self.config.interval, tag,
                     self.config.runtime, self.config.runtime_binary)  # fmt: skip

    def ttl_left(self, token: Token) -> int:
        """The configured lifetime left, capped by the jobagent token's validity."""
        mine, token_left = self.time_left(token)
        return int(max(0.0, min(mine, token_left)))

    def time_left(self, token: Token) -> tuple[float, float]:
        """Seconds this pilot may still run jobs for, and seconds its token leaves a
        job (its validity less the margin kept back for a job's end)."""
        mine = self.config.ttl - (time.monotonic() - self.started)
        valid = (token.certificate.not_valid_after_utc - datetime.now(UTC)).total_seconds()
        return mine, valid - self.config.token_margin

    def token_file(self) -> Path:
        """Where the pilot's jobagent token came from."""
        if self.config.broker_token is not None:
            return self.config.broker_token[0]
        return files.cert_path(self.config.home / "certs", "jobagent")

    def job_spec(self, job: Job) -> JobSpec | str:
        """The job's spec, or why it cannot be read (cached: match asks again)."""
        key = (job.id, job.jdl_text)
        if key not in self._specs:
            if len(self._specs) >= SPEC_CACHE:  # a long-lived pilot sees many jobs
                self._specs.clear()
                self._rejected.clear()
            try:
                self._specs[key] = load_job(job.jdl_text, source=f"job {job.id}")
            except JDLError as exc:
                self._specs[key] = f"its JDL does not parse: {exc}"
        return self._specs[key]

    def refusal(self, job: Job, slot: Slot, agent: Agent | None = None) -> str | None:
        """Why this slot cannot run ``job``, or None. The policy's verdict does not
        change while the pilot runs: it is worked out once per job (match asks under
        the queue's write lock). The room on ``agent``'s disk does, so it is measured
        each time: a job too big for it now is left to another node, never started to
        be handed back (attempt.disk_shortfall)."""
        spec = self.job_spec(job)
        if isinstance(spec, str):
            return spec
        why = refusal(spec, slot)
        if why is not None:
            return why
        if job.id not in self._rejected:
            try:
                self._rejected[job.id] = self.compose(spec)
            except PolicyRejection as exc:
                self._rejected[job.id] = f"the policy rejects it: {exc}"
        verdict = self._rejected[job.id]
        if isinstance(verdict, str):
            return verdict
        if agent is None:
            return None
        short = disk_shortfall(verdict, agent.work_area, agent.storage.directory)
        return f"not on this node's disk now: {short}" if short else None

    def fits(self, offered: Slot, agent: Agent) -> Callable[[Job], str | None]:
        return lambda job: self.refusal(job, offered, agent)

    def compose(self, spec: JobSpec) -> EffectivePolicy:
        return compose(self.config.policy, spec, credentials=self.credentials())

    def credentials(self) -> list[str]:
        """The agent's own secrets, which no bind may reach: the home's authority and
        token, and with a broker the jobagent token and key it was given (anywhere)."""
        paths = [str(self.config.home / "certs")]
        if self.config.broker_token is not None:
            cert, key, _ca = self.config.broker_token
            paths += [str(cert), str(key)]
        return paths

    # -- signals -------------------------------------------------------------------------

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT: stop after the current job (handed back unless finished); a
        second one: stop now."""
        stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

        def handler(signum: int, _frame: object) -> None:
            if self.stopping is not None:
                raise_terminated(stops, signum)
            self.stopping = signal.Signals(signum).name
            self.woken.set()
            if self.current is not None:
                self.current.stopping()

        with signals_handled(stops, handler):
            yield

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> str:
        """Run jobs until there is nothing (more) to do; why it stopped."""
        harden()  # undumpable (the payload's uid may be ours), a subreaper
        with contextlib.ExitStack() as stack:
            store = None
            if self.config.broker is None:
                store = stack.enter_context(Store(self.config.home / "queue"))
            stack.enter_context(self.signals())
            return self.loop(self.agent(store))

    def loop(self, agent: Agent) -> str:
        """Match and run jobs while there is time and work; why it stopped."""
        self.emit({"event": "agent", "name": agent.name, "home": str(self.config.home),
                   "work_area": str(agent.work_area), "token": str(self.token_file()),
                   "token_expires": agent.token.certificate.not_valid_after_utc.isoformat(),
                   "runtime": agent.runtime,
                   "swept_containers": sweep_containers(agent),
                   "swept_cgroups": sweep_cgroups(agent),
                   "swept_workdirs": sweep_workdirs(agent)})  # fmt: skip
        self.preflight(agent)
        ran = empty = 0
        forced = False  # a renewal was asked for since the last match that found a job
        while True:
            if self.stopping:
                return f"stopped by {self.stopping}"
            if self.config.max_jobs is not None and ran >= self.config.max_jobs:
                return f"ran {ran} job(s), the --max-jobs given"
            waited = self.until_healthy(agent)
            if waited is not None:
                return waited
            if renewal_due(agent.token.certificate, datetime.now(UTC)):
                self.renew(agent)  # between jobs: no lease is held in the old token's name
            mine, token_left = self.time_left(agent.token)
            left = int(max(0.0, min(mine, token_left)))
            try:
                offered = slots.describe(self.config.home, agent.work_area, left)
                if "GPUs" in offered and not binds_gpus(self.config.policy):
                    offered = Slot({**offered, "GPUs": 0})  # none reaches a job here
            except ValueError as exc:  # the site's slot.toml, edited while we run
                raise PilotError(str(exc)) from None
            # the token, not the pilot's --ttl or the site's TTL, is what limits the slot
            capped = token_left < mine * TOKEN_SHORT and offered.get("TTL") == left
            if capped and left == 0 and (forced or not self.renew(agent)):
                return self.token_line(agent, offered, "no job can run in the time")
            if capped and left == 0:
                forced = True
                continue
            job = agent.queue.match(offered, self.fits(offered, agent), agent.lease)
            if job is None:
                worn = renewal_due(agent.token.certificate, datetime.now(UTC), RENEW_IF_SHORT)
                if capped and worn and not forced:  # a job may need more time: a fresh token
                    forced = True
                    if self.renew(agent):
                        continue
                empty += 1
                if empty >= EMPTY_MATCHES_TO_STOP or self.config.once:
                    return self.nothing_to_do(agent, offered, capped=capped)
                self.woken.wait(self.config.poll)
                continue
            empty = 0
            forced = False
            self.emit({"event": "matched", "job": job.id, "resubmission": job.resubmission,
                       "ttl_left": left})  # fmt: skip
            report = self.run_one(agent, job, offered)
            if report is None:  # handed back untouched: the node is unhealthy; wait
                continue
            self.emit(report_event(report))
            ran += 1
            if self.config.once:
                return "ran one job, as --once asks"

    def preflight(self, agent: Agent) -> None:
        """The canary part of the selftest (credentials, the agent's processes, inherited
        descriptors, the network) in this pilot's sandbox, before any job is asked
        for: a pilot that cannot prove isolation takes no work (PilotError, exit 3).
        What the policy grants (network.mode = "host": the node's network) is no leak:
        the event lists it under "granted", and the pilot takes work."""
        keys = [str(path) for path in self.config.broker_token[:2]] if self.config.broker_token \
            else []  # fmt: skip
        try:
            outcome = run_probe(self.config.policy, certs=self.config.home / "certs",
                                credentials=self.credentials(), work_area=agent.work_area,
                                home_tag=agent.home_tag, attacks=preflight_attacks(),
                                key_paths=keys, runtime=agent.runtime,
                                binary=agent.runtime_binary)  # fmt: skip
        except (SelftestError, PolicyRejection, ValueError, *NODE_ERRORS) as exc:
            raise PilotError(f"preflight: cannot run the probe ({exc}); a pilot that cannot "
                             "prove isolation takes no work") from None  # fmt: skip
        self.emit({"event": "preflight", "attacks": len(outcome.rows),
                   "leaked": outcome.leaked, "granted": outcome.granted,
                   "seconds": round(outcome.seconds, 2)})  # fmt: skip
        broken = [r for r in outcome.rows if r.detail.startswith("probe error")]
        if broken:
            said = clipped(broken[0].detail, 300)
            raise PilotError(f"preflight: the probe failed on {broken[0].attack} ({said}); a "
                             "pilot that cannot prove isolation takes no work")  # fmt: skip
        if outcome.leaked:
            first = next((r for r in outcome.rows if r.result == "LEAKED"), None)
            fix = f"; expected defence: {first.defence}" if first else ""
            # what leaked is the probe's (the payload's) word: one printable line of it
            said = clipped(outcome.leaked[0], 300)
            raise PilotError(f"preflight: the sandbox leaked ({said}{fix}); this "
                             "pilot takes no work until that is fixed; `sandbox-agent selftest "
                             f"--policy {self.config.policy.name}` shows every attack")  # fmt: skip

    def until_healthy(self, agent: Agent) -> str | None:
        """None once every path the policy requires (filesystem.required) is here. While
        one is missing: with --when-unhealthy stop, PilotError (exit 3) naming it; with
        wait, one event, the paths looked at again every poll, and another event when
        they are back; why the pilot stopped instead (a signal, its time)."""
        absent = binds.unhealthy(self.config.policy)
        if not absent:
            return None
        line = binds.unhealthy_line(absent)
        if self.config.when_unhealthy != "wait":
            raise PilotError(f"{line}; the pilot stops (--when-unhealthy stop)")
        self.emit({"event": "unhealthy", "reason": line,
                   "absent": [a.as_dict() for a in absent]})  # fmt: skip
        began = time.monotonic()
        while absent:
            if self.stopping:
                return f"stopped by {self.stopping} while the node was unhealthy"
            if self.time_left(agent.token)[0] <= 0:
                return f"its time ran out while the node was unhealthy ({line})"
            self.woken.wait(self.config.poll)
            absent = binds.unhealthy(self.config.policy)
        self.emit({"event": "healthy", "waited_seconds": round(time.monotonic() - began, 1)})
        return None

    def run_one(self, agent: Agent, job: Job, offered: Slot) -> Report | None:
        """The job's attempt to its end; None when it went back untouched because the
        node is unhealthy and the pilot waits (until_healthy)."""
        spec = self.job_spec(job)
        assert not isinstance(spec, str)  # match only hands out jobs that parse
        site = offered.get("Site", "local")
        attempt = Attempt(agent, job, spec, self.compose(spec), StopRequest(),
                          site=site if isinstance(site, str) else str(site))  # fmt: skip
        self.current = attempt
        try:
            if self.stopping:  # the signal came between the match and now
                attempt.stopping()
            return attempt.run(self.emit)
        except NodeUnhealthy as exc:  # back untouched; the site chose to wait or stop
            if self.config.when_unhealthy != "wait":
                raise PilotError(f"{exc}; the pilot stops (--when-unhealthy stop)") from None
            return None
        except NodeProblem as exc:  # the job went back at once; this node stops
            raise PilotError(str(exc)) from None
        finally:
            self.current = None
            attempt.stop.close()

    def nothing_to_do(self, agent: Agent, offered: Slot, *, capped: bool = False) -> str:
        """Why the pilot stops for want of work, in one line; when its token's time
        left is the cause (``capped``: the token limits the slot's TTL), the line names
        the token, when it expires and the fix."""
        queue = agent.queue
        waiting = queue.waiting()
        if waiting is None:
            if capped:  # the broker's queue is hidden: the token may be why
                return self.token_line(agent, offered,
                                       f"the broker {queue.where} has no job this slot can "
                                       "run in the time")  # fmt: skip
            return f"the broker {queue.where} has no job this slot can run"
        if not waiting:
            return "the queue has no waiting job"
        reasons = [f"job {j.id}: {self.refusal(j, offered, agent)}" for j in waiting[:3]]
        more = f" (and {len(waiting) - 3} more)" if len(waiting) > 3 else ""
        line = (f"{len(waiting)} waiting job(s) this slot cannot run{more}: "
                + "; ".join(reasons))  # fmt: skip
        if capped and self.token_is_why(agent, offered, waiting):
            return self.token_line(agent, offered, f"{line}; they could run, but not in the time")
        return line

    def token_is_why(self, agent: Agent, offered: Slot, waiting: list[Job]) -> bool:
        """Whether a waiting job would fit the slot if the token did not cap its TTL."""
        mine, _token_left = self.time_left(agent.token)
        try:
            uncapped = slots.describe(self.config.home, agent.work_area, int(max(0.0, mine)))
        except ValueError:
            return False
        return any(self.refusal(job, offered, agent) is not None
                   and self.refusal(job, uncapped, agent) is None
                   for job in waiting)  # fmt: skip

    def token_line(self, agent: Agent, offered: Slot, lead: str) -> str:
        """``lead`` (ending in "the time"), then which token limits the slot, when it
        expires, and the fix: one line."""
        certificate = agent.token.certificate
        subject = certificate.subject.rfc4514_string() or "no subject"
        line = (f"{lead} the jobagent token {self.token_file()} leaves ({offered.get('TTL')} s): "
                f"it ({subject}, serial {certificate.serial_number:x}) expires at "
                f"{_stamp(certificate.not_valid_after_utc)}, and {self.config.token_margin} s "
                "of it are kept back for a job's end")  # fmt: skip
        failure = self.renewal_failure
        if self.config.broker is None:
            return (f"{line}; give this pilot a new or longer-lived one in its place (remove "
                    "the old pair, then: sandbox-agent certs issue --role jobagent --ttl SECONDS "
                    f"--out {self.token_file().parent})")  # fmt: skip
        if failure is not None and failure.fingerprint == fingerprint(certificate):
            return (f"{line}; the broker did not renew it ({failure.reason}); give this pilot "
                    "a new or longer-lived jobagent token")  # fmt: skip
        return (
            f"{line}; the broker renews it for as long as it renews tokens (broker serve "
            "--agent-token-lifetime): a longer lifetime there, or a longer-lived token, lets "
            "longer jobs run"
        )

    # -- renewal ---------------------------------------------------------------------------

    def renew(self, agent: Agent) -> bool:
        """Ask the broker for a new jobagent token (between jobs only: a lease is held
        in the name of the token that matched it). On success the pilot shows the new
        token from its next request on and writes it back to its file; on failure it
        keeps its token and says so once for that token. Whether it has a new token."""
        client, given = self.config.broker, self.config.broker_token
        if client is None or given is None:
            return False  # the home's own queue: its token is the site's to replace
        old = agent.token
        failure = self.renewal_failure
        if failure is not None and failure.fingerprint == fingerprint(old.certificate) and \
                (failure.final or time.monotonic() - failure.when < RENEW_RETRY):  # fmt: skip
            return False
        try:
            token = renewed_token(old, client.renew(), given[2])
            client.present(files.pem_bundle([token.certificate, *token.chain]),
                           key_pem(token.key))  # fmt: skip
        except BrokerError as exc:  # a refusal (4xx, a TLS alert about this token) is final
            # for this token; unreachable, busy or its own failure (5xx): tried again later
            refused = not exc.transient and not (exc.status is not None and exc.status >= 500)
            return self.renewal_failed(old, clipped(str(exc), 300), final=refused)
        except (TokenError, ValueError, KeyError, TypeError) as exc:
            return self.renewal_failed(old, f"the broker's answer is not a usable jobagent "
                                       f"token: {clipped(str(exc), 300)}", final=True)  # fmt: skip
        try:
            files.replace_certificate(given[0], old.certificate, token)
            unwritten = ""
        except (TokenError, OSError) as exc:  # the pilot goes on with it in memory
            unwritten = clipped(str(exc) if isinstance(exc, TokenError) else
                                f"{given[0]}: {exc.strerror or exc}", 300)  # fmt: skip
        agent.token = token
        self.renewal_failure = None
        certificate = token.certificate
        event: dict[str, Any] = {
            "event": "renewed", "token": str(given[0]), "serial": f"{certificate.serial_number:x}",
            "fingerprint": fingerprint(certificate), "replaces": fingerprint(old.certificate),
            "expires": certificate.not_valid_after_utc.isoformat(),
            "was_to_expire": old.certificate.not_valid_after_utc.isoformat(),
            "written": not unwritten,
        }  # fmt: skip
        if unwritten:
            event["not_written"] = unwritten
        self.emit(event)
        return True

    def renewal_failed(self, old: Token, reason: str, *, final: bool) -> bool:
        """Keep the old token; say why once for it. Always False."""
        known = self.renewal_failure
        said = known is not None and known.fingerprint == fingerprint(old.certificate)
        self.renewal_failure = RenewalFailure(fingerprint(old.certificate), reason, final,
                                              time.monotonic())  # fmt: skip
        if not said:
            self.emit({"event": "renewal_failed", "token": str(self.token_file()),
                       "reason": reason, "final": final,
                       "expires": old.certificate.not_valid_after_utc.isoformat()})  # fmt: skip
        return False


def binds_gpus(policy: Policy) -> bool:
    """Whether jobs under ``policy`` get GPUs: a slot offers none it never binds."""
    return policy.value("devices.gpu") != "none" or any(
        os.path.basename(str(i.value)).startswith("nvidia") for i in policy["devices.paths"].value
    )


def sweep_containers(agent: Agent) -> list[str]:
    """Remove the containers of agents that are gone (killed mid-job: the engine ran
    them on); a live agent's, and the engine's others, are never touched."""
    if agent.runtime not in ("docker", "podman"):
        return []
    return containers.sweep(agent.runtime_binary or agent.runtime, environ=os.environ)


def sweep_cgroups(agent: Agent) -> list[str]:
    """Remove the empty cgroups this home's earlier attempts left (their agent was
    killed and could not): those of attempts the queue no longer leases. Another home's,
    and a live attempt's, are never touched."""
    try:
        hierarchy = discover()
    except CgroupError:
        return []

    def stale(name: str) -> bool:
        match = CGROUP_NAME.fullmatch(name)
        if match is None or match.group(1) != agent.home_tag:
            return False
        # a dead agent's lease ends first (as a match would); cannot tell: keep it
        return agent.queue.leased(int(match.group(2)), int(match.group(3))) is False

    return hierarchy.sweep(stale)


def sweep_workdirs(agent: Agent) -> list[str]:
    """Unmount and remove the work directories (and their filesystems' images) this
    home's earlier attempts left when their agent was killed: those of attempts the
    queue no longer leases. Another home's, and a live attempt's, are never touched."""
    swept = []
    try:
        entries = sorted(os.listdir(agent.work_area))
    except OSError:
        return []
    for name in entries:
        match = WORKDIR_NAME.fullmatch(name.removesuffix(".disk"))
        if match is None or match.group(1) != agent.home_tag:
            continue
        if agent.queue.leased(int(match.group(2)), int(match.group(3))) is not False:
            continue  # live, or cannot tell: keep it
        workdir = agent.work_area / name.removesuffix(".disk")
        problem = workdisk.sweep(workdir)
        if problem is None and workdir.is_dir() and not workdir.is_symlink():
            problem = remove_workdir(workdir)
        if workdir.name not in swept:
            swept.append(workdir.name if problem is None else f"{workdir.name}: {problem}")
    return swept


def renewal_due(
    certificate: x509.Certificate, now: datetime, fraction: float = RENEW_FRACTION
) -> bool:
    """Whether a token has less than ``fraction`` of its lifetime left. Its lifetime
    runs from when it was issued: the authority sets notBefore CLOCK_SKEW earlier."""
    issued = min(certificate.not_valid_before_utc + CLOCK_SKEW, now)
    end = certificate.not_valid_after_utc
    return end - now < (end - issued) * fraction


def renewed_token(old: Token, answer: dict[str, Any], ca: Path) -> Token:
    """The broker's renewal of ``old`` as a token, checked as the pilot checked its
    first: a jobagent token of the CA for the same key, and one that lives longer.
    Raises TokenError, ValueError, KeyError or TypeError."""
    certificate = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
    chain = tuple(x509.load_pem_x509_certificate(str(c).encode()) for c in answer["chain"])
    TokenVerifier(files.load_certificates(ca)).verify(certificate, chain, role=Role.JOBAGENT)
    if not same_key(old.key, certificate):
        raise ValueError("it is not for this pilot's key")
    if certificate.not_valid_after_utc <= old.certificate.not_valid_after_utc:
        raise ValueError(f"it expires at {_stamp(certificate.not_valid_after_utc)}, no later "
                         "than the token it would replace")  # fmt: skip
    return Token(certificate, chain, old.key)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def broker_token(files_given: tuple[Path, Path, Path] | None) -> Token:
    """The jobagent token this pilot shows a broker, checked as the broker will check it
    (a user's token, or one of another CA, is refused here in one line)."""
    assert files_given is not None
    cert, key, ca = files_given
    try:
        token = files.load_token(cert, key)
        TokenVerifier(files.load_certificates(ca)).verify(token.certificate, token.chain,
                                                          role=Role.JOBAGENT)  # fmt: skip
    except (TokenError, ValueError) as exc:
        raise PilotError(f"{cert}: not a usable jobagent token for the broker: {exc}") from None
    except OSError as exc:
        raise PilotError(f"{cert}: {exc.strerror}") from None
    return token


def jobagent_token(certs: Path) -> tuple[TokenAuthority, Token]:
    """The local authority (made on first use: ensure_authority takes a lock, as two
    pilots may start at once) and the agent's token, verified; an existing authority is
    never replaced behind the site's back."""
    try:
        exists = (certs / files.CA_CERT).exists()
        authority = TokenAuthority.load(certs) if exists else ensure_authority(certs).authority
        token = files.load_token(files.cert_path(certs, "jobagent"),
                                 files.key_path(certs, "jobagent"))  # fmt: skip
        crl = files.load_crl(certs / files.CRL) if (certs / files.CRL).exists() else None
        authority.verifier(crl).verify(token.certificate, token.chain, role=Role.JOBAGENT)
    except (TokenError, ValueError) as exc:
        raise PilotError(f"{certs}: the jobagent token is not usable: {exc} "
                         "(run: sandbox-agent certs init)") from None  # fmt: skip
    except OSError as exc:
        raise PilotError(f"{certs}: {exc.strerror}; check the home directory") from None
    return authority, token


def make_work_area(work_area: Path) -> str | None:
    """Make the work area (0711 whatever the umask: the sandbox's uid must pass through
    it), or check the one that is there; why it cannot serve, or None. An existing
    directory is never changed: it may be /var/tmp, or someone's home."""
    try:
        info = work_area.lstat()
    except FileNotFoundError:
        work_area.parent.mkdir(parents=True, exist_ok=True)
        work_area.mkdir(mode=0o711)
        work_area.chmod(0o711)
        return None
    if not stat.S_ISDIR(info.st_mode):
        return "not a directory (a symlink is not taken); give --work-area a directory"
    if info.st_uid != os.geteuid():
        return ("owned by another user; give --work-area a directory of this user's, or a "
                "path where the pilot can make one")  # fmt: skip
    if info.st_mode & 0o002:
        return ("writable by every user; give --work-area a directory of its own, such as "
                "/var/tmp/sandbox-agent")  # fmt: skip
    return None


def unreachable(work_area: Path) -> Path | None:
    """The first existing directory on the way to ``work_area`` that the sandbox's host
    uid (65534, when we are root) cannot search; None when it can, or we are not root."""
    if os.geteuid() != 0:
        return None
    for directory in [*reversed(work_area.parents), work_area]:
        try:
            info = directory.stat()
        except FileNotFoundError:
            return None  # made by the agent, 0711
        if not info.st_mode & 0o001 and info.st_uid != SANDBOX_HOST_UID:
            return directory
    return None


def report_event(report: Report) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "handed_back" if report.handed_back else "finished",
        "job": report.job_id, "resubmission": report.resubmission, "state": report.state,
        "detail": report.detail, "exit_code": report.exit_code,
        "wall_seconds": round(report.wall_seconds, 3), "wrapper_states": report.states,
    }  # fmt: skip
    if report.outputs:
        event["outputs"] = report.outputs
    if report.manifest is not None:
        event["files"] = [item["name"] for item in report.manifest.files]
        event["problems"] = report.manifest.problems
    return event
