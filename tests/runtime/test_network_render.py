"""How each runtime renders network.mode, and how the one gate answers for it: egress
on bwrap waits for the agent (--block-fd) and carries what the relay lets through; a
host that cannot plumb it, an engine that cannot, and a policy that contradicts itself
fail closed, naming the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandbox_agent.images.hostpython import HostPython
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.policy.gate import Verdict
from sandbox_agent.runtime import bwrap, render
from sandbox_agent.runtime.plan import (
    PROXY_VARIABLES,
    Carried,
    EgressPlan,
    FixedHost,
    Unenforceable,
)

ROOT = Path(__file__).resolve().parents[2]
HOST = FixedHost({"/usr": "dir", "/usr/bin/python3": "file"})
CARRIED = HostPython(binds=(("/usr/bin/python3", "/.sandbox-agent/python/bin/python3"),),
                     command=("/.sandbox-agent/python/bin/python3",))  # fmt: skip
ENGINE_HOST = FixedHost(HOST.table, interpreter=CARRIED)
# an image for every runtime; what Docker cannot hold, accepted (docs/containers.md)
IMAGE = ('[filesystem]\nimage = "docker://debian:12"\n[namespaces]\nuser = "optional"\n'
         '[optional]\nrequirements = { append = ["filesystem.proc", "process.die_with_parent"] }\n')


def policy(tmp_path: Path, network: str, extra: str = ""):  # type: ignore[no-untyped-def]
    for name in ("base.toml", "default.toml"):
        shutil.copy(ROOT / "policies" / name, tmp_path / name)
    shutil.copytree(ROOT / "policies" / "seccomp", tmp_path / "seccomp", dirs_exist_ok=True)
    (tmp_path / "site.toml").write_text(f'extends = "default"\n{extra}\n[network]\n{network}\n')
    return compose(load_policy("site", [tmp_path]))


EGRESS = ('mode = "egress"\nallow = ["10.1.0.0/16", "xrootd.example.org:1094"]\n'
          'deny = ["10.1.9.0/24"]\nproxy = "http://10.1.0.3:3128"')  # fmt: skip


def option(argv: tuple[str, ...], name: str) -> str | None:
    end = argv.index("--")
    return argv[argv.index(name) + 1] if name in argv[:end] else None


def test_egress_on_bwrap_waits_for_the_agent_and_carries_the_lists(tmp_path: Path) -> None:
    plan = bwrap.render(policy(tmp_path, EGRESS), ["/bin/true"], workdir="/w", host=HOST)
    assert "--unshare-net" in plan.argv
    assert option(plan.argv, "--block-fd") == str(bwrap.BLOCK_FD)
    assert plan.fd_contents[bwrap.BLOCK_FD] is Carried.BLOCK
    assert plan.egress == EgressPlan(("10.1.0.0/16", "xrootd.example.org:1094"),
                                     ("10.1.9.0/24",), "http://10.1.0.3:3128")  # fmt: skip
    answer = next(a for a in plan.answers() if a.key == "network.mode")
    assert (answer.verdict, answer.by) == (Verdict.ENFORCED, "agent")
    # the site's squid, as every HTTP client reads it
    for name in PROXY_VARIABLES:
        assert f"--env={name}=http://10.1.0.3:3128" in plan.argv


@pytest.mark.parametrize("network", ['mode = "none"', 'mode = "host"'])
def test_other_modes_wait_for_nothing(tmp_path: Path, network: str) -> None:
    extra = '[namespaces]\nnet = "off"' if "host" in network else ""
    plan = bwrap.render(policy(tmp_path, network + '\nproxy = "http://10.1.0.3:3128"', extra),
                        ["/bin/true"], workdir="/w", host=HOST)  # fmt: skip
    assert plan.egress is None
    assert option(plan.argv, "--block-fd") is None
    assert ("--unshare-net" in plan.argv) is ("none" in network)
    # no proxy where there is no network to reach it through
    assert any(word.startswith("--env=http_proxy=") for word in plan.argv) is ("host" in network)


def test_a_host_that_cannot_plumb_egress_refuses_it(tmp_path: Path) -> None:
    host = FixedHost(HOST.table, egress="this host lacks nft (nftables): install them")
    with pytest.raises(Unenforceable, match=r"^network\.mode: egress: this host lacks nft "):
        bwrap.render(policy(tmp_path, EGRESS), ["/bin/true"], workdir="/w", host=host)


def test_optional_egress_on_such_a_host_gets_loopback_only(tmp_path: Path) -> None:
    host = FixedHost(HOST.table, egress="this host lacks nft (nftables): install them")
    effective = policy(tmp_path, EGRESS, '[optional]\nrequirements = { append = ["network.mode"] }')
    plan = bwrap.render(effective, ["/bin/true"], workdir="/w", host=host)
    assert plan.egress is None and option(plan.argv, "--block-fd") is None
    assert "--unshare-net" in plan.argv  # fails closed to no network, never to the host's
    answer = next(a for a in plan.answers() if a.key == "network.mode")
    assert answer.verdict is Verdict.OPTIONAL


def test_the_gate_refuses_egress_the_sandbox_does_not_wait_for(tmp_path: Path) -> None:
    import dataclasses

    plan = bwrap.render(policy(tmp_path, EGRESS), ["/bin/true"], workdir="/w", host=HOST)
    stripped = dataclasses.replace(plan, descriptors=tuple(
        d for d in plan.descriptors if d.carries is not Carried.BLOCK))  # fmt: skip
    answer = next(a for a in stripped.answers() if a.key == "network.mode")
    assert answer.verdict is Verdict.REFUSED
    assert "not implemented yet" in answer.how


@pytest.mark.parametrize(("network", "namespaces", "says"), [
    ('mode = "egress"\nallow = ["10.0.0.0/8"]', 'net = "off"',
     'egress needs the job\'s own network namespace; set namespaces.net = "required"'),
    ('mode = "host"', 'net = "required"',
     'which namespaces.net = "required" forbids; set it "off"'),
])  # fmt: skip
def test_a_policy_that_contradicts_itself_names_the_fix(
    tmp_path: Path, network: str, namespaces: str, says: str
) -> None:
    effective = policy(tmp_path, network, f"[namespaces]\n{namespaces}")
    with pytest.raises(Unenforceable, match=says.replace("(", r"\(")):
        bwrap.render(effective, ["/bin/true"], workdir="/w", host=HOST)


@pytest.mark.parametrize("runtime", ["docker", "podman", "apptainer"])
def test_a_payload_started_with_its_container_gets_no_egress_nor_the_host_network(
    tmp_path: Path, runtime: str
) -> None:
    """``sandbox exec`` on an image runtime starts the payload with its container: the
    agent cannot plumb the network first. Refused, or --network none where optional."""
    image = IMAGE
    refused = policy(tmp_path, EGRESS, image)
    says = "before the agent could plumb" if runtime != "apptainer" else "bwrap only for now"
    with pytest.raises(Unenforceable, match=rf"network\.mode: egress: .*{says}"):
        render.render(runtime, refused, ["/bin/true"], workdir="/w", host=ENGINE_HOST)
    optional = IMAGE.replace('"process.die_with_parent"]', '"process.die_with_parent", '
                             '"network.mode"]')
    plan = render.render(runtime, policy(tmp_path, EGRESS, optional), ["/bin/true"],
                         workdir="/w", host=ENGINE_HOST)  # fmt: skip
    assert "host" not in plan.argv and "none" in plan.argv
    assert plan.egress is None


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_an_engine_s_jobwrapper_waits_for_the_agent_to_plumb_egress(
    tmp_path: Path, engine: str
) -> None:
    """The pilot's JobWrapper in a container gets its job only once the agent has
    plumbed the container's network: the plan carries egress, and says it waits."""
    image = IMAGE
    plan = render.render(engine, policy(tmp_path, EGRESS, image), ["/bin/true"], workdir="/w",
                         host=ENGINE_HOST, wrapper=True, name="job-1")  # fmt: skip
    assert plan.egress is not None and plan.waits_for_agent
    assert plan.argv[plan.argv.index("--network") + 1] == "none"
    mode = next(r for r in plan.requirements if r.key == "network.mode")
    assert (mode.met, mode.by) == (True, "agent")
    lacking = FixedHost(ENGINE_HOST.table, interpreter=CARRIED, egress="this host lacks nft")
    with pytest.raises(Unenforceable, match=r"network\.mode: egress: this host lacks nft"):
        render.render(engine, policy(tmp_path, EGRESS, image), ["/bin/true"], workdir="/w",
                      host=lacking, wrapper=True, name="job-1")  # fmt: skip
