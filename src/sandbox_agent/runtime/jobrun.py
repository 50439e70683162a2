"""One job from the agent's side: the JobWrapper started in the sandbox, the handoff
written once it is in the job's cgroup, its status frames read back, and one final
state decided from what the wrapper said and what the agent saw.

The wrapper shares the sandbox with the payload, so what it says is believed only as
far as it goes: a kill by the agent or the kernel decides the state whatever the frames
claim, and frames that do not parse end the job in error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import PIPE, Popen
from typing import IO, Any

from sandbox_agent.images import ImageRefused, prepare
from sandbox_agent.jdl import JobSpec
from sandbox_agent.limits.monitor import StopRequest
from sandbox_agent.policy import gate
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.printable import clipped
from sandbox_agent.runtime import bwrap, containers, docker, launch, render, session
from sandbox_agent.wrapper import handoff

MAX_FRAMES = 256  # a wrapper has a handful of states to report; more is misbehaviour
# Why the agent killed a job -> the state it ends in (JAliEn: EXPIRED for the TTL).
KILL_STATES = {"wall_time": "EXPIRED", "killed": "KILLED", "stopped": "KILLED"}
LOG_CAP = 64 * 1024  # of the wrapper's own stderr: the payload may reach it and spam
FRAME_STATES = frozenset({
    "STARTED", "RUNNING", "SAVING", "DONE", "DONE_WARN", "ERROR_E", "ERROR_V", "ERROR_VN",
    "ERROR_VT", "ERROR_IB", "ERROR_S", "ERROR_SV",
})  # what a wrapper may say; EXPIRED, KILLED and FAILED are the agent's to decide  # fmt: skip
PROGRESS_STATES = frozenset({"STARTED", "RUNNING", "SAVING"})  # the agent passes these on
FINAL_FRAME_STATES = FRAME_STATES - PROGRESS_STATES


@dataclass
class JobResult:
    state: str  # the final state
    detail: str
    exit_code: int | None
    states: list[str] = field(default_factory=list)  # as the wrapper reported them
    session: session.SessionResult | None = None
    wrapper_log: bytes = b""  # the first LOG_CAP bytes the wrapper wrote on its stderr
    wrapper_log_size: int = 0  # how many it wrote in all
    argv: tuple[str, ...] = ()  # what the sandbox was started with (for the audit record)
    runtime: str = "bwrap"  # what ran it
    image: dict[str, Any] | None = None  # the image it ran on (images.prepare); None: the host's
    # the gate's answer for each requirement of the plan that ran, once it ran
    answers: tuple[gate.Answer, ...] = ()


def handoff_fields(
    spec: JobSpec, job_id: int, resubmission: int, token: Mapping[str, Any],
    environment: Mapping[str, str], effective: EffectivePolicy, *, user: str, site: str,
) -> dict[str, Any]:  # fmt: skip
    """The handoff frame's fields for one job: what the wrapper needs and nothing more.
    ``user`` (the job's owner) and ``site`` (the slot's Site) become ALIEN_USER and
    ALIEN_SITE, one printable line each, as they reach the payload's environment."""
    prefix = "ALIEN_JDL_"
    variables = {name.removeprefix(prefix): value for name, value in spec.environment().items()}
    job: dict[str, Any] = {
        "executable": spec.executable, "arguments": list(spec.arguments),
        "input_files": [Path(i.name).name for i in spec.input_files],
        "outputs": [o.jdl() for o in spec.outputs],
        "output_errors": [o.jdl() for o in spec.output_errors], "variables": variables,
    }  # fmt: skip
    if spec.validation_command:  # a program to run, never a shell string
        job["validation"] = [spec.validation_command]
    view = effective.view.limits
    limits = {"memory": view.memory.value, "wall_time": view.wall_time.value,
              "workdir_size": view.workdir_size.value}  # fmt: skip
    return {"job_id": job_id, "resubmission": resubmission, "user": clipped(user, 200),
            "site": clipped(site, 200), "spec": job, "token": dict(token),
            "environment": dict(environment), "limits": limits}  # fmt: skip


