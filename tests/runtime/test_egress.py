"""Egress through the agent (runtime/egress.py, runtime/egressns.py): the rules as a
table, and a payload in a real job network namespace, plumbed by a root agent and by an
unprivileged one, trying the allowed host, a denied one, a metadata-style address, the
node's own services and the relay itself. The world it runs in is a network namespace of
its own with no route off this machine (tests/runtime/egress_world.py)."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from networld import needs

from sandbox_agent.runtime import egress, egressns
from sandbox_agent.runtime.egress import EgressError, Rules, parse, rules_for

ROOT = Path(__file__).resolve().parents[2]
WORLD = Path(__file__).with_name("egress_world.py")
NODE = [ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("fd12::5/128")]
RULES = Rules(allow=[*parse("10.1.0.0/16"), *parse("192.0.2.7:1094"), *parse("[2001:db8::9]:443"),
                     *parse("169.254.169.254"), *parse("10.0.0.5")],
              deny=[*parse("10.1.9.0/24"), *parse("10.1.0.1:22")], node=NODE)  # fmt: skip


@pytest.mark.parametrize(
    ("address", "port", "allowed"),
    [
        ("10.1.2.3", 80, True),
        ("10.1.9.3", 80, False),  # deny wins over a broader allow
        ("10.1.0.1", 22, False),  # a denied port of an allowed address
        ("10.1.0.1", 23, True),
        ("192.0.2.7", 1094, True),
        ("192.0.2.7", 1095, False),  # not the allowed port
        ("2001:db8::9", 443, True),
        ("198.51.100.1", 443, False),  # not in the allowlist
        ("169.254.169.254", 80, False),  # metadata: never, even when allowed
        ("fd00:ec2::254", 80, False),
        ("::ffff:169.254.169.254", 80, False),  # the same, written as IPv4-mapped IPv6
        ("127.0.0.1", 7001, False),
        ("10.0.0.5", 22, False),  # the node's own address, even when allowed
        ("fd12::5", 22, False),
        ("0.0.0.0", 80, False),
        ("224.0.0.1", 80, False),
        ("168.63.129.16", 80, False),  # Azure's WireServer
        ("100.100.100.200", 80, False),  # Alibaba Cloud's metadata
    ],
)
def test_the_rules(address: str, port: int, allowed: bool) -> None:
    why = RULES.refusal(ipaddress.ip_address(address), port)
    assert (why is None) is allowed, why


def test_what_no_allowlist_opens() -> None:
    everywhere = Rules(
        allow=parse("0.0.0.0/0"), node=NODE, gateways=[ipaddress.ip_network("10.0.0.1")]
    )
    # a gateway of the node's (in a container: the host itself)
    assert everywhere.refusal(ipaddress.ip_address("10.0.0.1"), 10250) == (
        "10.0.0.1 is a gateway of this node's, never reachable from a job"
    )
    # the job's own loopback source address, which would be relayed out
    assert "never reachable" in str(everywhere.refusal(ipaddress.ip_address("198.18.0.1"), 80))
    assert everywhere.refusal(ipaddress.ip_address("10.0.0.2"), 80) is None


def test_the_gateways_are_read_from_the_routes() -> None:
    listed = egress.gateways()
    shown = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True,
                           text=True, check=False).stdout.split()  # fmt: skip
    if "via" in shown:
        assert ipaddress.ip_network(shown[shown.index("via") + 1]) in listed
    assert all(network.num_addresses == 1 for network in listed)


def test_an_ipv4_mapped_entry_is_the_ipv4_one() -> None:
    rules = Rules(
        allow=parse("0.0.0.0/0"),
        deny=[*parse("[::ffff:10.1.2.3]:22"), *parse("::ffff:10.9.0.0/112")],
    )
    assert rules.refusal(ipaddress.ip_address("10.1.2.3"), 22) is not None
    assert rules.refusal(ipaddress.ip_address("10.9.7.7"), 80) is not None
    assert rules.refusal(ipaddress.ip_address("10.1.2.3"), 23) is None


def test_an_empty_allowlist_allows_nothing() -> None:
    # fail closed: a policy that names nowhere reaches nowhere, not everywhere
    rules = Rules(allow=[], node=NODE)
    assert rules.refusal(ipaddress.ip_address("198.51.100.1"), 443) == "not in network.allow"
    everywhere = Rules(allow=parse("0.0.0.0/0"), deny=parse("10.9.0.0/16"), node=NODE)
    assert everywhere.refusal(ipaddress.ip_address("198.51.100.1"), 443) is None
    assert everywhere.refusal(ipaddress.ip_address("10.9.1.1"), 443) is not None
    assert everywhere.refusal(ipaddress.ip_address("10.0.0.5"), 443) is not None


def test_rules_for_a_policy_resolve_names_and_let_the_proxy_through() -> None:
    rules = rules_for(["localhost:1094", "no-such-host.invalid:80"], ["10.9.0.0/16"],
                      "http://192.0.2.7:3128")  # fmt: skip
    proxy = ipaddress.ip_address("192.0.2.7")
    assert rules.refusal(proxy, 3128) is None
    assert rules.refusal(proxy, 3129) == "not in network.allow"
    assert any("no-such-host.invalid" in why for why in rules.unresolved)
    # localhost resolves to loopback, which stays closed whatever allow says
    assert rules.refusal(ipaddress.ip_address("127.0.0.1"), 1094) is not None


def test_a_deny_name_that_cannot_be_resolved_refuses_the_rules() -> None:
    with pytest.raises(EgressError, match=r"network\.deny no-such-host\.invalid"):
        rules_for(["0.0.0.0/0"], ["no-such-host.invalid"])


@pytest.mark.parametrize("entry", ["10.1.0.0/16:0", "10.1.2.3:99999", "10.1.2.3:http",
                                   "[2001:db8::1]:x", "no-such-host.invalid:1094", "10.1",
                                   "0x0a.1:80", "2130706433", "10.1.2.3:\u00b2",
                                   "10.1.2.3:\u0661\u0662"])  # fmt: skip
def test_an_entry_that_cannot_be_read_is_named(entry: str) -> None:
    with pytest.raises(ValueError, match=entry.split(":")[0].strip("[")):
        parse(entry)


def test_the_namespace_rules_send_everything_to_the_agent_and_drop_the_rest() -> None:
    rules = egressns.ruleset(1080, 53)
    assert "meta l4proto tcp redirect to :1080" in rules
    assert "udp dport 53 redirect to :53" in rules
    assert "policy drop;" in rules and "fib daddr type local accept" in rules
    # DNS to a resolver on the job's loopback (127.0.0.53) reaches the stub too
    assert rules.index("udp dport 53 redirect") < rules.index("ip daddr 127.0.0.0/8 return")


def _needs() -> str | None:
    if not Path("/usr/bin/python3").exists():
        return "no system python3 for the unprivileged agent"
    return needs("setpriv")


@pytest.mark.skipif(_needs() is not None, reason=str(_needs()))
@pytest.mark.parametrize("agent", ["root", "nobody"])
def test_a_payload_reaches_the_allowed_host_and_nothing_of_the_node(agent: str) -> None:
    ran = subprocess.run(["unshare", "-n", sys.executable, "-I", str(WORLD),
                          str(ROOT / "src"), agent], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    seen = json.loads(ran.stdout.strip().splitlines()[-1])
    assert "error" not in seen, seen.get("error")
    assert seen["allowed"] == 4 << 20  # the whole file, through the relay
    for refused in ("denied", "metadata", "node", "node_other", "other_port", "relay_itself"):
        assert seen[refused] == "ConnectionResetError", (refused, seen)
    assert seen["own_loopback"] == "ConnectionRefusedError"  # its own, empty loopback
    # the node's addresses as they are at each connect, not as listed at the start
    assert seen["node_later"] == seen["node_local_route"] == "ConnectionResetError"
    # past MAX_CONNECTIONS at once, new connections are reset; the relay lives on
    assert seen["held"] == egress.MAX_CONNECTIONS
    assert seen["reset_past_the_cap"] == 80 - egress.MAX_CONNECTIONS
    assert seen["allowed_while_full"] == "ConnectionResetError"
    assert seen["allowed_after"] == 4 << 20
    # close() ends what was still relayed: no thread of the relay is left
    assert seen["threads_left"] == 0, seen["threads_left"]
    assert "shares the agent's own network namespace" in str(seen["own_namespace"])
    assert seen["ipv6"] != "connected"
    assert seen["relay_port"] != "bound"
    assert seen["dns"] == "answer"  # through the agent's stub to its resolver, id kept
    assert seen["dns_junk"] == "TimeoutError"  # what is no DNS query is not passed on
    tally = seen["tally"]
    # the file twice, and each connection held up to the cap
    assert tally["allowed"] == 2 + egress.MAX_CONNECTIONS
    reasons = " | ".join(tally["refusals"])
    assert "denied by network.deny 10.77.2.0/24" in reasons
    assert "10.77.1.1 is this node's own address" in reasons
    assert "169.254.169.254 is in 169.254.0.0/16" in reasons
    if agent == "nobody":  # a payload with no capability cannot undo the rules
        assert seen["nft_flush"] != 0
        assert seen["after_flush"] == "ConnectionResetError"


def test_the_helper_imports_nothing_of_the_package() -> None:
    # it runs as a file under -I -S, for an agent whose Python finds only the stdlib
    text = Path(egressns.__file__).read_text()
    assert "sandbox_agent" not in "".join(
        line for line in text.splitlines() if line.startswith(("import", "from"))
    )
    assert egress.SO_ORIGINAL_DST == 80


def test_the_tally_names_the_allow_names_that_opened_nothing() -> None:
    relay = socket.socket()
    relay.bind(("127.0.0.1", 0))
    relay.listen()
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 0))
    rules = rules_for(["no-such-host.invalid:1094"], [])
    opened = egress.Egress(relay, dns, rules, ("127.0.0.1", 9))
    opened.close()
    assert len(opened.tally.unresolved) == 1
    assert opened.tally.unresolved[0].startswith("no-such-host.invalid:1094: cannot resolve")
