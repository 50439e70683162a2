"""A site in a box for the pilot's network tests, run under ``unshare -n``: no route
leaves it, so even a failed defence cannot send a packet off this machine.

In it: this "node" (the namespace the pilot runs in, entered with nsenter) with a
service of its own on every address (port 7001); test hosts behind veth pairs, each
serving the same input file over HTTP on port 8000: an allowed one at 10.77.1.2, one
the site denies at 10.77.2.2, one at the metadata address 169.254.169.254.

    pilot_world.py DIR      serves DIR/input.dat; prints "ready", lives until stdin ends
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run with -I: tests/ itself
from networld import host, serve_on_node, sh

HOSTS = [("a", "10.77.1.1", "10.77.1.2", 24), ("d", "10.77.2.1", "10.77.2.2", 24),
         ("m", "169.254.0.1", "169.254.169.254", 16)]  # fmt: skip


def listening(address: str, port: int) -> None:
    """Wait until a test host's server answers: a job must not race its start."""
    for _ in range(500):
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"the test host at {address} never listened")


def main() -> None:
    served = sys.argv[1]
    sh("ip", "link", "set", "lo", "up")
    serve_on_node(7001)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, node_side, address, prefix in HOSTS:
            serve = ["/usr/bin/python3", "-m", "http.server", "8000", "--bind", address,
                     "--directory", served]  # fmt: skip
            processes += host(name, node_side, address, prefix, serve)
        for _, _, address, _ in HOSTS:
            listening(address, 8000)
        print("ready", flush=True)
        sys.stdin.read()  # the test is done when it closes our stdin
    finally:
        for process in processes:
            process.kill()


if __name__ == "__main__":
    main()
