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
import errno
import fcntl
import ipaddress
import json
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sandbox_agent.policy.destinations import (  # their old home was here
    ALWAYS_DENIED,
    Destination,
    IPAddress,
    IPNetwork,
    parse,
)
from sandbox_agent.runtime import egressns
from sandbox_agent.toolrun import run_tool

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
CONNECT_TIMEOUT = 10.0
DNS_TIMEOUT = 3.0
MAX_CONNECTIONS = 64  # a job's connections at once
MAX_QUERIES = 64  # a job's DNS queries in flight
IDLE = 600  # seconds a relayed connection may pass no byte either way
_CHUNK = 1 << 20  # bytes spliced at a time, and the pipe's size for it
F_SETPIPE_SZ = 1031  # linux/fcntl.h


class EgressError(RuntimeError):
    """Egress cannot be set up: one line saying why."""


def _ip_json(argv: list[str], what: str) -> list[dict[str, object]]:
    """What ``ip -json ARGV`` lists of the agent's own network namespace."""
    try:
        done = run_tool(["ip", "-json", *argv], capture_output=True, text=True, timeout=10,
                        check=False)  # fmt: skip
        listed = json.loads(done.stdout or "[]") if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        raise EgressError(f"cannot list this node's {what} (ip -json): {error}") from None
    if not isinstance(listed, list):
        raise EgressError(f"cannot list this node's {what}: {done.stderr.strip()[:200]}")
    return [entry for entry in listed if isinstance(entry, dict)]


def node_addresses() -> list[IPNetwork]:
    """Every address of the agent's own network namespace (``ip -json address``): the
    node's, which a job must never reach through the relay."""
    out = []
    for link in _ip_json(["address"], "addresses"):
        for info in link.get("addr_info", []):  # type: ignore[attr-defined]
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out.append(ipaddress.ip_network(info["local"]))
    return out


def gateways() -> list[IPNetwork]:
    """The gateways of the agent's routes (``ip -json route show table all``): no job
    has business with a router, and where the pilot runs in a container or a pod its
    gateway is the host itself (docker0's 172.17.0.1, a CNI bridge)."""
    out = []
    for route in _ip_json(["route", "show", "table", "all"], "routes"):
        hops = [route, *(hop for hop in route.get("nexthops", []) if isinstance(hop, dict))]  # type: ignore[attr-defined]
        for hop in hops:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out.append(ipaddress.ip_network(hop["gateway"]))
    return sorted(set(out), key=str)


@dataclass
class Rules:
    allow: list[Destination]  # empty: nowhere
    deny: list[Destination] = field(default_factory=list)
    node: list[IPNetwork] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # allow entries left out: why
    gateways: list[IPNetwork] = field(default_factory=list)  # the agent's routes' gateways

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
        for network in self.gateways:
            if address in network:
                return f"{address} is a gateway of this node's, never reachable from a job"
        for entry in self.deny:
            if entry.matches(address, port):
                return f"denied by network.deny {entry.written}"
        if not any(entry.matches(address, port) for entry in self.allow):
            return "not in network.allow"
        return None


@dataclass
class Tally:
    """What the relay did, for the audit record: connections, and the first refusals."""

    allowed: int = 0
    refused: int = 0
    refusals: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # allow names that opened nothing
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refuse(self, why: str) -> None:
        with self.lock:
            self.refused += 1
            if len(self.refusals) < 20:
                self.refusals.append(why)


