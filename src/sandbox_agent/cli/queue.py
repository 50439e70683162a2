"""``sandbox-agent submit``, ``jobs`` and ``status``: the embedded task queue under --home."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from sandbox_agent import exitcodes
from sandbox_agent.agent import slot
from sandbox_agent.agent.condor import CondorError
from sandbox_agent.agent.staging import StagingError, stage
from sandbox_agent.agent.storage import Storage, StorageError
from sandbox_agent.broker.client import BrokerError
from sandbox_agent.cli.app import JsonOption, app, fail, home_of
from sandbox_agent.cli.catalogue import open_catalogue, user_deny
from sandbox_agent.cli.policy import _job
from sandbox_agent.cli.remote import (
    BrokerOption,
    CaOption,
    CertOption,
    KeyOption,
    SentToBroker,
    broker_client,
    broker_failed,
)
from sandbox_agent.jdl import JobSpec, render_jdl
from sandbox_agent.jdl.expr import render
from sandbox_agent.jdl.fit import refusal
from sandbox_agent.policy import PolicyError, PolicyRejection, compose, load_policy, policy_dirs
from sandbox_agent.printable import printable
from sandbox_agent.queue import Job, State, StateChange, Store, StoreError


def open_store(ctx: typer.Context) -> Store:
    """The queue of this invocation's --home; an unusable one is a one-line exit 3."""
    try:
        return Store(home_of(ctx) / "queue")
    except StoreError as exc:
        fail(str(exc), exitcodes.ENVIRONMENT)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@app.command("submit")
def submit(
    ctx: typer.Context,
    jdl: Annotated[Path, typer.Argument(help="The job description.")],
    args: Annotated[
        list[str] | None, typer.Argument(help="Submit arguments, for $1, $2, ... in the JDL.")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Higher runs first.")] = 0,
    policy: Annotated[
        str, typer.Option("--policy", help="The site policy the job must fit (name or path).")
    ] = "default",
    as_json: JsonOption = False,
    broker: BrokerOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    ca: CaOption = None,
) -> None:
    """Queue a job on the embedded default; print its id. The JDL is checked first, its
    local files (Executable, ValidationCommand, InputFile) are added to the catalogue and
    named by their LF: names, and a job no slot here could run, or that the policy
    rejects, is refused. It is stored in its normalized form, submit arguments
    substituted. With --broker, the job goes to that broker, yours by your token."""

    spec = _job(jdl, args or [])
    assert spec is not None
    for warning in spec.warnings:  # where JAliEn would read it differently, among others
        typer.echo(printable(warning), err=True)
    client = broker_client(broker, cert, key, ca)
    if client is not None:

        token_files = tuple(str(p) for p in (cert, key) if p is not None)
        deny = user_deny(ctx, policy, token_files)
        try:
            # the broker names each sent file after the token's user: no owner here
            spec = stage(spec, jdl.absolute().parent, SentToBroker(client), "-", deny)
            job_id = client.submit(render_jdl(spec), priority)
        except StagingError as exc:
            fail(str(exc))
        except BrokerError as exc:
            broker_failed(exc)
        typer.echo(json.dumps({"id": job_id}) if as_json else str(job_id))
        return
    spec = _stage(ctx, spec, jdl.absolute().parent, policy)
    _refuse_unrunnable(ctx, spec, policy)
    requirements = render(spec.requirements) if spec.requirements is not None else None
    with open_store(ctx) as store:
        try:
            job_id = store.submit(render_jdl(spec), owner=getpass.getuser(), priority=priority,
                                  requirements=requirements)  # fmt: skip
        except StoreError as exc:
            fail(str(exc), exitcodes.ENVIRONMENT)
    typer.echo(json.dumps({"id": job_id}) if as_json else str(job_id))


def _stage(ctx: typer.Context, spec: JobSpec, jdl_dir: Path, policy: str) -> JobSpec:
    """``spec`` with its local files in the catalogue; a file that cannot be (or that
    reaches what ``policy``'s deny list or a credential holds) is exit 2."""

    deny = user_deny(ctx, policy)
    with open_catalogue(ctx) as catalogue:
        try:
            return stage(spec, jdl_dir, catalogue, getpass.getuser(), deny)
        except StagingError as exc:
            fail(str(exc))


def _refuse_unrunnable(ctx: typer.Context, spec: JobSpec, policy: str) -> None:
    """Exit 1 for a job that would wait for ever: no slot of this node fits it, or the
    policy rejects what it asks for."""

    home = home_of(ctx)
    try:
        offered = slot.describe(home, home / "work", ttl_left=slot.DEFAULT_TTL)
    except CondorError as exc:  # the batch system's machine ad, not the command line
        fail(str(exc), exitcodes.ENVIRONMENT)
    except ValueError as exc:  # the site file HOME/slot.toml
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot measure the slot this node offers: {exc}", exitcodes.ENVIRONMENT)
    reason = refusal(spec, offered)
    if reason is not None:
        fail(f"job refused: no slot here can run it: {reason}", exitcodes.FAILED)
    try:
        compose(load_policy(policy, policy_dirs(home)), spec, credentials=[str(home / "certs")])
    except PolicyError as exc:
        fail(str(exc))
    except PolicyRejection as exc:
        fail(f"job refused: the policy {policy} rejects it: {exc}", exitcodes.FAILED)


@app.command("jobs")
def jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    as_json: JsonOption = False,
    broker: BrokerOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    ca: CaOption = None,
) -> None:
    """The jobs of the embedded queue, oldest first; with --broker, yours at that broker
    (every job for an admin token)."""
    if state is not None and state.upper() not in State.__members__:
        fail(f"--state {state}: not a job state; use one of {', '.join(State.__members__)}")
    client = broker_client(broker, cert, key, ca)
    if client is not None:
        try:
            found = [_remote_job(j) for j in client.jobs(state.upper() if state else None)]
        except BrokerError as exc:
            broker_failed(exc)
    else:
        with open_store(ctx) as store:
            found = store.jobs(state.upper() if state else None)
    if as_json:
        typer.echo(json.dumps([_job_json(job) for job in found], indent=2))
        return
    typer.echo(f"{'ID':>6}  {'STATE':<10} {'RESUB':>5}  {'OWNER':<12} SUBMITTED")
    for job in found:  # a broker's answer is text from afar: every field made printable
        typer.echo(f"{job.id:>6}  {printable(str(job.state)):<10} {job.resubmission:>5}  "
                   f"{printable(job.owner):<12} {_when(job.submitted)}")  # fmt: skip


