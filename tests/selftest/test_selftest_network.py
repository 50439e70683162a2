"""The selftest's network rows under the modes beside "none": under network.mode =
"host" what gets through is granted by the policy, never a leak (and a leak of anything
else still is); under "egress" the probe tries what the agent's relay must refuse, and
the relay's own tally must show each refused.

The egress run happens in a network namespace of its own with no route off this
machine (the node at 10.77.1.1 behind a veth pair with nothing at its far end), so a
failed defence cannot send a packet to a real metadata service or a denied network."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, SCRIPT, assert_no_traceback, cli_env, run_cli

from sandbox_agent.jdl import load_job
from sandbox_agent.policy import compose, load_policy, policy_dirs
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.runtime.egress import Rules, Tally, parse
from sandbox_agent.selftest.probe_in_sandbox import (
    GRANTED,
    LEAKED,
    Row,
    attack_table,
    denial_targets,
    grants,
    judged,
    preflight_attacks,
    refused_by_policy,
    relay_view,
)

HOST = 'extends = "default"\n[namespaces]\nnet = "off"\n[network]\nmode = "host"\n'
POLICIES = {
    "host-network": HOST,
    # the host's network, and a secret variable let in: the credential row must leak
    "host-network-leaky": 'extends = "host-network"\n[process.environment]\n'
    'allow = { append = ["SANDBOX_AGENT_SELFTEST_SECRET"] }\n',
    "egress-deny": 'extends = "default"\n[network]\nmode = "egress"\nallow = ["0.0.0.0/0"]\n'
    'deny = ["10.77.2.0/24"]\n',
    # what the targets are made of: a port kept, a single address, a name and IPv6 left out
    "egress-lists": 'extends = "default"\n[network]\nmode = "egress"\nallow = ["0.0.0.0/0"]\n'
    'deny = ["10.77.2.0/24", "10.77.3.9:1094", "192.0.2.77/32", "db.example.org", '
    '"2001:db8::/32", "169.254.0.0/16:80"]\n',
}
# The node of the egress world: a network namespace whose one way out leads nowhere.
WORLD = (
    "set -e; ip link set lo up; ip link add sa-node type veth peer name sa-far; "
    "ip addr add 10.77.1.1/24 dev sa-node; ip link set sa-node up; ip link set sa-far up; "
    'ip route add default via 10.77.1.2; exec "$0" "$@"'
)


@pytest.fixture
def home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-selftest-net-"))
    base.chmod(0o711)  # the sandbox's uid (as root) reaches the work area under it
    policies = base / "home" / "policies"
    shutil.copytree(ROOT / "policies", policies)
    for name, text in POLICIES.items():
        (policies / f"{name}.toml").write_text(text)
    yield base / "home"
    shutil.rmtree(base)


def selftest(home: Path, *args: str, world: bool = False) -> tuple[int, dict[str, object] | str]:
    program = ["unshare", "--net", "--", "sh", "-c", WORLD, str(SCRIPT)] if world else None
    done = run_cli(cli_env(home), "selftest", *args, program=program)
    assert_no_traceback(done)
    if "--json" in args and done.returncode in (0, 1):
        return done.returncode, json.loads(done.stdout)
    return done.returncode, done.stdout + done.stderr


def rows_of(answer: dict[str, object] | str) -> dict[str, dict[str, str]]:
    assert isinstance(answer, dict), answer
    rows = answer["attacks"]
    assert isinstance(rows, list)
    return {row["attack"]: row for row in rows}


def effective_of(home: Path, name: str) -> EffectivePolicy:
    policy = load_policy(name, policy_dirs(home))
    job = load_job('Executable = "/bin/true";\n', source="a test job")
    return compose(policy, job, credentials=[])


def _egress_needs() -> str | None:
    if os.geteuid() != 0:
        return "the egress world (a network namespace with veth pairs) needs root"
    for tool in ("unshare", "ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux, iproute2, nftables)"
    return None


pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

# -- host mode ----------------------------------------------------------------------------


def test_under_host_network_what_gets_through_is_granted_not_leaked(home: Path) -> None:
    code, answer = selftest(home, "--policy", "host-network", "--json")
    assert code == 0, answer
    rows = rows_of(answer)
    assert isinstance(answer, dict)
    assert answer["leaked"] == [] and answer["host_saw"] == []
    # TCP to the node's loopback and address, UDP to its echo: through, as granted
    for name in ("tcp_connect", "udp_send"):
        assert rows[name]["result"] == GRANTED, rows[name]
        assert rows[name]["detail"].startswith('granted by network.mode = "host" (')
        assert "host-network.toml:" in rows[name]["detail"]  # where the policy set it
    assert "connected, the host said" in rows["tcp_connect"]["detail"]
    # only the network's rows, and the host's listeners did see the probe
    assert {r["mechanism"] for r in rows.values() if r["result"] == GRANTED} == {"network"}
    assert LEAKED not in {r["result"] for r in rows.values()}
    seen = answer["host_saw_granted"]
    assert isinstance(seen, list) and any("tcp listener received" in s for s in seen)
    assert all('granted by network.mode = "host"' in s for s in seen)
    assert answer["granted"] == [
        *(f"{n}: {r['detail']}" for n, r in rows.items() if r["result"] == GRANTED),
        *seen,
    ]
    # the denial check is egress's alone: it aims at nothing here
    assert rows["egress_denied"]["result"] == "n/a"


def test_the_table_shows_the_granted_rows_and_the_exit_code_is_0(home: Path) -> None:
    code, text = selftest(home, "--policy", "host-network", "tcp_connect", "key_file")
    assert code == 0, text
    assert isinstance(text, str)
    lines = text.splitlines()
    assert lines[2].split()[:2] == ["tcp_connect", "granted"]
    assert "granted by the policy (no leak):\n  tcp_connect: granted by network.mode" in text
    assert "the host saw (granted by the policy):\n  the host's tcp listener received" in text
    assert "the host saw (each a leak)" not in text
    assert lines[-1].startswith(
        "2 attacks: 1 blocked, 0 LEAKED, 1 granted by the policy, 0 not applicable here; "
        "0 seen by the host (besides 1 granted)"
    )


def test_under_host_network_a_credential_leak_is_still_a_leak(home: Path) -> None:
    code, answer = selftest(home, "--policy", "host-network-leaky", "--json")
    assert code == 1, answer
    rows = rows_of(answer)
    assert rows["env_self"]["result"] == LEAKED
    assert rows["tcp_connect"]["result"] == GRANTED
    assert isinstance(answer, dict)
    leaked = [line.split(":")[0] for line in answer["leaked"]]
    assert leaked[0] == "env_self"
    assert {rows[name]["mechanism"] for name in leaked} == {"credentials"}  # the network's are not


# -- egress mode --------------------------------------------------------------------------


@pytest.mark.skipif(_egress_needs() is not None, reason=str(_egress_needs()))
def test_under_egress_the_node_and_the_denials_hold_and_the_relay_refused_each(
    home: Path,
) -> None:
    code, answer = selftest(home, "--policy", "egress-deny", "--json", world=True)
    assert code == 0, answer
    rows = rows_of(answer)
    assert isinstance(answer, dict)
    assert answer["leaked"] == [] and answer["host_saw"] == [] and answer["granted"] == []
    assert LEAKED not in {r["result"] for r in rows.values()}
    # the node's loopback listener (the job's loopback is its own) and its address (the
    # relay resets it): reached neither
    tcp = rows["tcp_connect"]
    assert tcp["result"] == "blocked" and "10.77.1.1:" in tcp["detail"], tcp
    denied = rows["egress_denied"]
    assert denied["result"] == "blocked", denied
    # the payload's view: reset (the relay accepts, then resets: connect() itself may
    # see the reset), no byte
    for target in ("10.77.2.1:80",):
        assert re.search(rf"{re.escape(target)}: (connected, then: )?ECONNRESET;", denied["detail"])
    # the agent's: its relay refused each by the policy
    relay = "the agent's relay refused 1 of 1: 10.77.2.1:80 (denied by network.deny 10.77.2.0/24)"
    assert denied["detail"].endswith(f"; {relay}")
    assert answer["relay"] == relay


@pytest.mark.skipif(_egress_needs() is not None, reason=str(_egress_needs()))
def test_under_egress_the_table_says_what_the_relay_refused(home: Path) -> None:
    code, text = selftest(home, "--policy", "egress-deny", "egress_denied", world=True)
    assert code == 0, text
    assert isinstance(text, str)
    lines = text.splitlines()
    assert lines[1].split()[:2] == ["egress_denied", "blocked"]
    assert "\nthe agent's relay refused 1 of 1: 10.77.2.1:80 (" in text
    assert lines[-1].startswith("1 attacks: 1 blocked, 0 LEAKED, 0 not applicable here; 0 seen")


def test_the_denial_check_is_part_of_the_preflight() -> None:
    assert "egress_denied" in preflight_attacks()
    assert attack_table()["egress_denied"]["mechanism"] == "network"


def test_the_targets_are_one_address_of_each_deny_entry_and_never_the_metadata_address(
    home: Path,
) -> None:
    targets, left_out = denial_targets(effective_of(home, "egress-lists"))
    # what the site listed, never the real metadata address (a broken relay would reach it)
    assert targets == [("10.77.2.1", 80), ("10.77.3.9", 1094), ("192.0.2.77", 80),
                       ("169.254.0.1", 80)]  # fmt: skip
    assert left_out == ["db.example.org", "2001:db8::/32"]
    # no other mode aims anywhere
    for name in ("host-network", "base"):
        assert denial_targets(effective_of(home, name)) == ([], []), name
    assert grants(effective_of(home, "host-network"))["network"].startswith(
        'network.mode = "host" (policies/host-network.toml:'
    )
    assert grants(effective_of(home, "egress-deny")) == {}


def test_the_refusals_read_as_the_policys_are_what_the_relay_says() -> None:
    """The selftest tells the relay's refusals by the policy from connects of its own
    that failed by their words: hold them to what Rules.refusal says."""
    node = parse("10.77.1.1")[0].network
    rules = Rules(parse("10.0.0.0/8"), parse("10.77.2.0/24"), [node])
    ipv4 = Rules(parse("10.0.0.0/8"))
    for why in (
        rules.refusal(ipv4_address("169.254.169.254"), 80),
        rules.refusal(ipv4_address("10.77.1.1"), 80),
        rules.refusal(ipv4_address("10.77.2.1"), 80),
        ipv4.refusal(ipv4_address("192.0.2.1"), 80),
    ):
        assert why is not None and refused_by_policy(why), why
    for failed in ("Connection refused", "No route to host", "timed out", "Network is unreachable"):
        assert not refused_by_policy(failed)


def ipv4_address(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


TARGETS = [("169.254.169.254", 80), ("10.77.2.1", 80)]
METADATA_REFUSED = (
    "169.254.169.254:80: 169.254.169.254 is in 169.254.0.0/16, never reachable from a job"
)
DENY_REFUSED = "10.77.2.1:80: denied by network.deny 10.77.2.0/24"


def test_the_relay_must_refuse_each_target_by_the_policy_and_let_nothing_through() -> None:
    whole = Tally(refused=3, refusals=["10.77.1.1:4000: 10.77.1.1 is this node's own address",
                                       METADATA_REFUSED, DENY_REFUSED])  # fmt: skip
    note, leaks = relay_view(TARGETS, whole, True)
    assert leaks == []
    assert note.startswith("the agent's relay refused 2 of 2: 169.254.169.254:80 (")
    # a connection it let through: whatever the probe saw, a leak
    assert relay_view(TARGETS, Tally(allowed=1, refusals=whole.refusals), True)[1] == [
        "the agent's relay let 1 connection(s) through; the probe tries none it may let through"
    ]
    # a target it tried to reach (its connect failed: it was not refused by the policy)
    tried = Tally(refusals=[METADATA_REFUSED, "10.77.2.1:80: No route to host"])
    assert relay_view(TARGETS, tried, True)[1] == [
        "the agent's relay tried to reach 10.77.2.1:80, which the policy closes (No route to host)"
    ]
    # a target it never saw
    assert relay_view(TARGETS, Tally(refusals=[METADATA_REFUSED]), True)[1] == [
        "the agent's relay recorded no refusal of 10.77.2.1:80"
    ]
    # the attack not asked: only what went through counts
    assert relay_view(TARGETS, Tally(), False) == ("", [])
    # no relay (egress optional, not met here): loopback only, nothing to hold it to
    note, leaks = relay_view(TARGETS, None, True)
    assert leaks == [] and note.startswith("the agent's relay did not run")


def test_only_what_the_policy_grants_is_taken_out_of_the_leaks() -> None:
    def row(attack: str, mechanism: str, result: str) -> Row:
        return Row(attack, mechanism, "threat", "defence", result, "what it saw", 0.0)

    rows = [row("tcp_connect", "network", LEAKED), row("env_self", "credentials", LEAKED),
            row("udp_send", "network", "blocked")]  # fmt: skip
    saw = {"network": ["the host's tcp listener received b'probe'"],
           "processes": ["the decoy outside the sandbox: SIGTERM"]}  # fmt: skip
    got, leaks, granted = judged(rows, saw, {"network": 'network.mode = "host" (p.toml:3)'})
    assert [(r.attack, r.result) for r in got] == [
        ("tcp_connect", GRANTED), ("env_self", LEAKED), ("udp_send", "blocked")
    ]  # fmt: skip
    assert got[0].detail == 'granted by network.mode = "host" (p.toml:3): what it saw'
    assert leaks == ["the decoy outside the sandbox: SIGTERM"]
    assert granted == [
        "the host's tcp listener received b'probe': granted by network.mode = \"host\" (p.toml:3)"
    ]
    # nothing granted: every sighting is a leak, every row as the probe said
    got, leaks, granted = judged(rows, saw, {})
    assert [r.result for r in got] == [LEAKED, LEAKED, "blocked"] and granted == []
    assert len(leaks) == 2
