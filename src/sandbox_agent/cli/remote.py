"""The options that point a user command (submit, jobs, status, kill) or the pilot at
a broker instead of the embedded queue: its URL and this caller's token."""

from __future__ import annotations

import hashlib
import os
import posixpath
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from sandbox_agent import exitcodes
from sandbox_agent.broker.client import BrokerClient, BrokerError
from sandbox_agent.broker.files import FILE_CAP
from sandbox_agent.catalogue import CatalogueError, Entry
from sandbox_agent.cli.app import fail
from sandbox_agent.tokens import TokenError
from sandbox_agent.tokens.keys import load_private_key

BrokerOption = Annotated[
    str | None,
    typer.Option("--broker", envvar="SANDBOX_AGENT_BROKER",
                 help="A broker's URL (https://HOST:PORT) instead of the embedded queue."),
]  # fmt: skip
CertOption = Annotated[
    Path | None,
    typer.Option("--cert", envvar="SANDBOX_AGENT_CERT", help="With --broker: your token."),
]
KeyOption = Annotated[
    Path | None,
    typer.Option("--key", envvar="SANDBOX_AGENT_KEY", help="With --broker: its key (0600)."),
]
CaOption = Annotated[
    Path | None,
    typer.Option("--ca", envvar="SANDBOX_AGENT_CA", help="With --broker: the CA of its token."),
]


def broker_client(
    broker: str | None, cert: Path | None, key: Path | None, ca: Path | None
) -> BrokerClient | None:
    """The client for ``--broker``, or None for the embedded queue."""
    if broker is None:
        given = [name for name, value in (("--cert", cert), ("--key", key), ("--ca", ca))
                 if value is not None]  # fmt: skip
        if given:
            fail(f"{', '.join(given)} go with --broker URL")
        return None
    missing = [name for name, value in (("--cert", cert), ("--key", key), ("--ca", ca))
               if value is None]  # fmt: skip
    if missing:
        fail(f"--broker needs {', '.join(missing)} (or SANDBOX_AGENT_CERT, SANDBOX_AGENT_KEY "
             "and SANDBOX_AGENT_CA)")  # fmt: skip
    assert cert is not None and key is not None and ca is not None

    try:
        load_private_key(key)  # refuses a key others may read, as ssh does
    except TokenError as exc:
        fail(str(exc))
    try:
        return BrokerClient(broker, cert, key, ca)
    except BrokerError as exc:
        fail(str(exc))


def broker_failed(exc: BrokerError) -> NoReturn:
    """A broker's refusal or absence as one line: the exit code says which."""
    if exc.status is None:
        fail(str(exc), exitcodes.ENVIRONMENT)
    if exc.status == 409:
        fail(str(exc), exitcodes.FAILED)
    fail(str(exc))


class SentToBroker:
    """What staging puts files into when the job goes to a broker: each local file is
    sent (the broker names it, as the home's catalogue would), and LF: names are left
    for the broker to check at submit. A broker that cannot be reached raises
    BrokerError, for broker_failed."""

    def __init__(self, client: BrokerClient) -> None:
        self.client = client

    def get(self, lfn: str) -> None:
        pass  # the broker checks its catalogue when the job is submitted

    def add_opened(self, src: int, shown: str, name: Callable[[str], str],
                   owner: str) -> Entry:  # fmt: skip
        """Send the file open on ``src`` (opened and judged by staging)."""

        chunks: list[bytes] = []
        size = 0
        try:
            while size <= FILE_CAP:
                chunk = os.read(src, min(1 << 20, FILE_CAP + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise CatalogueError(f"{shown}: cannot read the file ({exc.strerror})") from None
        data = b"".join(chunks)
        if len(data) > FILE_CAP:
            raise CatalogueError(f"{shown} is over {FILE_CAP} bytes, a broker's limit for one "
                                 "file; put large data on grid storage (InputData)")  # fmt: skip
        digest = hashlib.sha256(data).hexdigest()
        lfn = self.client.send_input(posixpath.basename(name(digest)), data)
        return Entry(lfn, digest, len(data), owner, time.time())
