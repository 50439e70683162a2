"""``sandbox-agent submit``, ``jobs`` and ``status``: the embedded task queue under --home."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from sandbox_agent import exitcodes
from sandbox_agent.cli.app import JsonOption, app, fail, home_of
from sandbox_agent.jdl import render_jdl
from sandbox_agent.jdl.expr import render
from sandbox_agent.queue import Job, State, StateChange, Store, StoreError


def _store(ctx: typer.Context) -> Store:
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
    as_json: JsonOption = False,
) -> None:
    """Queue a job on the embedded default; print its id. The JDL is checked first and
    stored in its normalized form, submit arguments substituted."""
    from sandbox_agent.cli.policy import _job

    spec = _job(jdl, args or [])
    assert spec is not None
    requirements = render(spec.requirements) if spec.requirements is not None else None
    with _store(ctx) as store:
        try:
            job_id = store.submit(render_jdl(spec), owner=getpass.getuser(), priority=priority,
                                  requirements=requirements)  # fmt: skip
        except StoreError as exc:
            fail(str(exc), exitcodes.ENVIRONMENT)
    typer.echo(json.dumps({"id": job_id}) if as_json else str(job_id))


@app.command("jobs")
def jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The jobs of the embedded queue, oldest first."""
    if state is not None and state.upper() not in State.__members__:
        fail(f"--state {state}: not a job state; use one of {', '.join(State.__members__)}")
    with _store(ctx) as store:
        found = store.jobs(state.upper() if state else None)
    if as_json:
        typer.echo(json.dumps([_job_json(job) for job in found], indent=2))
        return
    typer.echo(f"{'ID':>6}  {'STATE':<10} {'RESUB':>5}  {'OWNER':<12} SUBMITTED")
    for job in found:
        typer.echo(f"{job.id:>6}  {job.state:<10} {job.resubmission:>5}  {job.owner:<12} "
                   f"{_when(job.submitted)}")  # fmt: skip


@app.command("status")
def status(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="The job id submit printed.")],
    as_json: JsonOption = False,
) -> None:
    """One job: its state, and every change with its time, detail and exit code."""
    with _store(ctx) as store:
        try:
            job = store.get(job_id)
            history = store.history(job_id)
        except StoreError as exc:
            fail(str(exc))
    if as_json:
        changes = [_change_json(c) for c in history]
        typer.echo(json.dumps({**_job_json(job), "jdl": job.jdl_text, "history": changes},
                              indent=2))  # fmt: skip
        return
    typer.echo(f"job {job.id}: {job.state} (resubmission {job.resubmission}, owner {job.owner})")
    for change in history:
        code = f" exit {change.exit_code}" if change.exit_code is not None else ""
        detail = f"  {change.detail}" if change.detail else ""
        typer.echo(f"  {_when(change.time)}  {change.state:<10}{code}{detail}")


def _job_json(job: Job) -> dict[str, Any]:
    return {"id": job.id, "state": str(job.state), "resubmission": job.resubmission,
            "owner": job.owner, "priority": job.priority, "submitted": _when(job.submitted),
            "agent": job.agent, "exit_code": job.exit_code}  # fmt: skip


def _change_json(change: StateChange) -> dict[str, Any]:
    return {"time": _when(change.time), "state": str(change.state), "detail": change.detail,
            "exit_code": change.exit_code, "resubmission": change.resubmission}  # fmt: skip
