"""Test hosts for the network tests, each in a network namespace of its own behind a
veth pair from the namespace the caller runs in. The callers run under ``unshare -n``:
no route leaves their namespace, so even a failed defence cannot send a packet off
this machine or to a real metadata service."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time


def needs(*tools: str) -> str | None:
    """Why the network tests cannot run here (they make veth pairs: root, and the
    tools), or None."""
    if os.geteuid() != 0:
        return "making test hosts with veth pairs needs root"
    for tool in ("unshare", "nsenter", "ip", "nft", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux, iproute2, nftables, {tool})"
    return None


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def holder(*prefix: str) -> subprocess.Popen[bytes]:
    """A process in a new network namespace (and what ``prefix`` adds), kept alive."""
    user = ["-U", "--map-user=1000", "--map-group=1000"] if prefix else []
    process = subprocess.Popen([*prefix, "unshare", "-n", *user, "sleep", "600"])
    mine = os.readlink("/proc/self/ns/net")
    for _ in range(200):
        try:
            if os.readlink(f"/proc/{process.pid}/ns/net") != mine:
                return process
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError("the holder never got its own network namespace")


def host(name: str, node_side: str, address: str, prefix: int,
         serve: list[str]) -> list[subprocess.Popen[bytes]]:  # fmt: skip
    """A test host at ``address`` behind a veth pair whose end here is ``node_side``,
    running ``serve`` (an argv): its namespace's keeper and its server."""
    keeper = holder()
    pid = str(keeper.pid)
    sh("ip", "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", pid)
    sh("ip", "address", "add", f"{node_side}/{prefix}", "dev", f"v{name}")
    sh("ip", "link", "set", f"v{name}", "up")
    inside = ["nsenter", "-t", pid, "-n"]
    sh(*inside, "ip", "link", "set", "lo", "up")
    sh(*inside, "ip", "link", "set", "eth0", "up")
    sh(*inside, "ip", "address", "add", f"{address}/{prefix}", "dev", "eth0")
    sh(*inside, "ip", "route", "add", "default", "via", node_side)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return [keeper, subprocess.Popen([*inside, *serve], **quiet)]  # type: ignore[call-overload]


def serve_on_node(port: int) -> None:
    """A service of the node's own, on every address it has: what no job may reach."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen()

    def answer() -> None:
        while True:
            client, _ = server.accept()
            client.sendall(b"the node's own service")
            client.close()

    threading.Thread(target=answer, daemon=True).start()
