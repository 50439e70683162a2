"""Throughput of a job's egress through the agent's relay, against the same transfer on
the node's own network, in the same run.

    sudo .venv/bin/python benchmarks/egress.py [--megabytes N] [--runs N]

Runs itself in a network namespace of its own (no route leaves it), with a test host
behind a veth pair (tests/networld.py) that sends N MiB over TCP. The
baseline reads them from the node's namespace directly (what host networking gives a
job); the relay reads them from a job's namespace plumbed by runtime/egress.py, each
connection checked against the rules and spliced by the agent. Median of the runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

READ = """
import socket, sys, time
size = int(sys.argv[1]); buffer = bytearray(1 << 20); got = 0
start = time.perf_counter()
with socket.create_connection(("10.77.1.2", 8001), timeout=30) as s:
    while got < size:
        n = s.recv_into(buffer)
        if not n:
            break
        got += n
print(got, time.perf_counter() - start)
"""
SEND = """
import socket, sys
size = int(sys.argv[1]); block = bytes(1 << 20)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8001)); s.listen()
while True:
    c, _ = s.accept()
    left = size
    while left > 0:
        left -= c.send(block[:min(left, len(block))])
    c.close()
"""


def read(prefix: list[str], size: int) -> float:
    done = subprocess.run([*prefix, sys.executable, "-I", "-S", "-c", READ, str(size)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    got, seconds = done.stdout.split()
    if int(got) != size:
        raise RuntimeError(f"read {got} of {size} bytes")
    return size / float(seconds)


def world(size: int, runs: int) -> None:
    import networld  # tests/: the same world the egress tests make

    from sandbox_agent.runtime import egress

    networld.sh("ip", "link", "set", "lo", "up")
    keeper, server = networld.host("a", "10.77.1.1", "10.77.1.2", 24,
                                   [sys.executable, "-I", "-S", "-c", SEND, str(size)])  # fmt: skip
    job = networld.holder()
    rules = egress.Rules(allow=egress.parse("10.77.1.2:8001"), node=egress.node_addresses())
    relay = egress.open_egress(job.pid, rules, user=False, bring_up=True)
    time.sleep(0.3)
    try:
        direct = [read([], size) for _ in range(runs)]
        through = [read(["nsenter", "-t", str(job.pid), "-n"], size) for _ in range(runs)]
    finally:
        relay.close()
        for process in (server, keeper, job):
            process.kill()
    mib = size / (1 << 20)
    base, relayed = statistics.median(direct), statistics.median(through)
    print(f"{mib:.0f} MiB over TCP, median of {runs}")
    print(f"  node's own network (host networking): {base / (1 << 20):,.0f} MiB/s")
    print(f"  a job's namespace through the relay:  {relayed / (1 << 20):,.0f} MiB/s")
    print(f"  ratio relay / host: {relayed / base:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.inside:
        world(options.megabytes << 20, options.runs)
        return
    if os.geteuid() != 0:
        sys.exit("benchmarks/egress.py makes network namespaces and veth pairs: run it as root")
    subprocess.run(["unshare", "-n", sys.executable, __file__, "--inside", "--megabytes",
                    str(options.megabytes), "--runs", str(options.runs)], check=True)  # fmt: skip


if __name__ == "__main__":
    main()
