"""Egress for a job in its own network namespace: the outside world it may reach, and
never the node itself.

The job's namespace is plumbed by runtime/egressns.py so that every TCP connection the
payload makes reaches the agent's relay, and every DNS query the agent's stub. The
relay learns where the payload meant to go (SO_ORIGINAL_DST), asks ``Rules`` whether
it may, and only then connects from the agent's own network, passing bytes both ways
(os.splice: the kernel copies them, not Python). What is refused gets a reset and is
counted. Nothing else leaves the namespace: no ICMP, no other UDP, no IPv6.

Whatever the site allows, these stay out of reach: the node's own addresses (its
loopback among them, where the pilot's and others' services listen), link-local
addresses (cloud metadata at 169.254.169.254 and fd00:ec2::254), the unspecified,
multicast and broadcast addresses.

Names in the allowlist are resolved by the agent when the rules are made; the payload's
own DNS answers never widen what it may reach.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from sandbox_agent.runtime import egressns
from sandbox_agent.toolrun import run_tool

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
CONNECT_TIMEOUT = 10.0
DNS_TIMEOUT = 3.0
_CHUNK = 1 << 20  # bytes spliced at a time, and the pipe's size for it
F_SETPIPE_SZ = 1031  # linux/fcntl.h
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Never reachable, whatever the site allows.
ALWAYS_DENIED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "fe80::/10", "ff00::/8", "fd00:ec2::254/128",
))  # fmt: skip


class EgressError(RuntimeError):
    """Egress cannot be set up: one line saying why."""


@dataclass(frozen=True)
class Destination:
    """One entry of network.allow or network.deny: addresses and, optionally, a port."""

    network: IPNetwork
    port: int | None = None  # None: every port
    written: str = ""  # as the policy wrote it

    def matches(self, address: IPAddress, port: int) -> bool:
        return address in self.network and (self.port is None or self.port == port)


def parse(entry: str, resolve: bool = True) -> list[Destination]:
    """``host:port``, ``address[:port]``, ``[v6]:port`` or ``network/prefix[:port]``; a
    host name is resolved here, each of its addresses an entry. ValueError names the
    entry."""
    text, port = entry, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        text, port = host, _port(rest.removeprefix(":"), entry) if rest else None
    elif text.count(":") == 1:
        text, written_port = text.split(":")
        port = _port(written_port, entry)
    try:
        return [Destination(ipaddress.ip_network(text, strict=False), port, entry)]
    except ValueError:
        pass
    if not resolve:
        raise ValueError(f"{entry}: not an address or network")
    try:
        found = socket.getaddrinfo(text, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as error:
        raise ValueError(f"{entry}: cannot resolve {text}: {error}") from None
    addresses = sorted({info[4][0] for info in found})
    return [Destination(ipaddress.ip_network(a), port, entry) for a in addresses]


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry}: the port must be a number from 1 to 65535")
    return int(text)


def node_addresses() -> list[IPNetwork]:
    """Every address of the agent's own network namespace (``ip -json address``): the
    node's, which a job must never reach through the relay."""
    done = run_tool(["ip", "-json", "address"], capture_output=True, text=True, timeout=10,
                    check=False)  # fmt: skip
    if done.returncode != 0:
        raise EgressError(f"cannot list this node's addresses: {done.stderr.strip()[:200]}")
    out = []
    for link in json.loads(done.stdout or "[]"):
        for info in link.get("addr_info", []):
            with contextlib.suppress(KeyError, ValueError):
                out.append(ipaddress.ip_network(info["local"]))
    return out


@dataclass
class Rules:
    allow: list[Destination]  # empty: anywhere not denied
    deny: list[Destination] = field(default_factory=list)
    node: list[IPNetwork] = field(default_factory=list)

    def refusal(self, address: IPAddress, port: int) -> str | None:
        """Why the payload may not reach ``address``:``port``, or None."""
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        for network in ALWAYS_DENIED:
            if address in network:
                return f"{address} is in {network}, never reachable from a job"
        for network in self.node:
            if address in network:
                return f"{address} is this node's own address"
        for entry in self.deny:
            if entry.matches(address, port):
                return f"denied by network.deny {entry.written}"
        if self.allow and not any(entry.matches(address, port) for entry in self.allow):
            return "not in network.allow"
        return None


@dataclass
class Tally:
    """What the relay did, for the audit record: connections, and the first refusals."""

    allowed: int = 0
    refused: int = 0
    refusals: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refuse(self, why: str) -> None:
        with self.lock:
            self.refused += 1
            if len(self.refusals) < 20:
                self.refusals.append(why)


