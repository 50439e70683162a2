"""The client end of the broker: HTTPS with this caller's token as the client
certificate, the broker's checked against the CA and its host name, and its role
checked too (a jobagent's certificate must not pass for the broker).

Calls are retried with backoff while the broker cannot be reached (a restart); a
refusal (an HTTP status, a TLS alert about our certificate) is never retried: it is
raised as BrokerError with the broker's one line.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from cryptography import x509

from sandbox_agent.broker.files import FILE_CAP
from sandbox_agent.printable import clipped
from sandbox_agent.tokens import Role, TokenError
from sandbox_agent.tokens.roles import identity_of

REPLY_CAP = FILE_CAP + (1 << 20)  # bytes of an answer: a kept file at most, and a little


class BrokerError(Exception):
    """The broker refused (``status`` its HTTP status), or could not be reached
    (``status`` None): one line. ``transient``: it could not be reached, or was busy,
    so the same call may be carried out later; a refusal (an HTTP status, a TLS alert
    about this caller's certificate) is not."""

    def __init__(self, message: str, status: int | None = None, *,
                 transient: bool = False) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.transient = transient


class BrokerClient:
    def __init__(
        self, url: str, cert: Path, key: Path, ca: Path, *, timeout: float = 30.0,
        attempts: int = 8, backoff: float = 0.5, max_backoff: float = 5.0,
    ) -> None:  # fmt: skip
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise BrokerError(f"{url}: give the broker as https://HOST:PORT")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 443
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff  # seconds before the first retry, doubled each time
        self.max_backoff = max_backoff  # ... up to this: 8 attempts span about 20 s
        self.ca = ca
        self.context = _context(cert, key, ca)
        self._connection: http.client.HTTPSConnection | None = None
        self._lock = threading.Lock()  # one request at a time on the kept connection

    def present(self, certificate_pem: bytes, key_pem: bytes) -> None:
        """Show another token from the next request on (a renewed one): the kept
        connection, which showed the old one, is closed. The TLS library reads a token
        from files only: they are written to a private directory and removed at once."""
        with tempfile.TemporaryDirectory(prefix="sandbox-agent-token-") as private:
            cert, key = Path(private) / "token.pem", Path(private) / "token.key"
            cert.write_bytes(certificate_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(key_pem)
            context = _context(cert, key, self.ca)
        with self._lock:
            self.context = context
            self._drop()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> http.client.HTTPSConnection:
        if self._connection is None:
            connection = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                                     timeout=self.timeout)  # fmt: skip
            connection.connect()
            assert isinstance(connection.sock, ssl.SSLSocket)
            _check_broker(connection.sock.getpeercert(binary_form=True), self.url)
            self._connection = connection
        return self._connection

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
             once: bool = False) -> dict[str, Any]:  # fmt: skip
        """One request with a JSON body; its JSON answer, or BrokerError (see _exchange
        for the retries and ``once``)."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        status, _headers, raw = self._exchange(method, path, data, headers, once)
        return self._answer(status, raw)

    def _answer(self, status: int, raw: bytes) -> dict[str, Any]:
        try:
            answer = json.loads(raw)
        except ValueError:
            raise BrokerError(f"{self.url}: the answer is not JSON (HTTP {status})",
                              status) from None  # fmt: skip
        if not isinstance(answer, dict):
            raise BrokerError(f"{self.url}: the answer is not a JSON object", status)
        if status != 200:
            raise BrokerError(str(answer.get("error", f"HTTP {status}")), status)
        return answer

    def _exchange(self, method: str, path: str, data: bytes | None, headers: dict[str, str],
                  once: bool) -> tuple[int, Any, bytes]:  # fmt: skip
        """One request; its status, headers and body. Retried with backoff while the
        broker cannot be reached or says it is busy (503: nothing was done). ``once``:
        a call that must not be carried out twice (kill, release) is not sent again
        once it may have reached the broker; match and submit carry a request key the
        broker answers a repeat with, so they can be."""
        failure: Exception | None = None
        with self._lock:
            for attempt in range(self.attempts):
                if attempt:
                    time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
                reused, sent = self._connection is not None, False
                try:
                    connection = self._connect()
                    connection.request(method, path, body=data, headers=headers)
                    sent = True
                    response = connection.getresponse()
                    if response.length is None or response.length > REPLY_CAP:
                        self._drop()
                        length = response.length
                        raise BrokerError(f"{self.url}: an answer of {length} bytes (at most "
                                          f"{REPLY_CAP}, announced)", response.status)  # fmt: skip
                    # read() to the announced length, or IncompleteRead: a broker cut off
                    # mid-answer (a restart) is retried, never taken for a short answer
                    raw = response.read()
                    if response.will_close:
                        self._drop()
                    if response.status == 503:  # busy: nothing was done, try again
                        failure = BrokerError(_error_of(raw, response.status), 503)
                        continue
                    break
                except ssl.SSLCertVerificationError as exc:
                    self._drop()
                    raise BrokerError(f"{self.url}: the broker's certificate is not "
                                      f"trusted: {_why(exc)}") from None  # fmt: skip
                except ssl.SSLError as exc:
                    self._drop()
                    if "ALERT" in str(exc.reason or "").upper():  # it refused our certificate
                        raise BrokerError(f"{self.url} refused this certificate in the TLS "
                                          f"handshake: {_why(exc)}") from None  # fmt: skip
                    failure = exc
                except (OSError, http.client.HTTPException) as exc:
                    self._drop()
                    failure = exc
                    # a kept connection the broker had closed while idle: never read
                    stale = reused and isinstance(exc, http.client.RemoteDisconnected)
                    if once and sent and not stale:
                        raise BrokerError(f"{self.url} gave no answer to a request it may have "
                                          f"carried out ({_why(exc)}); check before trying "
                                          "again", transient=True) from None  # fmt: skip
            else:
                raise BrokerError(f"{self.url} cannot be reached after {self.attempts} "
                                  f"attempts: {_why(failure or OSError())}",
                                  transient=True) from None  # fmt: skip
        return response.status, response.headers, raw

    @staticmethod
    def key() -> str:
        """A request key: the broker answers a retried match or submit with the answer
        it gave the first, instead of matching or queueing twice."""
        return uuid.uuid4().hex

    # -- the endpoints (api.ROUTES) --------------------------------------------------------

    def match(self, agent: str, slot: dict[str, Any], lease: int,
              exclude: list[int] | None = None) -> dict[str, Any] | None:  # fmt: skip
        body: dict[str, Any] = {"agent": agent, "slot": slot, "lease": lease,
                                "request": self.key()}  # fmt: skip
        if exclude:
            body["exclude"] = exclude
        job: dict[str, Any] | None = self.call("POST", "/v1/match", body)["job"]
        return job

    def job_token(self, job_id: int, agent: str, resubmission: int, csr: str) -> dict[str, Any]:
        return self.call("POST", f"/v1/jobs/{job_id}/token",
                         {"agent": agent, "resubmission": resubmission, "csr": csr})  # fmt: skip

    def renew(self) -> dict[str, Any]:
        """A new jobagent token for this client's key: its certificate, chain (PEM) and
        not_after; BrokerError with the broker's one line when it will not."""
        return self.call("POST", "/v1/agent/token")

    def heartbeat(self, job_id: int, resubmission: int, lease: int, *, agent: str | None = None,
                  usage: dict[str, Any] | None = None) -> bool:  # fmt: skip
        body: dict[str, Any] = {"resubmission": resubmission, "lease": lease}
        if agent is not None:
            body["agent"] = agent
        if usage:
            body["usage"] = usage
        return bool(self.call("POST", f"/v1/jobs/{job_id}/heartbeat", body)["held"])

    def state(self, job_id: int, resubmission: int, state: str, *, agent: str,
              detail: str = "", exit_code: int | None = None) -> None:  # fmt: skip
        body: dict[str, Any] = {"agent": agent, "resubmission": resubmission, "state": state,
                                "detail": detail}  # fmt: skip
        if exit_code is not None:
            body["exit_code"] = exit_code
        self.call("POST", f"/v1/jobs/{job_id}/state", body)

    def release(self, job_id: int, agent: str, resubmission: int, reason: str, *,
                fault: bool = True) -> None:  # fmt: skip
        body = {"agent": agent, "resubmission": resubmission, "reason": reason[:500],
                "fault": fault}  # fmt: skip
        self.call("POST", f"/v1/jobs/{job_id}/release", body, once=True)

    def submit(self, jdl: str, priority: int = 0) -> int:
        body = {"jdl": jdl, "priority": priority, "request": self.key()}
        return int(self.call("POST", "/v1/jobs", body)["id"])

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        query = f"?{urlencode({'state': state})}" if state else ""
        listed: list[dict[str, Any]] = self.call("GET", f"/v1/jobs{query}")["jobs"]
        return listed

    def status(self, job_id: int) -> dict[str, Any]:
        return self.call("GET", f"/v1/jobs/{job_id}")

    def send_file(self, job_id: int, name: str, data: bytes) -> None:
        """Keep one output or log at the broker (a job token's call, while SAVING). A
        repeat of one already kept with the same bytes is done, not an error."""
        digest = hashlib.sha256(data).hexdigest()
        headers = {"Content-Type": "application/octet-stream", "X-Content-SHA256": digest}
        path = f"/v1/jobs/{job_id}/files/{quote(name, safe='/')}"
        status, _headers, raw = self._exchange("PUT", path, data, headers, False)
        if status == 409 and "sent already" in raw.decode(errors="replace"):
            kept = {f["name"]: f["sha256"] for f in self.files(job_id)["files"]}
            if kept.get(name) == digest:
                return  # the first attempt's answer was lost: it is there
        self._answer(status, raw)

    def files(self, job_id: int) -> dict[str, Any]:
        return self.call("GET", f"/v1/jobs/{job_id}/files")

    def fetch_file(self, job_id: int, name: str) -> bytes:
        """One kept file's bytes, checked against the digest the broker keeps."""
        return self._fetch(f"/v1/jobs/{job_id}/files/{quote(name, safe='/')}", name)

    def _fetch(self, path: str, what: str) -> bytes:
        """A file's bytes (GET ``path``), checked against the digest sent with them."""
        status, headers, raw = self._exchange("GET", path, None, {}, False)
        if status != 200:
            self._answer(status, raw)  # raises the broker's refusal
        if hashlib.sha256(raw).hexdigest() != headers.get("X-Content-SHA256", ""):
            raise BrokerError(f"{self.url}: {what} arrived damaged (SHA-256 mismatch)", status)
        return raw

    def send_input(self, name: str, data: bytes) -> str:
        """Keep one input file at the broker for this user's jobs; the LFN they name it
        by. Sending the same bytes again is harmless: the same name comes back."""
        digest = hashlib.sha256(data).hexdigest()
        headers = {"Content-Type": "application/octet-stream", "X-Content-SHA256": digest}
        status, _headers, raw = self._exchange("PUT", f"/v1/inputs/{quote(name, safe='')}",
                                               data, headers, False)  # fmt: skip
        return str(self._answer(status, raw)["lfn"])

    def fetch_input(self, job_id: int, lfn: str) -> bytes:
        """One input of the job (a job token's call), checked against its digest."""
        path = f"/v1/jobs/{job_id}/inputs/{quote(lfn.removeprefix('/'), safe='/')}"
        return self._fetch(path, f"LF:{lfn}")

    def send_audit(self, job_id: int, data: bytes) -> None:
        """Keep an attempt's signed audit record at the broker (a jobagent's call)."""
        digest = hashlib.sha256(data).hexdigest()
        headers = {"Content-Type": "application/octet-stream", "X-Content-SHA256": digest}
        status, _headers, raw = self._exchange("PUT", f"/v1/jobs/{job_id}/audit", data,
                                               headers, False)  # fmt: skip
        self._answer(status, raw)

    def fetch_audit(self, job_id: int, resubmission: int | None = None) -> bytes:
        query = "" if resubmission is None else f"?resubmission={resubmission}"
        return self._fetch(f"/v1/jobs/{job_id}/audit{query}", f"job {job_id}'s audit record")

    def kill(self, job_id: int, reason: str = "") -> None:
        self.call("POST", f"/v1/jobs/{job_id}/kill", {"reason": reason} if reason else {},
                  once=True)  # fmt: skip


def _context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS 1.2 or newer, the broker checked against ``ca``, ``cert``/``key`` shown."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"cannot use {cert}, {key} and {ca} for TLS: {_why(exc)}") from None
    return context


def _error_of(raw: bytes, status: int) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"


def _check_broker(der: bytes | None, url: str) -> None:
    """The peer must be a broker token, not any certificate the CA signed."""
    try:
        role = identity_of(x509.load_der_x509_certificate(der or b"")).role
    except (TokenError, ValueError):
        raise BrokerError(f"{url}: the server's certificate is not a sandbox-agent token") from None
    if role is not Role.BROKER:
        raise BrokerError(f"{url}: the server shows a {role.value} token, not a broker's")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    text = str(exc) or type(exc).__name__
    return clipped(text, 200)
