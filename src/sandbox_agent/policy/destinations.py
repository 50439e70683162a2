"""The entries of ``network.allow`` and ``network.deny``: what each may be written as,
and the addresses no policy can open.

An entry is ``host:port``, ``address[:port]``, ``[v6-address]:port`` or
``network/prefix[:port]``; no port means every port. A host name is resolved by the
agent when a job's rules are made (``parse``), never by the payload's own DNS; loading
a policy checks only that the entry can be read (``check``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Never reachable, whatever the site allows: the unspecified, loopback, link-local
# (cloud metadata at 169.254.169.254), benchmarking, multicast and broadcast addresses.
ALWAYS_DENIED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
    # benchmarking: the job's own loopback has 198.18.0.1, which must not be relayed out
    "198.18.0.0/15",
    "::/128", "::1/128", "fe80::/10", "ff00::/8",
    # cloud metadata and platform services outside link-local: AWS (IPv6), Azure's
    # WireServer, Alibaba Cloud
    "fd00:ec2::254/128", "168.63.129.16/32", "100.100.100.200/32",
))  # fmt: skip


@dataclass(frozen=True)
class Destination:
    """One entry of network.allow or network.deny: addresses and, optionally, a port."""

    network: IPNetwork
    port: int | None = None  # None: every port
    written: str = ""  # as the policy wrote it

    def matches(self, address: IPAddress, port: int) -> bool:
        return address in self.network and (self.port is None or self.port == port)


def split(entry: str) -> tuple[str, int | None, IPNetwork | None]:
    """The entry's host part, its port, and its network when the host part is an
    address or a network (None: a host name). ValueError names the entry."""
    text, port = entry, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        text, port = host, _port(rest.removeprefix(":"), entry) if rest else None
    elif text.count(":") == 1:
        text, written_port = text.split(":")
        port = _port(written_port, entry)
    try:
        return text, port, _unmapped(ipaddress.ip_network(text))
    except ValueError as error:
        if "has host bits set" in str(error):  # 10.1.2.3/8: which was meant is unclear
            wider = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{entry}: has bits set past its prefix; write {wider}, or the "
                             "address alone") from None  # fmt: skip
    # a name: labels of letters, digits and hyphens, the last starting with a letter, so
    # that shorthand addresses ("10.1", "0x0a.1", "2130706433") are not taken for names
    labels = text.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or not labels[-1][:1].isalpha():
        raise ValueError(f"{entry}: not an address, a network or a host name")
    return text, port, None


def check(entry: str) -> str:
    """``entry`` when it can be read (a name is not resolved); ValueError naming it."""
    split(entry)
    return entry


def parse(entry: str, resolve: bool = True) -> list[Destination]:
    """The destinations ``entry`` stands for: a host name resolved here, each of its
    addresses one (``resolve`` False: a name is refused). ValueError names the entry."""
    text, port, network = split(entry)
    if network is not None:
        return [Destination(network, port, entry)]
    if not resolve:
        raise ValueError(f"{entry}: not an address, a network or a host name")
    try:
        found = socket.getaddrinfo(text, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as error:
        raise ValueError(f"{entry}: cannot resolve {text}: {error}") from None
    addresses = sorted({info[4][0] for info in found})
    return [Destination(_unmapped(ipaddress.ip_network(a)), port, entry) for a in addresses]


def never_reachable(network: IPNetwork) -> IPNetwork | None:
    """The always-denied range ``network`` lies inside, or None."""
    for denied in ALWAYS_DENIED:
        if network.version == denied.version and network.subnet_of(denied):  # type: ignore[arg-type]
            return denied
    return None


def unreachable(entry: str) -> str | None:
    """Why no job of egress mode can reach a network.allow entry or a proxy's HOST:PORT,
    whatever the lists say, or None: inside an always-denied range
    (ALWAYS_DENIED), localhost (the loopback, RFC 6761), or IPv6, which the
    relay does not carry (docs/network.md). A name is not known before the agent
    resolves it."""
    try:
        host, _port, network = split(entry)
    except ValueError:  # loading refuses such an entry
        return None
    if network is None:
        name = host.lower().rstrip(".")
        return "localhost, the node's loopback" if name == "localhost" or name.endswith(
            ".localhost") else None  # fmt: skip
    denied = never_reachable(network)
    if denied is not None:
        return f"inside {denied}"
    if network.version == 6:
        return "IPv6, which egress mode does not carry"
    return None


def _unmapped(network: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) as the IPv4 one it is: the
    relay compares IPv4 destinations."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


def _port(text: str, entry: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"{entry}: the port must be a number from 1 to 65535")
    return int(text)
