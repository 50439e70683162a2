"""``sandbox-agent outputs``, ``logs`` and ``kill``: a job's results on the embedded
default, and stopping it."""

from __future__ import annotations

import errno
import json
import os
import sys
import unicodedata
from pathlib import Path
from typing import Annotated

import typer

from sandbox_agent import exitcodes
from sandbox_agent.agent.storage import Storage, StorageError
from sandbox_agent.broker.client import BrokerClient, BrokerError
from sandbox_agent.cli.app import JsonOption, app, fail, home_of
from sandbox_agent.cli.queue import open_store
from sandbox_agent.cli.remote import (
    BrokerOption,
    CaOption,
    CertOption,
    KeyOption,
    broker_client,
    broker_failed,
)
from sandbox_agent.printable import printable
from sandbox_agent.queue import State, StoreError, TransitionError

STREAMS = ("stdout", "stderr", "wrapper.log")
# A payload's line that reads '==>' anywhere once what a terminal draws as nothing or
# as a blank is left out (joiners, combining marks, spaces, Hangul fillers) is shown
# with its first '=' escaped: only our headers ('==> stderr <==') then begin with '==>'.
_UNSEEN = frozenset({"Cf", "Mn", "Me", "Zs", "Cc"})
_FILLERS = frozenset({"\u115f", "\u3164", "\uffa0", "\u2800"}) | \
    {chr(c) for c in (*range(0x1160, 0x1200), *range(0xD7B0, 0xD800))}  # fmt: skip


@app.command("outputs")
def outputs(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="The job id submit printed.")],
    to: Annotated[
        Path | None, typer.Option("--to", help="Copy the files here (made if missing).")
    ] = None,
    as_json: JsonOption = False,
    broker: BrokerOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    ca: CaOption = None,
) -> None:
    """A job's stored outputs: name, size and SHA-256 of each; with --to, the files.
    With --broker, the outputs its agent sent that broker."""
    client = broker_client(broker, cert, key, ca)
    if client is not None:
        _remote_outputs(client, job_id, to, as_json)
        return
    storage = Storage(home_of(ctx) / "outputs")
    try:
        manifest = storage.export(job_id, to) if to else storage.manifest(job_id)
    except StorageError as exc:  # may name a file the payload named
        fail(printable(str(exc)), exitcodes.FAILED)
    except OSError as exc:
        fail(f"{to}: {exc.strerror}")
    if as_json:  # JSON-escaped: json.dumps writes ASCII only, every control as \uXXXX
        typer.echo(json.dumps({"job": job_id, "state": manifest.state,
                               "files": manifest.files, "problems": manifest.problems},
                              indent=2))  # fmt: skip
        return
    typer.echo(f"job {job_id} (resubmission {manifest.resubmission}): "
               f"{printable(str(manifest.state))}, {len(manifest.files)} file(s)"
               + (f", copied to {to}" if to else ""))  # fmt: skip
    for item in manifest.files:  # names the payload chose: no control characters out
        typer.echo(f"  {printable(str(item['sha256']))}  {printable(str(item['size'])):>10}  "
                   f"{printable(str(item['name']))}")  # fmt: skip
    for problem in manifest.problems:
        typer.echo(f"  not kept: {printable(problem)}")


@app.command("logs")
def logs(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="The job id submit printed.")],
    stream: Annotated[
        str, typer.Option("--stream", help="stdout, stderr, wrapper.log, or all.")
    ] = "all",
    raw: Annotated[
        bool,
        typer.Option("--raw", help="The exact bytes of one --stream, control sequences and all."),
    ] = False,
    broker: BrokerOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    ca: CaOption = None,
) -> None:
    """What a job's payload wrote on stdout and stderr (and the JobWrapper's own log),
    made printable: control characters, escape sequences, bidi controls and invalid
    UTF-8 shown as escapes (\\x1b, \\u202e). With --raw, one stream's exact bytes."""
    # Printable whether stdout is a terminal or not. A pipe or a file most often ends on
    # a terminal too (`logs 7 | less -R`, `logs 7 > f; cat f`), and we cannot see where;
    # plain text passes unchanged, so printable costs a reader nothing. Whoever wants
    # the payload's bytes asks for them with --raw, and gets exactly them.
    if stream != "all" and stream not in STREAMS:
        fail(f"--stream {stream}: choose stdout, stderr, wrapper.log or all")
    if raw and stream == "all":
        fail("--raw writes the exact bytes of one stream: add --stream stdout, --stream "
             "stderr or --stream wrapper.log")  # fmt: skip
    client = broker_client(broker, cert, key, ca)
    storage = Storage(home_of(ctx) / "outputs")
    try:
        for name in STREAMS if stream == "all" else (stream,):
            data = _remote_log(client, job_id, name) if client else storage.log(job_id, name)
            if data is None:
                continue
            sys.stdout.flush()
            sys.stdout.buffer.write(data if raw else _shown(name, data, stream == "all"))
            sys.stdout.buffer.flush()
    except StorageError as exc:
        fail(printable(str(exc)), exitcodes.FAILED)
    except BrokenPipeError:  # `logs 7 | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(exitcodes.OK) from None