@app.command("status")
def status(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="The job id submit printed.")],
    as_json: JsonOption = False,
    broker: BrokerOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    ca: CaOption = None,
) -> None:
    """One job: its state, every change with its time, detail and exit code, and the
    last run's resource use and kill reason (with --broker: as its agent last said)."""

    client = broker_client(broker, cert, key, ca)
    if client is not None:
        try:
            answer = client.status(job_id)
        except BrokerError as exc:
            broker_failed(exc)
        job = _remote_job(answer["job"])
        history = [StateChange(job_id=job_id, time=c["time"], state=State(c["state"]),
                               resubmission=c["resubmission"], agent=c["agent"],
                               detail=c["detail"], exit_code=c["exit_code"])
                   for c in answer["history"]]  # fmt: skip
        usage = dict(answer.get("usage") or {})
    else:
        with open_store(ctx) as store:
            try:
                job = store.get(job_id)
                history = store.history(job_id)
            except StoreError as exc:
                fail(str(exc))
        try:
            usage = Storage(home_of(ctx) / "outputs").manifest(job_id).usage
        except StorageError:
            usage = {}  # it has not run yet
    if as_json:
        changes = [_change_json(c) for c in history]
        typer.echo(json.dumps({**_job_json(job), "jdl": job.jdl_text, "history": changes,
                               "usage": usage}, indent=2))  # fmt: skip
        return
    # details and kill reasons carry what the wrapper (sharing the sandbox with the
    # payload) said: every string is made printable; --json is JSON-escaped, ASCII only
    typer.echo(f"job {job.id}: {printable(str(job.state))} (resubmission {job.resubmission}, "
               f"owner {printable(job.owner)})")  # fmt: skip
    for change in history:
        code = f" exit {change.exit_code}" if change.exit_code is not None else ""
        detail = f"  {printable(change.detail)}" if change.detail else ""
        typer.echo(f"  {_when(change.time)}  {printable(str(change.state)):<10}{code}{detail}")
    if usage:
        typer.echo("  last run: " + _usage_text(usage))


def _usage_text(usage: dict[str, Any]) -> str:
    """One printable line of resource use; a value that is not a number (a broker's
    answer is text from afar) is left out rather than formatted."""

    def number(key: str) -> float | None:
        value = usage.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    parts = [f"wall {number('wall_seconds') or 0:.2f} s"]
    if (cpu := number("cpu_seconds")) is not None:
        parts.append(f"cpu {cpu:.2f} s")
    if (memory := number("memory_peak_bytes")) is not None:
        sampled = " (sampled: no memory.peak in this kernel)" if usage.get("memory_peak_sampled") \
            else ""  # fmt: skip
        parts.append(f"memory peak {memory / (1 << 20):.1f} MB{sampled}")
    if (workdir := number("workdir_bytes_peak")) is not None:
        parts.append(f"work directory peak {workdir / (1 << 20):.1f} MB")
    if (processes := number("processes_peak")) is not None:
        parts.append(f"up to {processes} processes")
    if oom := number("oom_kills"):
        parts.append(f"{oom} OOM kill(s)")
    if refused := number("forks_refused"):
        parts.append(f"{refused} fork(s) refused at the process limit")
    if usage.get("kill_reason"):
        parts.append(f"killed by the agent: {printable(str(usage['kill_reason']))}")
    return ", ".join(parts)


def _remote_job(view: dict[str, Any]) -> Job:
    """A job as the broker shows it."""
    return Job(id=view["id"], jdl_text=view.get("jdl", ""), owner=view["owner"],
               priority=view["priority"], requirements=None, state=State(view["state"]),
               resubmission=view["resubmission"], agent=view["agent"],
               lease_until=view["lease_until"], submitted=view["submitted"],
               exit_code=view["exit_code"])  # fmt: skip


def _job_json(job: Job) -> dict[str, Any]:
    return {"id": job.id, "state": str(job.state), "resubmission": job.resubmission,
            "owner": job.owner, "priority": job.priority, "submitted": _when(job.submitted),
            "agent": job.agent, "exit_code": job.exit_code}  # fmt: skip


def _change_json(change: StateChange) -> dict[str, Any]:
    return {"time": _when(change.time), "state": str(change.state), "detail": change.detail,
            "exit_code": change.exit_code, "resubmission": change.resubmission}  # fmt: skip
