"""A small world for the egress tests, made inside a network namespace of its own (run
under ``unshare -n`` by tests/runtime/test_egress.py): no route leaves it, so even a
failed defence cannot send a packet off this machine or to a real metadata service.

In it: this "node" (the agent's namespace) with a service on every address; test
hosts behind veth pairs (an allowed one at 10.77.1.2, a denied one at 10.77.2.2, one
at a metadata-style link-local address), each serving a file; a job namespace plumbed
by runtime/egress.py; and a payload in that namespace that tries each of them.

    egress_world.py SRC root|nobody     prints one JSON object: what the payload saw
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run with -I: tests/ itself
from networld import holder, host, serve_on_node, sh

SIZE = 4 << 20  # bytes each test host serves
SERVE = f"""
import socket, sys, threading
data = bytes(range(256)) * ({SIZE} // 256)
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen()
    while True:
        c, _ = s.accept(); c.sendall(data); c.close()
def dns():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 53))
    while True:
        q, a = u.recvfrom(4096)
        u.sendto(q[:2] + bytes([q[2] | 0x80]) + q[3:] + b"ANSWER", a)  # an answer, same id
def hold():  # accepts each connection and keeps it 6 s, saying nothing
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8002)); s.listen(256)
    while True:
        threading.Timer(6, s.accept()[0].close).start()
threading.Thread(target=dns, daemon=True).start()
threading.Thread(target=hold, daemon=True).start()
tcp()
"""
PAYLOAD = r"""
import json, socket
out = {}
def fetch(host, port):
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            got = 0
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    return got
                got += len(chunk)
    except OSError as e:
        return type(e).__name__
for name, host, port in [("allowed", "10.77.1.2", 8000), ("denied", "10.77.2.2", 8000),
                         ("metadata", "169.254.169.254", 8000), ("node", "10.77.1.1", 7001),
                         ("node_other", "10.77.2.1", 7001), ("own_loopback", "127.0.0.1", 7001),
                         ("other_port", "10.77.1.2", 7001)]:
    out[name] = fetch(host, port)
out["relay_itself"] = fetch("127.0.0.1", 1080)
# addresses of the node's that came after the rules were made, and a local route
out["node_later"] = fetch("10.55.0.1", 7001)
out["node_local_route"] = fetch("10.99.0.5", 7001)
# more connections at once than a job may hold: the rest are reset, the relay lives on
import time
opened = [socket.create_connection(("10.77.1.2", 8002), timeout=5) for _ in range(80)]
time.sleep(2)  # the relay has reset those past the cap; the host holds the rest for 6 s
held, reset = [], 0
for c in opened:
    c.setblocking(False)
    try:
        gone = c.recv(1) == b""
    except BlockingIOError:
        gone = False
    except OSError:
        gone = True
    if gone:
        reset += 1
        c.close()
    else:
        held.append(c)
out["held"], out["reset_past_the_cap"] = len(held), reset
out["allowed_while_full"] = fetch("10.77.1.2", 8000)
time.sleep(5)  # the host ends the held ones; the relay frees their places
for c in held:
    c.close()
time.sleep(0.5)
out["allowed_after"] = fetch("10.77.1.2", 8000)
try:
    socket.create_connection(("2001:db8::1", 80), timeout=5)
    out["ipv6"] = "connected"
except OSError as e:
    out["ipv6"] = type(e).__name__
try:
    taken = socket.socket(); taken.bind(("127.0.0.1", 1080)); out["relay_port"] = "bound"
except OSError as e:
    out["relay_port"] = type(e).__name__
import os, subprocess
if os.getuid() != 0:  # a payload as a sandbox runs it: no capability (not the test's root)
    flush = subprocess.run(["nft", "flush", "ruleset"], capture_output=True)
    out["nft_flush"] = flush.returncode
    out["after_flush"] = fetch("10.77.1.1", 7001)
# a real query for example.test, A, to an address the payload's resolver might have
query = bytes.fromhex("beef01000001000000000000") + b"\x07example\x04test\x00\x00\x01\x00\x01"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.sendto(query, ("192.0.2.53", 53))
try:
    got = u.recv(512)
    out["dns"] = "answer" if got[:2] == b"\xbe\xef" and got.endswith(b"ANSWER") else repr(got)
