"""The broker tests' support: a real broker on loopback for each test (the ``broker``
fixture, imported by the test modules), real TLS with the TEST CA (certs-test/), a fresh
SQLite queue, clients holding the committed test tokens."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox_agent.broker.client import BrokerClient, BrokerError
from sandbox_agent.broker.service import BrokerServer, make_server
from sandbox_agent.queue import Store

CERTS = Path(__file__).resolve().parents[1] / "certs-test"


def private_copy(names: list[str], directory: Path) -> Path:
    """certs-test files in a 0700 directory, keys 0600 (git keeps no modes)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    for name in names:
        shutil.copyfile(CERTS / name, directory / name)
        (directory / name).chmod(0o600 if name.endswith(".key") else 0o644)
    return directory


@dataclass
class Broker:
    server: BrokerServer
    url: str
    keys: Path  # private copies of the client tokens
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.server.endpoints.store

    def client(self, name: str, **options: Any) -> BrokerClient:
        """A client holding certs-test/<name>.pem and its key."""
        private_copy([f"{name}.pem", f"{name}.key"], self.keys)
        options.setdefault("attempts", 1)
        return BrokerClient(self.url, self.keys / f"{name}.pem", self.keys / f"{name}.key",
                            CERTS / "ca.pem", **options)  # fmt: skip

    def client_from(self, cert: Path, key: Path) -> BrokerClient:
        return BrokerClient(self.url, cert, key, CERTS / "ca.pem", attempts=1)

    def raw(self, name: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """One request exactly as given (hostile bodies and headers), as ``name``."""
        private_copy([f"{name}.pem", f"{name}.key"], self.keys)
        context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
        context.load_cert_chain(self.keys / f"{name}.pem", self.keys / f"{name}.key")
        port = self.server.server_address[1]
        connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for key, value in (headers or {}).items():
                connection.putheader(key, value)
            connection.endheaders()
            if body:
                connection.send(body)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()


SLOT = {"CPUCores": 2, "Memory": 4096, "Disk": 10000, "TTL": 86400, "Site": "local",
        "Platform": "Linux-x86_64"}  # fmt: skip


def running_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker serving on loopback until the generator is closed (a fixture's body)."""
    certs = private_copy(["ca.pem", "signing.pem", "signing.key", "crl.pem"], tmp_path / "certs")
    own = private_copy(["broker.pem", "broker.key"], tmp_path / "broker")
    lines: list[dict[str, Any]] = []
    server = make_server(certs, tmp_path / "queue", ("127.0.0.1", 0), own / "broker.pem",
                         own / "broker.key", lines.append)  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Broker(server, f"https://localhost:{server.server_address[1]}", tmp_path / "keys",
                     lines)  # fmt: skip
    finally:
        server.shutdown()
        thread.join()
        server.stop()


def lease_testuser_jobs(broker: Broker, count: int = 8,
                        jdl: Callable[[int], str] = lambda _n: 'Executable = "/bin/true";\n',
                        ) -> None:  # fmt: skip
    """Jobs 1..count of testuser (the owner the job-N test tokens name), each leased to
    node-1, so that the job-7 and job-8 tokens have their jobs; ``jdl(n)`` is job n's."""
    for number in range(1, count + 1):
        broker.store.submit(jdl(number), owner="testuser")
    agent = broker.client("jobagent")
    for _ in range(count):
        agent.match("node-1", SLOT, 600)


def refused(call: Callable[[], object]) -> BrokerError:
    """The broker's refusal of ``call``; the test fails if it was carried out."""
    with pytest.raises(BrokerError) as caught:
        call()
    return caught.value
