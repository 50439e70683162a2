"""``sandbox-agent broker serve``: the broker service for many pilots, on the token
authority and the queue of --home."""

from __future__ import annotations

import json
import signal
import ssl
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from sandbox_agent import exitcodes
from sandbox_agent.broker.service import DRAIN_TIMEOUT, make_server
from sandbox_agent.cli.app import fail, home_of
from sandbox_agent.tokens import RenewalPolicy, Role, TokenError
from sandbox_agent.tokens.authority import DEFAULT_LIFETIME, MAX_LIFETIME, RENEWAL_LIMIT
from sandbox_agent.tokens.keys import load_private_key

broker_app = typer.Typer(help="The broker service: one queue and authority for many pilots.",
                         no_args_is_help=True)  # fmt: skip


def _address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        fail(f"--listen {listen}: give HOST:PORT, such as 127.0.0.1:8443")
    return host, int(port)


@broker_app.command("serve")
def serve(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT to listen on.")] = (
        "127.0.0.1:8443"
    ),
    cert: Annotated[
        Path | None,
        typer.Option("--cert", help="The broker's token [default: HOME/certs/broker.pem]."),
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="Its key [default: HOME/certs/broker.key].")
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="SANDBOX_AGENT_DB",
            help="postgresql://... for a queue several brokers share "
            "[default: HOME/queue, SQLite].",
        ),
    ] = None,
    agent_token_lifetime: Annotated[
        int,
        typer.Option(
            "--agent-token-lifetime",
            min=1,
            max=int(MAX_LIFETIME[Role.JOBAGENT].total_seconds()),  # the role's cap
            help="Seconds a jobagent token the broker renews lives (at most 2 days).",
        ),
    ] = int(DEFAULT_LIFETIME[Role.JOBAGENT].total_seconds()),
    renew_limit: Annotated[
        int,
        typer.Option(
            "--renew-limit",
            min=0,
            max=366 * 86400,  # a year: a line of renewals longer than that is a mistake
            help="Seconds after a node's first jobagent token was issued that the broker "
            "renews it (at most a year); 0: never.",
        ),
    ] = int(RENEWAL_LIMIT.total_seconds()),
) -> None:
    """Serve the queue and the token authority of --home over HTTPS with mutual TLS.
    One JSON line per request on stderr; SIGTERM or SIGINT stops it."""

    home = home_of(ctx)
    certs = home / "certs"
    cert = cert or certs / "broker.pem"
    key = key or certs / "broker.key"
    if not cert.exists():
        fail(f"{cert}: no broker token; make one with: sandbox-agent --home {home} certs issue "
             "--role broker --dns HOST --ip ADDRESS --name broker")  # fmt: skip
    try:
        load_private_key(key)
    except TokenError as exc:
        fail(str(exc))
    try:
        renewal = RenewalPolicy(timedelta(seconds=agent_token_lifetime),
                                timedelta(seconds=renew_limit))  # fmt: skip
    except ValueError as exc:
        fail(f"--agent-token-lifetime {agent_token_lifetime}: {exc}")
    lock = threading.Lock()

    def log(entry: dict[str, Any]) -> None:
        with lock:
            sys.stderr.write(json.dumps(entry, separators=(",", ":")) + "\n")
            sys.stderr.flush()

    try:
        if db is not None and not db.startswith(("postgresql://", "postgres://")):
            fail(f"--db {db[:40]}: give a postgresql://USER@HOST:PORT/DATABASE DSN")
        server = make_server(certs, db or home / "queue", _address(listen), cert, key, log,
                             renewal)  # fmt: skip
    except TokenError as exc:
        fail(str(exc), exitcodes.ENVIRONMENT)
    except ssl.SSLError as exc:
        fail(f"cannot use {cert} and {key} for TLS: {exc.reason or exc}", exitcodes.ENVIRONMENT)
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}", exitcodes.ENVIRONMENT)
    except ValueError as exc:  # the store, the TLS files
        fail(str(exc), exitcodes.ENVIRONMENT)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    queue = server.endpoints.store.where
    typer.echo(f"broker: https://{host}:{port} (clients trust {certs / 'ca.pem'}; queue "
               f"{queue})", err=True)  # fmt: skip

    def stop(_signum: int, _frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        if not server.stop():
            typer.echo("broker: stopped with requests still unanswered after "
                       f"{DRAIN_TIMEOUT:.0f} s; their clients retry", err=True)  # fmt: skip
    typer.echo("broker: stopped", err=True)