class _Conversation:
    """The handoff out, the status frames in, each on its own thread: a wrapper that
    neither reads nor writes must not stall the agent's monitor."""

    def __init__(self, frame: bytes, on_frame: Callable[[dict[str, Any]], None] | None,
                 *, lifeline: bool = False,
                 on_final: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.frame = frame
        self.on_frame = on_frame
        # stdin stays open while the job runs (the handoff's "lifeline"); closed once the
        # final state came and ``on_final`` has run (the container's usage read)
        self.lifeline = lifeline
        self.on_final = on_final
        self.frames: list[dict[str, Any]] = []
        self.problem = ""
        self.log = b""
        self.log_size = 0  # bytes the wrapper wrote on its stderr, kept or not
        self.threads: list[threading.Thread] = []
        self.stdin: IO[bytes] | None = None

    def start(self, process: Popen[bytes]) -> None:
        """Read the wrapper's frames and stderr from now on; the handoff waits for
        release (a container's JobWrapper gets its job only once the agent is done)."""
        assert process.stdin and process.stdout and process.stderr
        self.stdin = process.stdin
        for target, stream in ((self._receive, process.stdout), (self._log, process.stderr)):
            self._thread(target, stream)

    def release(self) -> None:
        """Write the handoff: the job may run."""
        assert self.stdin is not None, "release before start"
        self._thread(self._send, self.stdin)

    def _thread(self, target: Callable[[IO[bytes]], None], stream: IO[bytes]) -> None:
        thread = threading.Thread(target=target, args=(stream,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _send(self, stream: IO[bytes]) -> None:
        try:
            stream.write(self.frame)
            if self.lifeline:  # its end, when this agent dies, ends the job
                stream.flush()
            else:
                stream.close()
        except OSError:
            pass  # the wrapper is gone; its states (or their absence) say the rest

    def _receive(self, stream: IO[bytes]) -> None:
        try:
            while len(self.frames) < MAX_FRAMES:
                if not stream.peek(1):  # type: ignore[attr-defined]
                    return
                frame = handoff.read_frame(stream, "status")
                if frame["state"] not in FRAME_STATES:
                    raise handoff.FrameError(f"state {frame['state'][:40]!r} is not the "
                                             "wrapper's to report")  # fmt: skip
                self.frames.append(frame)
                if self.on_frame is not None:
                    self.on_frame(frame)
                if frame["state"] in FINAL_FRAME_STATES and self.on_final is not None:
                    self.on_final()  # the engine relays the end of stdout only at exit:
                    self._let_go()  # the wrapper waits for this, not the other way round
            self.problem = f"the wrapper sent more than {MAX_FRAMES} frames"
        except handoff.FrameError as exc:
            self.problem = f"the wrapper sent a bad frame: {exc}"
        finally:
            stream.close()
            self._let_go()

    def _let_go(self) -> None:
        """The end of the lifeline: the JobWrapper exits (or, before its end, is killed)."""
        if self.lifeline and self.stdin is not None:
            with contextlib.suppress(OSError):
                self.stdin.close()

    def _log(self, stream: IO[bytes]) -> None:
        """The wrapper's stderr: kept up to LOG_CAP, the rest read and dropped."""
        try:
            while chunk := stream.read1(65536):  # type: ignore[attr-defined]
                self.log += chunk[: max(0, LOG_CAP - len(self.log))]
                self.log_size += len(chunk)
        except OSError:
            pass
        finally:
            stream.close()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=5)
        self._let_go()


def run_job(
    effective: EffectivePolicy,
    fields: Mapping[str, Any],
    workdir: Path,
    *,
    environ: Mapping[str, str] | None = None,
    interval: float = 1.0,
    stop: StopRequest | None = None,
    on_frame: Callable[[dict[str, Any]], None] | None = None,
    name: str | None = None,
    held: frozenset[str] = frozenset(),
    runtime: str = "bwrap",
    binary: str | None = None,
) -> JobResult:
    """Run the job the handoff ``fields`` describe in the sandbox ``effective`` composes,
    ``workdir`` writable; ``on_frame`` sees each status frame as it comes (from another
    thread); ``stop`` may end it early; ``held``: limits held already (session.run).
    ``runtime``: bwrap, docker or podman (``binary``: where it was found)."""
    name = name or f"exec-{os.getpid()}-{secrets.token_hex(6)}"
    engine = runtime in docker.ENGINES
    # ImageRefused: the image must not be used (a directory made ready and checked, as
    # for bwrap; an engine's reference looked up in its store)
    stored = image_in_store(effective, binary or runtime) if engine else None
    with nullcontext() if stored else prepare.ready(effective) as image:
        plan = render.render(runtime, effective, bwrap.WRAPPER_ARGV, workdir=str(workdir),
                             environ=dict(environ or {}), binary=binary, image=image,
                             wrapper=True, name=name)  # fmt: skip
        # an engine's JobWrapper gets its files on stdin first (launch.stdin_files), and
        # keeps it open as its lifeline: the container is the engine's, and must end
        # when its agent does
        first = launch.stdin_files(plan) if plan.stdin_files else b""
        lifeline = plan.container != ""
        frame = handoff.encode("handoff", {**fields, "lifeline": 1} if lifeline else fields)
        count = session.ContainerCount() if lifeline else None
        talk = _Conversation(first + frame, on_frame, lifeline=lifeline,
                             on_final=count.take if count else None)  # fmt: skip
        outcome = session.run(plan, workdir=workdir, stdin=PIPE, stdout=PIPE,
                              stderr=PIPE, interval=interval, on_start=talk.start,
                              on_ready=talk.release, stop=stop, name=name, held=held,
                              count=count)  # fmt: skip
        talk.join()
    if plan.confirm_on_stderr:
        # the confine step's word on the container's stderr, before anything of the
        # job ran (after the engine's own warnings, if any): without it, nothing of the
        # job ran (the engine failed), which is the node's fault, not the job's
        lines = talk.log.decode("ascii", "replace").splitlines()
        confined = next((line.strip() for line in lines if line.startswith("confined: ")), "")
        outcome = dataclasses.replace(outcome, landlock=confined)
    result = decide(outcome, talk.frames, talk.problem)
    result.wrapper_log, result.wrapper_log_size = talk.log, talk.log_size
    result.argv, result.runtime = plan.argv, plan.runtime
    result.answers = tuple(gate.as_run(plan.answers(), outcome.unenforced, outcome.limits.answers))
    result.image = image.record() if image is not None else stored
    return result


def image_in_store(effective: EffectivePolicy, binary: str) -> dict[str, Any] | None:
    """An engine's image must be in its local store: no job waits on a registry, and
    none may pull what the site did not put there; and pinned where the policy asks
    (images.pins names a docker:// image by its id in the store; images.require_pin).
    ImageRefused, one line, the job's fault when its JDL chose the image. What the
    audit record says of it: the reference, and its id. None for a directory (checked
    and made ready as for bwrap, then run by Podman's --rootfs, or refused)."""
    choice = effective.image_choice()
    image, origin = choice.image, choice.origin
    chosen = origin.startswith("jdl:")
    name = os.path.basename(binary)
    if image.startswith("/") and (name != "podman" or effective.view.namespaces.user != "off"):
        raise ImageRefused(f"{image:.120}: {name} runs images from its store (docker://NAME), "
                           f"not a directory; import it: tar -C DIR -c . | {name} import - NAME "
                           f"({origin})", job=chosen, node=not chosen)  # fmt: skip
    if not image.startswith("docker://"):
        return None
    reference = image.removeprefix("docker://")
    found, problem = containers.image_id(binary, reference, environ=os.environ)
    if problem:
        raise ImageRefused(f"{problem} ({origin})", job=chosen)
    pin = choice.pins.get(image, choice.pins.get(reference))
    if pin is None and choice.require_pin and "@sha256:" not in reference:
        raise ImageRefused(f"{image:.120}: images.require_pin is set and no pin names this "
                           f"image ({origin})", job=chosen)  # fmt: skip
    if pin is not None and pin != found:
        raise ImageRefused(f"{image:.120}: its id in {name}'s store is {found}, but images.pins "
                           f"pins it to {pin} ({origin})", job=chosen)  # fmt: skip
    return {"path": image, "named": reference, "chosen_by": origin,
            "kind": f"OCI image in {name}'s store", "digest": found, "size": None,
            "pinned": pin is not None or "@sha256:" in reference}  # fmt: skip


def decide(result: session.SessionResult, frames: list[dict[str, Any]], problem: str) -> JobResult:
    """The job's final state: the agent's kill first, then a broken conversation, then
    what the wrapper said last."""
    states = [str(f["state"]) for f in frames]
    code = result.outcome.returncode
    if not result.payload_ran:
        return JobResult("FAILED", "the sandbox failed before the wrapper ran", None, states,
                         result)  # fmt: skip
    if result.outcome.reason:
        state = KILL_STATES.get(result.outcome.reason, "ERROR_E")
        return JobResult(state, result.outcome.detail, None, states, result)
    if problem:  # the wrapper broke the protocol: not the payload's verdict (FAILED)
        return JobResult("FAILED", problem, None, states, result)
    if not frames or states[-1] not in FINAL_FRAME_STATES:
        said = f"; its last state was {states[-1]}" if states else ""
        return JobResult("FAILED", f"the wrapper ended without a final state (exit {code})"
                         f"{said}", None, states, result)  # fmt: skip
    last = frames[-1]
    return JobResult(str(last["state"]), str(last.get("detail", "")), last.get("exit_code"),
                     states, result)  # fmt: skip