def _unlike_a_header(line: str) -> str:
    """``line``, its first '=' escaped if a reader could see '==>' in it."""
    seen = "".join(c for c in line
                   if c not in _FILLERS and unicodedata.category(c) not in _UNSEEN)  # fmt: skip
    if "==>" not in seen:
        return line
    at = line.index("=")
    return line[:at] + "\\x3d" + line[at + 1 :]


def _shown(name: str, data: bytes, headed: bool) -> bytes:
    """A log as `logs` prints it: printable, and with ``headed`` under its header, its
    lines unable to pass for one, and ended by a newline so the next header starts a
    line of its own."""
    text = printable(data, lines=True)
    if not headed:
        return text.encode()
    text = "\n".join(_unlike_a_header(line) for line in text.split("\n"))
    if text and not text.endswith("\n"):
        text += "\n"
    return f"==> {name} <==\n{text}".encode()


def _remote_outputs(client: BrokerClient, job_id: int, to: Path | None, as_json: bool) -> None:
    try:
        listing = client.files(job_id)
        files = [f for f in listing["files"] if str(f["name"]).startswith("outputs/")]
        if to is not None:
            to.mkdir(parents=True, exist_ok=True)
            for item in files:
                _write_new(to, str(item["name"]).removeprefix("outputs/"),
                           client.fetch_file(job_id, str(item["name"])))  # fmt: skip
    except BrokerError as exc:
        broker_failed(exc)
    except OSError as exc:
        fail(f"{to}: {exc.strerror}")
    if as_json:
        typer.echo(json.dumps({"job": job_id, "state": listing["state"], "files": files},
                              indent=2))  # fmt: skip
        return
    copied = f", copied to {to}" if to else ""
    typer.echo(f"job {job_id} (resubmission {printable(str(listing['resubmission']))}): "
               f"{printable(str(listing['state']))}, {len(files)} file(s) at the "
               f"broker{copied}")  # fmt: skip
    for item in files:
        name = str(item["name"]).removeprefix("outputs/")
        typer.echo(f"  sha256:{printable(str(item['sha256']))}  "
                   f"{printable(str(item['size'])):>10}  {printable(name)}")  # fmt: skip


def _write_new(to: Path, name: str, data: bytes) -> None:
    """``data`` as ``to/name``, never over an existing file, never through a link; the
    broker checked the name, and it is checked again here."""
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise OSError(errno.EINVAL, f"{name!r} is not a plain relative name")
    directory = to
    for part in parts[:-1]:
        directory = directory / part
        directory.mkdir(parents=True, exist_ok=True)
    if directory.resolve() != to.resolve().joinpath(*parts[:-1]):
        raise OSError(errno.EINVAL, f"{name!r} leads out of {to}")
    fd = os.open(directory / parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                 0o644)  # fmt: skip
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _remote_log(client: BrokerClient, job_id: int, name: str) -> bytes | None:
    try:
        return client.fetch_file(job_id, f"logs/{name}")
    except BrokerError as exc:
        if exc.status == 404:
            return None
        broker_failed(exc)


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

    client = broker_client(broker, cert, key, ca)
    if client is not None:
        try:
            client.kill(job_id, reason)
        except BrokerError as exc:
            broker_failed(exc)
        typer.echo(f"job {job_id}: {State.KILLED}")
        return
    with open_store(ctx) as store:
        try:
            store.kill(job_id, reason)
        except TransitionError as exc:
            fail(str(exc), exitcodes.FAILED)
        except StoreError as exc:
            fail(str(exc))
    typer.echo(f"job {job_id}: {State.KILLED}")
