"""The host's network from inside: TCP to where the host listens (its loopback: the
agent's broker, local services; and its own address), UDP to an echo on the host, an
abstract unix socket of the host (no file, no permissions: X11, dbus, containerd shims).
Listening inside is reported, not judged. In egress mode, TCP to what the agent's relay
must refuse: what the policy's network.deny names.

Defences: the network namespace, with its own loopback (abstract socket names are per
namespace too); landlock (no TCP connect; ABI 6 scoping of abstract sockets); in egress
mode, the agent's relay.

A connect that succeeds reaches nothing by itself: in egress mode the relay accepts every
connection and resets those it refuses. What got through is a byte from the far side
(and the host's listeners, and the relay's tally, say what reached them).
"""

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy reads the package; the sandbox imports plain names (run.py)
    from sandbox_agent.wrapper.probe import attack_common as common
    from sandbox_agent.wrapper.probe.attack_common import Config, Result
else:
    import attack_common as common

MECHANISM = "network"
# A socket's timeout: socket.timeout is TimeoutError from 3.10 on; before, an OSError of
# its own, which ``except TimeoutError`` alone would let through to the next clause.
TIMEOUTS = (socket.timeout, TimeoutError)


def _connect_each(targets: "list[tuple[str, int]]", greeting: bytes, said: str) -> "Result":
    """TCP to each target, ``greeting`` sent if any: a leak when the far side says a
    byte (``said`` names it); refused, reset or closed with no byte is blocked (the
    relay accepts, then resets; the host's listeners record any real connection)."""
    leaked: list[str] = []
    seen: list[str] = []
    for address, port in targets:
        label = f"{address}:{port}"
        try:
            with socket.create_connection((address, port), timeout=2) as sock:
                sock.settimeout(2)
                try:
                    if greeting:
                        sock.sendall(greeting)
                    answer = sock.recv(64)
                except OSError as exc:
                    seen.append(common.oserror(f"{label}: connected, then", exc))
                    continue
        except OSError as exc:
            seen.append(common.oserror(label, exc))
            continue
        if answer:
            leaked.append(f"{label}: {said} {answer!r}")
        else:
            seen.append(f"{label}: connected, then closed with no byte")
    return common.either(leaked, seen)


def tcp_connect(config: "Config") -> "Result":
    """TCP connect to where the host listens: on its loopback (the agent's broker, local
    services) and on its own non-loopback address."""
    targets = config.get("tcp", [])
    if not targets:
        return common.na("no TCP target given")
    return _connect_each(targets, b"probe\n", "connected, the host said")


def egress_denied(config: "Config") -> "Result":
    """In egress mode, TCP to what the agent's relay must refuse whatever network.allow
    says: one address of each numeric network.deny entry (``denied``, given by the
    selftest in that mode only; never the metadata address, which a broken relay would
    reach). A connection is a leak when any byte comes back; the relay's tally, read by
    the agent after the run, must show each refused. Nothing is sent."""
    targets = config.get("denied", [])
    if not targets:
        return common.na("no denied destination given (the selftest gives one per numeric "
                         "network.deny entry, in egress mode only)")  # fmt: skip
    return _connect_each(targets, b"", "the far side said")


def udp_send(config: "Config") -> "Result":
    """UDP to where the host listens (it echoes). The host also counts what arrives:
    a datagram may get out even when no answer gets back."""
    targets = config.get("udp", [])
    if not targets:
        return common.na("no UDP target given")
    leaked: list[str] = []
    seen: list[str] = []
    for address, port in targets:
        label = f"{address}:{port}"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.5)
                sock.sendto(b"probe", (address, port))
                answer = sock.recv(64)
            leaked.append(f"{label}: the host echoed {answer!r}")
        except TIMEOUTS as exc:
            seen.append(common.oserror(f"{label} (sent, no echo)", exc))
        except OSError as exc:
            seen.append(common.oserror(label, exc))
    return common.either(leaked, seen)


def unix_abstract(config: "Config") -> "Result":
    """Connect to an abstract unix socket of the host (no file, no permissions: X11,
    dbus, containerd shims listen on them)."""
    name = config.get("abstract")
    if not name:
        return common.na("no abstract socket given")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect("\0" + name)
            sock.sendall(b"probe\n")
            answer = sock.recv(64)
    except OSError as exc:
        return common.blocked(common.oserror(f"@{name}", exc))
    return common.leaked(f"@{name}: connected, the host said {answer!r}")


def listen_inside(config: "Config") -> "Result":
    """Bind and listen on a TCP port inside. Not an attack by itself (the network
    namespace has only its own loopback): reported, not judged."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)
            port = sock.getsockname()[1]
    except OSError as exc:
        return common.na("refused: " + common.oserror("bind/listen", exc))
    return common.na(f"allowed: listened on 127.0.0.1:{port} inside")


ATTACKS = {
    "tcp_connect": common.Attack(MECHANISM, "TCP to the host's loopback services (the "
                                 "broker) and its address", "network namespace with its own "
                                 "loopback; landlock: no TCP connect", tcp_connect),
    "udp_send": common.Attack(MECHANISM, "UDP to the host", "network namespace", udp_send),
    "unix_abstract": common.Attack(MECHANISM, "an abstract unix socket of the host",
                                   "network namespace (abstract names are per namespace); "
                                   "landlock ABI 6 scoping", unix_abstract),
    "egress_denied": common.Attack(MECHANISM, "TCP to what the policy's network.deny lists "
                                   "(egress mode)", "egress: the agent's "
                                   "relay refuses them (a reset) and counts each refusal",
                                   egress_denied),
    "listen_inside": common.Attack(MECHANISM, "a listening socket inside (reported only)",
                                   "network namespace: nothing outside can reach it",
                                   listen_inside),
}  # fmt: skip