except OSError as e:
    out["dns"] = type(e).__name__
u.settimeout(2)
u.sendto(b"\x00ARBITRARY NON-DNS BYTES", ("192.0.2.53", 53))  # not passed on
try:
    out["dns_junk"] = repr(u.recv(512))
except OSError as e:
    out["dns_junk"] = type(e).__name__
print(json.dumps(out))
"""


SERVERS: list[subprocess.Popen[bytes]] = []


def agent(src: str, job: int, user: bool) -> dict[str, object]:
    sys.path.insert(0, src)
    from sandbox_agent.runtime import egress

    rules = egress.Rules(
        allow=[*egress.parse("10.77.0.0/16:8000"), *egress.parse("169.254.0.0/16"),
               *egress.parse("10.77.1.2:8002"), *egress.parse("10.55.0.0/16"),
               *egress.parse("10.99.0.0/16")],
        deny=egress.parse("10.77.2.0/24"),
        # as listed before the node got 10.55.0.1 (main adds it, and a local route)
        node=[n for n in egress.node_addresses() if not str(n).startswith("10.55.")],
    )
    import threading

    before = threading.active_count()
    try:  # never the agent's own namespace
        egress.open_egress(os.getpid(), rules, user=user, bring_up=True).close()
        own = "plumbed"
    except egress.EgressError as error:
        own = str(error)
    opened = egress.open_egress(job, rules, user=user, upstream=("10.77.1.2", 53), bring_up=True)
    enter = ["nsenter", "-t", str(job), "-n", *(["-U", "--preserve-credentials"] if user else [])]
    ran = subprocess.run([*enter, sys.executable, "-I", "-S", "-c", PAYLOAD],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    opened.close()
    time.sleep(1)
    failed = {"error": ran.stderr}
    seen: dict[str, object] = json.loads(ran.stdout) if ran.returncode == 0 else failed
    seen["own_namespace"] = own
    seen["threads_left"] = threading.active_count() - before
    seen["tally"] = {"allowed": opened.tally.allowed, "refused": opened.tally.refused,
                     "refusals": opened.tally.refusals}  # fmt: skip
    return seen


def main() -> None:
    src, who = sys.argv[1], sys.argv[2]
    if who == "agent":  # the unprivileged agent's part, as uid 65534
        print(json.dumps(agent(src, int(sys.argv[3]), user=True)))
        return
    sh("ip", "link", "set", "lo", "up")
    serve_on_node(7001)
    # an address the node gets after the agent listed its own (agent() leaves it out of
    # the list), and a local route: the relay must see both as the node's all the same
    sh("ip", "address", "add", "10.55.0.1/32", "dev", "lo")
    sh("ip", "route", "add", "local", "10.99.0.0/24", "dev", "lo")
    keepers: list[subprocess.Popen[bytes]] = []
    try:
        for name, node_side, address, prefix in [("a", "10.77.1.1", "10.77.1.2", 24),
                                                 ("d", "10.77.2.1", "10.77.2.2", 24),
                                                 ("m", "169.254.0.1", "169.254.169.254", 16)]:
            keeper, server = host(name, node_side, address, prefix,
                                  [sys.executable, "-c", SERVE, "8000"])  # fmt: skip
            keepers.append(keeper)
            SERVERS.append(server)
        if who == "root":
            job = holder()
            keepers.append(job)
            print(json.dumps(agent(src, job.pid, user=False)))
        else:
            nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
            job = holder(*nobody)
            keepers.append(job)
            # the system Python: the venv's may live where uid 65534 cannot read it
            ran = subprocess.run([*nobody, "/usr/bin/python3", "-I", "-S", __file__, src,
                                  "agent", str(job.pid)], capture_output=True, text=True,
                                 timeout=180)  # fmt: skip
            print(ran.stdout.strip() or json.dumps({"error": ran.stderr[-2000:]}))
    finally:
        for process in [*SERVERS, *keepers]:
            process.kill()


if __name__ == "__main__":
    main()
