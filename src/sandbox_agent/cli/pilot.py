"""``sandbox-agent run``: the pilot on the embedded default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sandbox_agent import exitcodes
from sandbox_agent.agent import condor, gpus
from sandbox_agent.agent import slot as slots
from sandbox_agent.agent.condor import CondorError
from sandbox_agent.agent.pilot import Pilot, PilotConfig, PilotError
from sandbox_agent.cli.app import app, fail, home_of
from sandbox_agent.cli.remote import (
    BrokerOption,
    CaOption,
    CertOption,
    KeyOption,
    broker_client,
)
from sandbox_agent.policy import Policy, PolicyError, load_policy, policy_dirs
from sandbox_agent.policy.gate import Unenforceable
from sandbox_agent.policy.load import overridden
from sandbox_agent.printable import printable
from sandbox_agent.queue import StoreError
from sandbox_agent.runtime.agentproc import Terminated
from sandbox_agent.runtime.choose import Availability, RuntimeUnavailable, for_wrapper
from sandbox_agent.runtime.launch import RuntimeMissing
from sandbox_agent.seccomp.compile import CompileError

RUNTIME_HELP = ("auto (USE_CONTAINERS=PODMAN|DOCKER|APPTAINER|SINGULARITY if set, else bwrap), "
                "bwrap, podman, docker, apptainer or singularity.")  # fmt: skip


def pilot_sandbox(runtime: str, policy: str, home: Path) -> tuple[Availability, Policy]:
    """The runtime the JobWrapper runs in (runtime.choose.for_wrapper) and the pilot's
    policy, its image the site's JOB_CONTAINER_PATH when that is set (as JAliEn's
    JobAgent takes its container from it), its GPUs those an HTCondor slot assigned.
    Raises RuntimeUnavailable, PolicyError, CondorError."""
    found = for_wrapper(runtime)
    loaded = load_policy(policy, policy_dirs(home))
    loaded = gpus.assigned(loaded)  # under HTCondor: the slot's GPUs, no other (CondorError)
    image = os.environ.get("JOB_CONTAINER_PATH", "").strip()
    if image and printable(image) != image:
        raise PolicyError(f"environment: JOB_CONTAINER_PATH: {printable(image)[:80]}: control "
                          "characters in an image reference")  # fmt: skip
    if image:
        loaded = overridden(loaded, "filesystem.image", image, "environment: JOB_CONTAINER_PATH")
    return found, loaded


@app.command("run")
def run(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Run one job at most, then exit.")] = False,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", min=1, help="Exit after this many jobs.")
    ] = None,
    ttl: Annotated[
        int, typer.Option("--ttl", min=1, help="Seconds this pilot may run jobs for.")
    ] = slots.DEFAULT_TTL,
    runtime: Annotated[str, typer.Option("--runtime", help=RUNTIME_HELP)] = "auto",
    policy: Annotated[str, typer.Option("--policy", help="A policy name or path.")] = "default",
    lease: Annotated[
        float, typer.Option("--lease", min=2.0, help="Seconds a heartbeat holds a job.")
    ] = 120.0,
    grace: Annotated[
        float, typer.Option("--grace", min=0.0, help="Seconds a stopped job gets to finish.")
    ] = 10.0,
    work_area: Annotated[
        Path | None,
        typer.Option(
            "--work-area",
            help="Where job work directories go [default: under HTCondor's scratch "
            "directory in an HTCondor job, else HOME/work].",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of text.")] = False,
    token_margin: Annotated[
        int,
        typer.Option(
            "--token-margin",
            min=0,
            help="Seconds of the jobagent token's validity kept back from every slot's TTL, "
            "for a job's end and its reports.",
        ),
    ] = slots.TOKEN_MARGIN,
    when_unhealthy: Annotated[
        str,
        typer.Option(
            "--when-unhealthy",
            help="stop (exit 3) or wait when a path the policy requires "
            "(filesystem.required: CVMFS, GPUs) is missing; its job goes back untouched.",
        ),
    ] = "stop",
    broker: BrokerOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    ca: CaOption = None,
) -> None:
    """Run jobs from the embedded queue in the sandbox until there is nothing to do:
    the queue gives nothing twice in a row, the time left is under what every waiting
    job needs, or SIGTERM (the running job is handed back unless it had finished).
    With --broker, the jobs come from that broker, --cert being a jobagent token, which
    the pilot renews there between jobs and writes back to --cert."""
    home = home_of(ctx)
    try:
        found, loaded = pilot_sandbox(runtime, policy, home)
    except RuntimeUnavailable as exc:
        fail(f"cannot run jobs here: {exc}", exitcodes.ENVIRONMENT)
    except PolicyError as exc:
        fail(str(exc))
    except CondorError as exc:  # the batch system's slot, not the command line
        fail(str(exc), exitcodes.ENVIRONMENT)
    if when_unhealthy not in ("stop", "wait"):
        fail(f"--when-unhealthy {printable(when_unhealthy)[:40]}: say stop or wait")
    if work_area is None:  # under HTCondor: in the job's scratch directory
        try:
            work_area = condor.work_area()
        except CondorError as exc:
            fail(str(exc), exitcodes.ENVIRONMENT)
    client = broker_client(broker, cert, key, ca)
    token_files = (cert, key, ca) if client and cert and key and ca else None
    config = PilotConfig(home=home, policy=loaded, ttl=ttl, max_jobs=max_jobs, once=once,
                         lease=lease, grace=grace, work_area=work_area, broker=client,
                         broker_token=token_files, runtime=found.runtime,
                         runtime_binary=found.binary, token_margin=token_margin,
                         when_unhealthy=when_unhealthy)  # fmt: skip
    emit = _json_line if as_json else _text_line
    try:
        why = Pilot(config, emit).run()
    except Terminated as exc:
        fail(f"stopped at once by a second {exc}: the job was killed; its lease returns it "
             "to the queue", 128 + exc.signum)  # fmt: skip
    except (PilotError, StoreError) as exc:  # may quote what a wrapper said
        fail(printable(str(exc)), exitcodes.ENVIRONMENT)
    except (Unenforceable, RuntimeMissing, CompileError) as exc:
        fail(f"cannot enforce the policy here: {exc}", exitcodes.ENVIRONMENT)
    except subprocess.SubprocessError as exc:
        fail(f"cannot start the sandbox: {exc}", exitcodes.ENVIRONMENT)
    except OSError as exc:  # before any job: the home or the work area
        fail(f"{exc.filename or home}: {exc.strerror}", exitcodes.ENVIRONMENT)
    emit({"event": "exit", "reason": why})


def _json_line(event: dict[str, Any]) -> None:
    typer.echo(json.dumps(event))  # ASCII only: every control character as \uXXXX
    sys.stdout.flush()


def _text_line(event: dict[str, Any]) -> None:
    # details, states and names can come from the wrapper, which shares the sandbox with
    # the payload: every string of the event is made printable before it is shown
    event = {key: printable(value) if isinstance(value, str) else value
             for key, value in event.items()}  # fmt: skip
    kind = event["event"]
    if kind == "agent":
        line = f"agent {event['name']}: home {event['home']}, work area {event['work_area']}"
        if event.get("runtime", "bwrap") != "bwrap":
            line += f", jobs in {event['runtime']}"
        if event.get("swept_containers"):
            line += f"; removed {len(event['swept_containers'])} container(s) a killed agent left"
        if event.get("swept_cgroups"):
            line += f"; removed {len(event['swept_cgroups'])} cgroup(s) a killed agent left"
    elif kind == "matched":
        line = (f"job {event['job']}: matched (resubmission {event['resubmission']}, "
                f"{event['ttl_left']} s of TTL left)")  # fmt: skip
    elif kind == "started":
        dropped = event.get("dropped_binds") or []
        if not dropped:
            return
        listed = ", ".join(f"{printable(d['path'])} ({printable(d['answer'])}; "
                           f"{printable(d['origin'])})" for d in dropped)  # fmt: skip
        line = f"job {event['job']}: left out, this node lacks them: {listed}"
    elif kind == "unhealthy":
        line = f"{event['reason']}; waiting for it (--when-unhealthy wait)"
    elif kind == "healthy":
        line = f"the node is healthy again after {event['waited_seconds']} s; taking work"
    elif kind == "renewed":
        line = f"token {event['token']}: renewed by the broker, now expires at {event['expires']}"
        line += (
            " (written back)" if event["written"] else f" (kept in memory: {event['not_written']})"
        )
    elif kind == "renewal_failed":
        again = "" if event["final"] else "; tried again between jobs"
        line = (f"token {event['token']}: not renewed ({event['reason']}); the pilot keeps it "
                f"(it expires at {event['expires']}){again}")  # fmt: skip
    elif kind == "preflight":
        granted = event.get("granted") or []
        # what the policy grants (network.mode = "host") is said, never hidden
        besides = f"; {len(granted)} granted by the policy: {granted[0]}" if granted else ""
        line = (
            f"preflight: {event['attacks']} attacks on credentials, processes, "
            f"descriptors and the network, none got through{besides} "
            f"({event['seconds']:.1f} s)"
        )
    elif kind in ("finished", "handed_back"):
        code = f" exit {event['exit_code']}" if event["exit_code"] is not None else ""
        detail = f" ({event['detail']})" if event["detail"] else ""
        line = (
            f"job {event['job']}: {event['state']}{code} in {event['wall_seconds']:.2f} s{detail}"
        )
        if event.get("outputs"):
            line += f"; outputs in {event['outputs']}"
    else:
        line = f"agent stops: {event['reason']}"
    typer.echo(line)
    sys.stdout.flush()