class Egress:
    """The relay and the DNS stub of one job; ``close`` stops both and ends every
    connection still open. A job holds at most MAX_CONNECTIONS at once (each costs the
    agent two threads and six descriptors): past that, new ones are reset and counted,
    never queued; a connection idle for IDLE seconds is ended. The stub is one thread
    with at most MAX_QUERIES in flight."""

    def __init__(self, relay: socket.socket, dns: socket.socket, rules: Rules,
                 upstream: tuple[str, int]) -> None:  # fmt: skip
        self.relay, self.dns, self.rules, self.upstream = relay, dns, rules, upstream
        self.tally = Tally(unresolved=list(rules.unresolved))
        self.closed = threading.Event()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Lock()
        loops = (self._accept, self._answer)
        self.threads = [threading.Thread(target=loop, daemon=True) for loop in loops]
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.closed.set()
        with self.live_lock:
            ending = [*self.live, self.relay, self.dns]
        for sock in ending:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(timeout=5)
        for sock in (self.relay, self.dns):
            sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                inside, _ = self.relay.accept()
            except OSError as error:
                if self.closed.is_set() or error.errno in (errno.EBADF, errno.EINVAL):
                    return
                self.tally.refuse(f"accept: {error.strerror}")  # out of descriptors: wait
                time.sleep(0.1)
                continue
            if not self.slots.acquire(blocking=False):
                self._reset(inside, f"more than {MAX_CONNECTIONS} connections at once")
                inside.close()
                continue
            try:
                threading.Thread(target=self._connection, args=(inside,), daemon=True).start()
            except RuntimeError:  # no thread to be had
                self.slots.release()
                self._reset(inside, "the agent cannot start another thread")
                inside.close()

    def _connection(self, inside: socket.socket) -> None:
        try:
            with inside:
                self._relay(inside)
        finally:
            self.slots.release()

    def _relay(self, inside: socket.socket) -> None:
        try:
            raw = inside.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        except OSError:  # no conntrack entry: nowhere it meant to go
            return self._reset(inside, "a connection with no destination")
        port, packed = struct.unpack("!2xH4s8x", raw)
        address = ipaddress.IPv4Address(packed)
        why = self.rules.refusal(address, port) or _local(address)
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
            with self.live_lock:
                if self.closed.is_set():
                    return None
                self.live.update((inside, outside))
            try:
                back = threading.Thread(target=_pump, args=(outside, inside), daemon=True)
                back.start()
                _pump(inside, outside)
                back.join()
            finally:
                with self.live_lock:
                    self.live.difference_update((inside, outside))
        return None

    def _reset(self, sock: socket.socket, why: str) -> None:
        self.tally.refuse(why)
        # a reset, not an orderly close: the payload's connect fails at once
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _answer(self) -> None:
        """The DNS stub: each query that looks like one goes to the agent's resolver
        under an id of the stub's, and only that resolver's answers come back."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
            try:
                upstream.connect(self.upstream)  # answers from anywhere else are not read
            except OSError:
                return
            waiting: dict[int, tuple[float, bytes, tuple[str, int]]] = {}
            while not self.closed.is_set():
                ready, _, _ = select.select([self.dns, upstream], [], [], 0.5)
                now = time.monotonic()
                for key in [k for k, (t, _, _) in waiting.items() if now - t > DNS_TIMEOUT]:
                    del waiting[key]
                for sock in ready:
                    try:
                        data, asker = sock.recvfrom(65535)
                    except OSError:
                        if self.closed.is_set():
                            return
                        continue
                    if sock is self.dns:
                        if not _a_query(data) or len(waiting) >= MAX_QUERIES or asker is None:
                            continue
                        # an unpredictable id: an answer forged off the path must guess it
                        serial = secrets.randbelow(0x10000)
                        while serial in waiting:
                            serial = secrets.randbelow(0x10000)
                        waiting[serial] = (now, data[:2], asker)
                        with contextlib.suppress(OSError):
                            upstream.send(serial.to_bytes(2, "big") + data[2:])
                    elif len(data) >= 12 and int.from_bytes(data[:2], "big") in waiting:
                        _, original, asker = waiting.pop(int.from_bytes(data[:2], "big"))
                        with contextlib.suppress(OSError):
                            self.dns.sendto(original + data[2:], asker)


def _a_query(data: bytes) -> bool:
    """A DNS query in shape: a header, not an answer, a standard query, one question."""
    return (len(data) >= 17 and not data[2] & 0x80 and (data[2] >> 3) & 0xF == 0
            and data[4:6] == b"\x00\x01")  # fmt: skip


def _local(address: IPAddress) -> str | None:
    """Why ``address`` is this node's own at this moment (an address added since the
    rules were made, or a local route such as ``ip route add local 10.99.0.0/24 dev lo``),
    or None: only a local address can be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return None
    return f"{address} is this node's own address"


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Bytes from ``source`` to ``sink`` until either ends, or none came for IDLE
    seconds, through a pipe with os.splice (no copy into Python); then the write half
    of ``sink`` is shut."""
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return
    with contextlib.suppress(OSError):  # fewer, larger splices (the default pipe is 64 KiB)
        fcntl.fcntl(write_end, F_SETPIPE_SZ, _CHUNK)
    with contextlib.suppress(OSError):  # a sink that takes nothing for IDLE s ends it too
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", IDLE, 0))
    waiting = select.poll()
    waiting.register(source.fileno(), select.POLLIN)
    try:
        while waiting.poll(IDLE * 1000):
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
        with contextlib.suppress(OSError):
            source.shutdown(socket.SHUT_RD)


def resolver() -> tuple[str, int]:
    """The agent's own resolver: the first IPv4 nameserver of /etc/resolv.conf."""
    with contextlib.suppress(OSError), open("/etc/resolv.conf", errors="replace") as file:
        for line in file:
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver" and "." in words[1]:
                return words[1], 53
    return "127.0.0.1", 53


