"""Plumbing a job's own network namespace for egress through the agent (runtime/egress.py).

Run as a short-lived process of its own (``python -I -m sandbox_agent.runtime.egressns``),
never in the agent: joining a user namespace needs a single-threaded process. It joins
the network namespace of the sandbox's pid 1 (and, for an unprivileged agent, the
sandbox's user namespace first, where it then holds every capability), and there:

- gives the loopback an address and makes it the default route, so that a connect()
  to any IPv4 address gets as far as the output hook;
- installs nftables rules (Debian's ``nft``): every TCP connection is redirected to
  the agent's relay on the namespace's loopback, every DNS query to the agent's stub,
  and everything else that would leave the loopback is dropped (ICMP, other UDP, any
  IPv6 beyond ::1);
- opens the relay's listening socket and the stub's UDP socket in the namespace and
  hands both to the agent over the unix socket it was given (SCM_RIGHTS).

The payload starts only after this (bwrap waits on its --block-fd), in the namespace's
user namespace with no capability: it cannot change the rules or take the sockets'
ports. ``ip`` and ``nft`` run with CAP_NET_ADMIN raised as an ambient capability,
since execve drops the capabilities of a process whose uid is not 0 there.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
# The address the loopback gets for the default route's source: from the range for
# benchmarking (RFC 2544), never a real host; the relay sees it as the peer of each
# connection.
SOURCE = "198.18.0.1"
NFT_TABLE = "sandbox_agent_egress"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # where ip and nft are looked for, and run from
TOOLS = {"ip": "iproute2", "nft": "nftables"}  # each with its Debian package
LOOPBACK_WAIT = 10.0  # seconds bwrap may take to bring the namespace's loopback up
_SIOCGIFFLAGS, _IFF_UP = 0x8913, 0x1
_NS_GET_USERNS = 0xB701  # linux/nsfs.h: _IO(0xb7, 0x1)
_NETLINK_NETFILTER = 12  # linux/netlink.h
_CAP_NET_BIND_SERVICE, _CAP_NET_ADMIN = 10, 12
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 47, 2
_CAP_VERSION_3 = 0x20080522


class EgressError(RuntimeError):
    """The namespace could not be plumbed: one line saying which step and why."""


def missing() -> list[str]:
    """What this host lacks to plumb a job's network: the tools of TOOLS, each as
    "tool (package)", and the kernel's nftables (its netlink family)."""
    out = [f"{tool} ({package})" for tool, package in TOOLS.items()
           if shutil.which(tool, path=PATH) is None]  # fmt: skip
    try:  # the kernel loads nfnetlink on demand; a kernel without it refuses the family
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER).close()
    except OSError as error:
        out.append(f"nftables in the kernel (netfilter netlink: {error.strerror})")
    return out


def lacking() -> str | None:
    """What this host lacks to plumb a job's network, as one line, or None."""
    gone = missing()
    return f"this host lacks {', '.join(gone)}: install them" if gone else None


def ruleset(relay_port: int, dns_port: int) -> str:
    """The nftables rules of the job's namespace (the agent enforces where each allowed
    connection may go; these only make every one of them reach the agent). DNS first:
    a resolv.conf naming a local resolver (systemd-resolved's 127.0.0.53) reaches the
    agent's stub too."""
    return f"""\
table inet {NFT_TABLE} {{
    chain to_agent {{
        type nat hook output priority -100; policy accept;
        meta nfproto ipv4 udp dport 53 redirect to :{dns_port}
        ip daddr 127.0.0.0/8 return
        ip6 daddr ::1 return
        meta nfproto ipv4 meta l4proto tcp redirect to :{relay_port}
    }}
    chain nothing_else {{
        type filter hook output priority 0; policy drop;
        fib daddr type local accept
    }}
}}
"""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        raise EgressError(f"{what}: {os.strerror(ctypes.get_errno())}")


