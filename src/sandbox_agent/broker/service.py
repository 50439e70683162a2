"""The broker's transport: HTTPS with mutual TLS on a threading HTTP server from the
standard library, kept small enough to read in one sitting.

- TLS 1.2 or newer, a client certificate required and verified against the CA in the
  handshake: no certificate, another CA's, an expired one never reach a handler.
- Each connection is handled on its own thread, its handshake included (a client that
  stalls there holds only its own thread), with a timeout on every read and a cap on
  connections at once.
- Every request: the certificate verified again as a token (role, revocation with the
  CRL as it is now), the route from api.ROUTES, the role checked before the body is
  read, the body capped by its Content-Length, parsed strictly and checked against the
  route's fields; then endpoints.py. One JSON line per request to the log: who (peer,
  fingerprint, role, user), what (method, route), the status, the time; never a body.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cryptography import x509

from sandbox_agent.broker import api
from sandbox_agent.broker.caller import Caller, Refused
from sandbox_agent.broker.endpoints import LOGGED, Endpoints
from sandbox_agent.broker.schema import BadRequest, check
from sandbox_agent.printable import clipped
from sandbox_agent.queue import open_queue
from sandbox_agent.tokens import RenewalPolicy, Role, TokenAuthority, TokenError, files
from sandbox_agent.tokens.errors import StaleRevocationList
from sandbox_agent.tokens.verify import TokenVerifier
from sandbox_agent.wrapper.handoff import strict_loads

HANDSHAKE_TIMEOUT = 10.0  # seconds a client has to finish the TLS handshake
IO_TIMEOUT = 30.0  # seconds from an answer (or the handshake) to the next whole request
MAX_CONNECTIONS = 256  # at once; more are closed at accept
MAX_PER_PEER = 64  # at once from one address (a site's nodes may share one behind NAT)
DRAIN_TIMEOUT = 30.0  # seconds a stopping broker waits for the requests it is carrying out
# A file's bytes, in or out, are held whole in memory: at most this many at once (16 of
# 64 MiB: 1 GiB), a request waiting this long for its turn, then 503 (retried).
MAX_TRANSFERS = 16
TRANSFER_WAIT = 10.0


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The broker's TLS: its own token to show, the CA its clients must come from."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    # TLS 1.2: forward secrecy and AEAD only (1.3's suites are all of that kind)
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    return context


class BrokerServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], endpoints: Endpoints,
                 context: ssl.SSLContext, verifier: Callable[[], TokenVerifier],
                 log: Callable[[dict[str, Any]], None]) -> None:  # fmt: skip
        self.endpoints = endpoints
        self.context = context
        self.verifier = verifier  # made per request: it reads the CRL as it is now
        self.log = log
        self._count = threading.Lock()
        self._open = 0
        self._peers: dict[str, int] = {}
        # Deadlines a read cannot stretch: a client trickling one byte at a time still
        # loses its connection when its whole handshake, or whole request, is late.
        self._deadlines: dict[int, tuple[int, float, str]] = {}  # key -> (fd, when, phase)
        self._stop = threading.Event()
        # Requests inside the endpoints: a stopping broker lets them finish before it
        # closes the queue under them (a closed queue would answer them wrongly).
        self._settled = threading.Condition(self._count)
        self._working = 0
        self._draining = False
        self.transfers = threading.BoundedSemaphore(MAX_TRANSFERS)
        self._keys = itertools.count()
        self._watchdog = threading.Thread(target=self._watch, daemon=True)
        super().__init__(address, _Handler)  # type: ignore[arg-type]  # made by finish_request
        self._watchdog.start()

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()

    def enter(self) -> bool:
        """A request may go into the endpoints (False: the broker is stopping)."""
        with self._settled:
            if self._draining:
                return False
            self._working += 1
            return True

    def leave(self) -> None:
        with self._settled:
            self._working -= 1
            self._settled.notify_all()

    def stop(self, grace: float = DRAIN_TIMEOUT) -> bool:
        """After serve_forever has returned: refuse new requests (503, retry), let
        those already in the endpoints finish, then close the socket and the queue.
        False if some were still working after ``grace`` seconds."""
        with self._settled:
            self._draining = True
            settled = self._settled.wait_for(lambda: self._working == 0, grace)
        self.server_close()
        if settled:  # else left open under the requests still working: the process ends
            self.endpoints.store.close()
            self.endpoints.inputs.close()
        return settled

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0]) if client_address else "?"
        with self._count:
            refused = ""
            if self._open >= MAX_CONNECTIONS:
                refused = f"more than {MAX_CONNECTIONS} connections at once"
            elif self._peers.get(peer, 0) >= MAX_PER_PEER:
                refused = f"more than {MAX_PER_PEER} connections at once from one address"
            if not refused:
                self._open += 1
                self._peers[peer] = self._peers.get(peer, 0) + 1
        if refused:
            self.log({"peer": _peer(client_address), "status": "refused", "error": refused})
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(peer)
            raise

    def _release(self, peer: str) -> None:
        with self._count:
            self._open -= 1
            self._peers[peer] -= 1
            if not self._peers[peer]:
                del self._peers[peer]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(str(client_address[0]) if client_address else "?")

    def arm(self, key: int, fd: int, seconds: float, phase: str) -> None:
        """``key``'s connection (on ``fd``) must finish ``phase`` within ``seconds``."""
        with self._count:
            self._deadlines[key] = (fd, time.monotonic() + seconds, phase)

    def disarm(self, key: int) -> None:
        """Before the connection closes: its descriptor may be reused at once."""
        with self._count:
            self._deadlines.pop(key, None)

    def _watch(self) -> None:
        """Cut the connections past their deadline: a shutdown of the socket (on a
        duplicate descriptor, never the TLS object another thread reads) ends the
        blocked read at once."""
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._count:
                late = [(key, entry) for key, entry in self._deadlines.items() if entry[1] < now]
                for key, _entry in late:
                    del self._deadlines[key]
                # shut down under the lock: disarm (before any close) waits for it, so
                # the descriptor is still the late connection's
                for _key, (fd, _when, _phase) in late:
                    try:
                        with socket.socket(fileno=os.dup(fd)) as duplicate:
                            duplicate.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        continue
            for _key, (_fd, _when, phase) in late:
                self.log({"status": "timed-out", "error": f"no whole {phase} in time"})

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke mid-request (the client went away): one log line,
        not socketserver's traceback on stderr."""
        error = sys.exc_info()[1]
        self.log({"peer": _peer(client_address), "status": "dropped",
                  "error": clipped(f"{type(error).__name__}: {error}", 160)})  # fmt: skip

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the connection's own thread: the handshake, then the requests."""
        key = next(self._keys)
        self.arm(key, request.fileno(), HANDSHAKE_TIMEOUT, "handshake")
        try:
            self._serve_connection(key, request, client_address)
        finally:
            self.disarm(key)  # in case the wrap failed: the socket closes after this

    def _serve_connection(self, key: int, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        # an answer goes out in two writes (head, body): without this, Nagle's algorithm
        # holds the body until the client's delayed ACK, 40 ms on every request
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                self.log({"peer": _peer(client_address), "status": "tls-refused",
                          "error": _tls_reason(exc)})  # fmt: skip
                _linger(tls)
                return
            tls.settimeout(IO_TIMEOUT)
            self.arm(key, tls.fileno(), IO_TIMEOUT, "request")
            _Handler(tls, client_address, self, key)
        finally:
            self.disarm(key)
            tls.close()


def _linger(tls: ssl.SSLSocket) -> None:
    """Close after a refused handshake without resetting the connection: with TLS 1.3
    the client may already have sent its request, and a close with that unread would
    send a reset that can overtake our alert. The client would then see a bare EOF
    instead of why its certificate was refused."""
    deadline, left = time.monotonic() + 1.0, 64 * 1024  # a second and 64 KiB, no more
    try:
        tls.shutdown(socket.SHUT_WR)  # the alert is out; tell the client we are done
        while left > 0 and (remaining := deadline - time.monotonic()) > 0:
            tls.settimeout(remaining)
            data = tls.recv(min(left, 65536))  # after shutdown() this reads the bare socket
            if not data:
                break
            left -= len(data)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: BrokerServer
    protocol_version = "HTTP/1.1"  # keep-alive: a pilot's calls share one handshake
    server_version = "sandbox-agent-broker"
    sys_version = ""

    def __init__(self, request: Any, client_address: Any, server: BrokerServer,
                 key: int) -> None:  # fmt: skip
        self.key = key  # the connection's, for its deadlines
        self.body_read = False
        self.transferring = False  # holds one of the server's transfers
        super().__init__(request, client_address, server)

    def do_GET(self) -> None:
        self.serve("GET")

    def do_POST(self) -> None:
        self.serve("POST")

    def do_PUT(self) -> None:
        self.serve("PUT")

    def do_DELETE(self) -> None:
        self.serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # http.server's own lines (malformed requests): ours are in serve()

    def serve(self, method: str) -> None:
        try:
            self.serve_one(method)
        finally:
            if self.transferring:  # held from before the body was read to after the answer
                self.transferring = False
                self.server.transfers.release()

    def serve_one(self, method: str) -> None:
        started = time.monotonic()
        self.body_read = False
        entry: dict[str, Any] = {"peer": _peer(self.client_address), "method": method}
        status, answer = 500, {"error": "internal error; the broker's log has the cause"}
        try:
            status, answer = self.answer(method, entry)
        except Refused as refused:
            status, answer = refused.status, {"error": str(refused)}
        except Exception as exc:  # a bug must not take the service down
            entry["exception"] = type(exc).__name__
        entry.update(status=status, ms=round((time.monotonic() - started) * 1000, 2))
        if "error" in answer:
            entry["error"] = answer["error"]
        if not self.body_read and self.headers.get("Content-Length", "0") != "0":
            self.close_connection = True  # refused unread: the body would pass for a request
        self.server.log(entry)
        self.reply(status, answer)
        # the next request (or the idle wait before it) must be whole within IO_TIMEOUT
        self.server.arm(self.key, self.connection.fileno(), IO_TIMEOUT, "request")

    def answer(self, method: str, entry: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        caller = self.caller(entry)
        parts = urlsplit(self.path)
        route, job_id, name, other = api.find(method, parts.path)
        entry["path"] = clipped(parts.path, 120)
        if route is None:
            raise Refused(405 if other else 404, f"no {method} {entry['path']} here; "
                          f"the endpoints are in {api.OPENAPI_PATH}")  # fmt: skip
        entry["route"] = route.name
        if caller.role not in route.roles:
            takes = ", ".join(sorted(route.roles))
            raise Refused(403, f"{Role(caller.role).with_article} token may not call {route.name} "
                          f"({method} {route.path}); it takes {takes}")  # fmt: skip
        if route.raw:
            if not self.server.transfers.acquire(timeout=TRANSFER_WAIT):
                raise Refused(503, f"the broker is moving {MAX_TRANSFERS} files already; retry")
            self.transferring = True
        body = self.raw_body(route) if route.raw and method == "PUT" else self.body(route)
        if name is not None:
            try:
                body["name"] = unquote(name, errors="strict")
            except UnicodeDecodeError:
                raise Refused(400, "the file name is not UTF-8") from None
        self.server.disarm(self.key)  # the request is in: the rest of the time is ours
        try:
            query = dict(parse_qsl(parts.query, max_num_fields=8)) if parts.query else {}
        except ValueError:
            raise Refused(400, "the query has more than 8 fields") from None
        if not self.server.enter():
            self.close_connection = True
            raise Refused(503, "the broker is stopping; retry")
        try:
            answer = self.server.endpoints.handle(route.name, caller, job_id, body, query)
        finally:
            self.server.leave()
        logged = answer.pop(LOGGED, None)  # what the log keeps of it (a renewal's new token)
        if isinstance(logged, dict):
            entry.update(logged)
        return 200, answer

    def caller(self, entry: dict[str, Any]) -> Caller:
        der = self.connection.getpeercert(binary_form=True)
        if not der:  # the context requires one; never trust that alone
            raise Refused(403, "no client certificate")
        try:
            verifier = self.server.verifier()
        except (TokenError, ValueError, OSError):  # its CRL file is damaged or unreadable
            raise Refused(503, "the broker cannot read its revocation list; its operator "
                          "must fix crl.pem") from None  # fmt: skip
        try:
            certificate = x509.load_der_x509_certificate(der)
            verified = verifier.verify(certificate, self.server.endpoints.authority.chain)
        except StaleRevocationList:  # the broker's fault, not the caller's: retry later
            raise Refused(503, "the broker's revocation list is out of date; its operator "
                          "must renew crl.pem (certs revoke)") from None  # fmt: skip
        except (TokenError, ValueError) as exc:
            raise Refused(403, f"this certificate is refused: {exc}") from None
        identity = verified.identity
        user = identity.job.user if identity.job is not None else identity.user
        entry.update(fingerprint=verified.fingerprint.removeprefix("sha256:")[:16],
                     role=identity.role.value, user=user)  # fmt: skip
        if identity.job is not None:
            entry["job"] = f"{identity.job.job_id}.{identity.job.resubmission}"
        return Caller(verified, identity.role.value, user)

    def raw_body(self, route: api.Route) -> dict[str, Any]:
        """A file's bytes (a PUT of a raw route), with the digest its sender announced."""
        data = self.read_body(route, "application/octet-stream")
        digest = self.headers.get("X-Content-SHA256", "")
        if len(digest) != 64 or not all(c in "0123456789abcdefABCDEF" for c in digest):
            raise Refused(400, "X-Content-SHA256 must be the body's SHA-256, 64 hex digits")
        return {"data": data, "sha256": digest}

    def read_body(self, route: api.Route, kind: str) -> bytes:
        """The body, by its Content-Length: refused unread over the route's cap, read
        whole otherwise (the next request on the connection follows it)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise Refused(411, "send the body with a Content-Length, not chunked")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise Refused(411, "a Content-Length is required")
        if not re.fullmatch(r"[0-9]{1,12}", length_text):  # ASCII digits only: not '²'
            raise Refused(400, "Content-Length is not a number")
        length = int(length_text)
        if length > route.cap:
            self.close_connection = True  # the body is not read: the stream is lost
            raise Refused(413, f"the body of {length} bytes is over {route.name}'s cap "
                          f"of {route.cap}")  # fmt: skip
        data = self.rfile.read(length)
        self.body_read = True
        if len(data) != length:
            self.close_connection = True
            raise Refused(400, f"the body ended after {len(data)} of {length} bytes")
        if self.headers.get_content_type() != kind:
            raise Refused(415, f"the body must be {kind}")
        return data

    def body(self, route: api.Route) -> dict[str, Any]:
        if route.body is None:
            if self.headers.get("Content-Length") not in (None, "0") or \
                    "chunked" in self.headers.get("Transfer-Encoding", "").lower():  # fmt: skip
                raise Refused(400, f"{route.name} takes no body")
            self.body_read = True
            return {}
        data = self.read_body(route, "application/json")
        try:
            parsed = strict_loads(data.decode("utf-8"))
        except RecursionError:
            raise Refused(400, "the body is nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise Refused(400, f"the body is not JSON: {clipped(exc, 120)}") from None
        try:
            return check(parsed, route.body, route.name)
        except BadRequest as exc:
            raise Refused(400, str(exc)) from None

    def reply(self, status: int, answer: dict[str, Any]) -> None:
        content = answer.get("content")
        if isinstance(content, bytes):  # a file: its bytes as they were kept
            data, kind = content, "application/octet-stream"
        else:
            data, kind = json.dumps(answer, separators=(",", ":")).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            if isinstance(content, bytes):
                self.send_header("X-Content-SHA256", str(answer["sha256"]))
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client went away


def _peer(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return "?"


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return clipped(exc.reason or exc, 120)
    if isinstance(exc, TimeoutError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:g} s"
    return clipped(exc, 120)


def make_server(certs: Path, queue: Path | str, listen: tuple[str, int], cert: Path,
                key: Path, log: Callable[[dict[str, Any]], None],
                renewal: RenewalPolicy | None = None) -> BrokerServer:  # fmt: skip
    """The broker of the authority in ``certs`` and the queue in ``queue`` (a directory,
    or a postgresql:// DSN), listening on ``listen`` with the broker token
    ``cert``/``key``, renewing jobagent tokens as ``renewal`` says; serve_forever() runs
    it."""
    authority = TokenAuthority.load(certs)
    endpoints = Endpoints(open_queue(queue), authority, certs, renewal=renewal)
    context = server_context(cert, key, certs / files.CA_CERT)
    server = BrokerServer(listen, endpoints, context,
                          lambda: authority.verifier(endpoints.crl()), log)  # fmt: skip
    threading.Thread(target=endpoints.warm, daemon=True).start()
    return server