def rules_for(allow: Sequence[str], deny: Sequence[str], proxy: str = "") -> Rules:
    """A job's rules from its policy's network.allow, network.deny and network.proxy
    (reachable whatever allow says), names resolved now, and this node's addresses.
    EgressError when a name of the deny list cannot be resolved (what it closes would
    be unknown); a name of the allow list that cannot be is left out (it opens nothing),
    and said in ``Rules.unresolved``."""
    allowed: list[Destination] = []
    unresolved = []
    for entry in [*allow, *([proxy.removeprefix("http://").rstrip("/")] if proxy else [])]:
        try:
            allowed += parse(entry)
        except ValueError as error:
            unresolved.append(str(error))
    denied: list[Destination] = []
    for entry in deny:
        try:
            denied += parse(entry)
        except ValueError as error:
            raise EgressError(f"network.deny {error}: what it closes is unknown") from None
    return Rules(allowed, denied, node_addresses(), unresolved, gateways())


def open_egress(
    pid: int,
    rules: Rules,
    *,
    user: bool,
    upstream: tuple[str, int] | None = None,
    bring_up: bool = False,
    netns: int | None = None,
) -> Egress:
    """Plumb the network namespace of ``pid`` (the sandbox's pid 1) and start its relay
    and DNS stub; ``user``: join its user namespace too (an unprivileged agent);
    ``bring_up``: bring its loopback up (bwrap does it for its sandboxes); ``netns``:
    the inode of the namespace as the runtime reported it (a reused pid is refused)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with mine:
        # a file of the standard library alone: whatever the agent's Python finds
        argv = [sys.executable, "-I", "-S", egressns.__file__, "--pid", str(pid),
                "--fd", str(theirs.fileno()), *(["--user"] if user else []),
                *(["--bring-up"] if bring_up else []),
                *(["--netns", str(netns)] if netns is not None else [])]  # fmt: skip
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
            try:
                _, said = helper.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                helper.kill()
                _, said = helper.communicate()
    if message != b"ok" or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        lines = (message or said).decode(errors="replace").strip().splitlines()
        raise EgressError(lines[-1][-300:] if lines else "the namespace helper failed")
    relay = socket.socket(fileno=fds[0])
    dns = socket.socket(fileno=fds[1])
    return Egress(relay, dns, rules, upstream or resolver())
