"""``sandbox-agent outputs``, ``logs`` and ``kill``: a job's results on the embedded
default, and stopping it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from sandbox_agent import exitcodes
from sandbox_agent.agent.storage import Storage, StorageError
from sandbox_agent.cli.app import JsonOption, app, fail, home_of, printable
from sandbox_agent.cli.remote import BrokerOption, CaOption, CertOption, KeyOption
from sandbox_agent.queue import StoreError, TransitionError


@app.command("outputs")
def outputs(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="The job id submit printed.")],
    to: Annotated[
        Path | None, typer.Option("--to", help="Copy the files here (made if missing).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """A job's stored outputs: name, size and SHA-256 of each; with --to, the files."""
    storage = Storage(home_of(ctx) / "outputs")
    try:
        manifest = storage.export(job_id, to) if to else storage.manifest(job_id)
    except StorageError as exc:
        fail(str(exc), exitcodes.FAILED)
    except OSError as exc:
        fail(f"{to}: {exc.strerror}")
    if as_json:
        typer.echo(json.dumps({"job": job_id, "state": manifest.state,
                               "files": manifest.files, "problems": manifest.problems},
                              indent=2))  # fmt: skip
        return
    typer.echo(f"job {job_id} (resubmission {manifest.resubmission}): {manifest.state}, "
               f"{len(manifest.files)} file(s)" + (f", copied to {to}" if to else ""))  # fmt: skip
    for item in manifest.files:  # names the payload chose: no control characters out
        typer.echo(f"  {item['sha256']}  {item['size']:>10}  {printable(str(item['name']))}")
    for problem in manifest.problems:
        typer.echo(f"  not kept: {printable(problem)}")


@app.command("logs")
def logs(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="The job id submit printed.")],
    stream: Annotated[
        str, typer.Option("--stream", help="stdout, stderr, wrapper.log, or all.")
    ] = "all",
) -> None:
    """What a job's payload wrote on stdout and stderr (and the JobWrapper's own log)."""
    names = ("stdout", "stderr", "wrapper.log")
    if stream != "all" and stream not in names:
        fail(f"--stream {stream}: choose stdout, stderr, wrapper.log or all")
    storage = Storage(home_of(ctx) / "outputs")
    try:
        for name in names if stream == "all" else (stream,):
            data = storage.log(job_id, name)
            if data is None:
                continue
            if stream == "all":
                typer.echo(f"==> {name} <==")
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
    except StorageError as exc:
        fail(str(exc), exitcodes.FAILED)


@app.command("kill")
def kill(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="The job id submit printed.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Recorded in the history.")
    ] = "by the user",
    broker: BrokerOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    ca: CaOption = None,
) -> None:
    """Kill a job: a waiting one never runs; a running one is stopped by its agent at the
    next heartbeat, which ends it KILLED. With --broker, a job of yours at that broker."""
    from sandbox_agent.broker.client import BrokerError
    from sandbox_agent.cli.queue import open_store
    from sandbox_agent.cli.remote import broker_client, broker_failed

    client = broker_client(broker, cert, key, ca)
    if client is not None:
        try:
            client.kill(job_id, reason)
        except BrokerError as exc:
            broker_failed(exc)
        typer.echo(f"job {job_id}: KILLED")
        return
    with open_store(ctx) as store:
        try:
            store.kill(job_id, reason)
        except TransitionError as exc:
            fail(str(exc), exitcodes.FAILED)
        except StoreError as exc:
            fail(str(exc))
    typer.echo(f"job {job_id}: KILLED")