class Egress:
    """The relay and the DNS stub of one job; ``close`` stops both."""

    def __init__(self, relay: socket.socket, dns: socket.socket, rules: Rules,
                 upstream: tuple[str, int]) -> None:  # fmt: skip
        self.relay, self.dns, self.rules, self.upstream = relay, dns, rules, upstream
        self.tally = Tally()
        self.closed = threading.Event()
        for target in (self._accept, self._answer):
            threading.Thread(target=target, daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.relay, self.dns):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                inside, _ = self.relay.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(inside,), daemon=True).start()

    def _connection(self, inside: socket.socket) -> None:
        with inside:
            try:
                raw = inside.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            except OSError:  # not redirected: a connect to the relay's own port
                return self._reset(inside, "a connection to the relay itself")
            port, packed = struct.unpack("!2xH4s8x", raw)
            address = ipaddress.IPv4Address(packed)
            why = self.rules.refusal(address, port)
            if why is not None:
                return self._reset(inside, f"{address}:{port}: {why}")
            try:
                outside = socket.create_connection((str(address), port), CONNECT_TIMEOUT)
            except OSError as error:
                return self._reset(inside, f"{address}:{port}: {error.strerror or error}")
            outside.settimeout(None)  # blocking again: os.splice on a non-blocking socket fails
            with self.tally.lock:
                self.tally.allowed += 1
            with outside:
                back = threading.Thread(target=_pump, args=(outside, inside), daemon=True)
                back.start()
                _pump(inside, outside)
                back.join()
        return None

    def _reset(self, sock: socket.socket, why: str) -> None:
        self.tally.refuse(why)
        # a reset, not an orderly close: the payload's connect fails at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _answer(self) -> None:
        while not self.closed.is_set():
            try:
                query, asker = self.dns.recvfrom(4096)
            except OSError:
                return
            threading.Thread(target=self._forward, args=(query, asker), daemon=True).start()

    def _forward(self, query: bytes, asker: tuple[str, int]) -> None:
        """One DNS query to the agent's resolver and its answer back, as they are."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.settimeout(DNS_TIMEOUT)
            try:
                out.sendto(query, self.upstream)
                answer = out.recv(65535)
                self.dns.sendto(answer, asker)
            except OSError:  # no answer: the payload's resolver times out, as it would
                return


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Bytes from ``source`` to ``sink`` until either ends, through a pipe with
    os.splice (no copy into Python); then the write half of ``sink`` is shut."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):  # fewer, larger splices (the default pipe is 64 KiB)
        fcntl.fcntl(write_end, F_SETPIPE_SZ, _CHUNK)
    try:
        while True:
            moved = os.splice(source.fileno(), write_end, _CHUNK)
            if moved == 0:
                break
            while moved:
                moved -= os.splice(read_end, sink.fileno(), moved)
    except OSError:
        pass
    finally:
        os.close(read_end)
        os.close(write_end)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def resolver() -> tuple[str, int]:
    """The agent's own resolver: the first IPv4 nameserver of /etc/resolv.conf."""
    with contextlib.suppress(OSError), open("/etc/resolv.conf", errors="replace") as file:
        for line in file:
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver" and "." in words[1]:
                return words[1], 53
    return "127.0.0.1", 53


def open_egress(pid: int, rules: Rules, *, user: bool,
                upstream: tuple[str, int] | None = None) -> Egress:  # fmt: skip
    """Plumb the network namespace of ``pid`` (the sandbox's pid 1) and start its relay
    and DNS stub; ``user``: join its user namespace too (an unprivileged agent)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with mine:
        # a file of the standard library alone: whatever the agent's Python finds
        argv = [sys.executable, "-I", "-S", egressns.__file__, "--pid", str(pid),
                "--fd", str(theirs.fileno()), *(["--user"] if user else [])]  # fmt: skip
        try:
            helper = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), env={},
                                      stderr=subprocess.PIPE)  # fmt: skip
        finally:
            theirs.close()
        mine.settimeout(30)
        try:
            message, fds, _, _ = socket.recv_fds(mine, 1024, 2)
        except OSError as error:
            helper.kill()
            raise EgressError(f"the namespace helper did not answer: {error}") from None
        finally:
            _, said = helper.communicate(timeout=30)
    if message != b"ok" or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        why = message.decode(errors="replace") or said.decode(errors="replace").strip()
        raise EgressError(why[-300:] or "the namespace helper failed")
    relay = socket.socket(fileno=fds[0])
    dns = socket.socket(fileno=fds[1])
    return Egress(relay, dns, rules, upstream or resolver())


def rules_for(allow: Iterable[str], deny: Iterable[str]) -> Rules:
    """The rules of a policy's network.allow and network.deny, with this node's own
    addresses; EgressError names an entry that cannot be read."""
    try:
        allowed = [d for entry in allow for d in parse(entry)]
        denied = [d for entry in deny for d in parse(entry)]
    except ValueError as error:
        raise EgressError(str(error)) from None
    return Rules(allowed, denied, node_addresses())