def join(pid: int, *, user: bool, inode: int | None = None) -> None:
    """Join the network namespace of ``pid``; when ``user``, first the user namespace
    that owns it (asked of the network namespace itself: bwrap's --disable-userns puts
    the sandbox in a user namespace nested below that one, which holds no capability
    over the network). ``inode``: the job's network namespace as its runtime reported
    it, so that a pid reused since is refused."""
    libc = _libc()
    # opened before anything is joined: /proc/PID stays readable from here
    net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.stat("/proc/self/ns/net")
        target = os.fstat(net)
        if (own.st_dev, own.st_ino) == (target.st_dev, target.st_ino):
            raise EgressError(f"pid {pid} shares the agent's own network namespace: not a job's")
        if inode is not None and target.st_ino != inode:  # the pid was reused: not the job
            raise EgressError(f"pid {pid} is no longer in the job's network namespace")
        if user:
            owner = fcntl.ioctl(net, _NS_GET_USERNS)
            try:
                _check(
                    libc.setns(owner, CLONE_NEWUSER),
                    f"setns(the user namespace of pid {pid}'s network)",
                )
            finally:
                os.close(owner)
        _check(libc.setns(net, CLONE_NEWNET), f"setns(net of pid {pid})")
    finally:
        os.close(net)


def raise_ambient() -> None:
    """CAP_NET_ADMIN and CAP_NET_BIND_SERVICE inheritable and ambient, so that ``ip``
    and ``nft`` keep them across execve."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]  # fmt: skip

    libc = _libc()
    header, data = Header(_CAP_VERSION_3, 0), (Data * 2)()
    _check(libc.capget(ctypes.byref(header), data), "capget")
    wanted = (1 << _CAP_NET_ADMIN) | (1 << _CAP_NET_BIND_SERVICE)
    if data[0].permitted & wanted != wanted:
        raise EgressError("the network namespace's owner gives this process no CAP_NET_ADMIN")
    data[0].inheritable |= wanted
    _check(libc.capset(ctypes.byref(header), data), "capset")
    for cap in (_CAP_NET_ADMIN, _CAP_NET_BIND_SERVICE):
        _check(libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap, 0, 0),
               "prctl(PR_CAP_AMBIENT_RAISE)")  # fmt: skip


def _run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20,
                          env={"PATH": PATH}, check=False)  # fmt: skip
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise EgressError(f"{' '.join(argv[:3])}: {said[0] if said else done.returncode}")


def loopback_up() -> bool:
    """Whether this namespace's loopback is up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
    return bool(struct.unpack("16sH22x", answer)[1] & _IFF_UP)


def await_loopback() -> None:
    """Wait for the runtime to bring the loopback up (bwrap does, in the sandbox's
    first process, and fails if its address is already there): the routes need it up."""
    deadline = time.monotonic() + LOOPBACK_WAIT
    while not loopback_up():
        if time.monotonic() > deadline:
            raise EgressError(f"the job's loopback was not up after {LOOPBACK_WAIT:.0f} s")
        time.sleep(0.005)


def plumb(
    relay_port: int, dns_port: int, *, bring_up: bool = False
) -> tuple[socket.socket, socket.socket]:
    """Inside the job's namespace: the routes, the rules, and the two sockets.
    ``bring_up``: the loopback is ours to bring up (no runtime does)."""
    if bring_up:
        _run(["ip", "link", "set", "lo", "up"])
    else:
        await_loopback()
    _run(["ip", "address", "add", f"{SOURCE}/32", "dev", "lo"])
    _run(["ip", "route", "add", "default", "dev", "lo", "src", SOURCE])
    _run(["nft", "-f", "-"], ruleset(relay_port, dns_port))
    relay = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    relay.bind(("127.0.0.1", relay_port))
    relay.listen(128)
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", dns_port))
    return relay, dns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="egressns")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--user", action="store_true", help="join its user namespace too")
    parser.add_argument("--fd", type=int, required=True, help="the unix socket to the agent")
    parser.add_argument("--relay-port", type=int, default=1080)
    parser.add_argument("--dns-port", type=int, default=53)
    parser.add_argument("--bring-up", action="store_true", help="bring the loopback up too")
    parser.add_argument("--netns", type=int, help="the inode of the job's network namespace")
    options = parser.parse_args(argv)
    back = socket.socket(fileno=options.fd)
    try:
        join(options.pid, user=options.user, inode=options.netns)
        if options.user:
            raise_ambient()
        relay, dns = plumb(options.relay_port, options.dns_port, bring_up=options.bring_up)
        socket.send_fds(back, [b"ok"], [relay.fileno(), dns.fileno()])
    except Exception as error:  # whatever it was: one line to the agent
        said = " ".join(str(error).split())
        back.sendall(f"egress: {type(error).__name__}: {said}".encode()[:1000])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
