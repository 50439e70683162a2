"""The one fail-closed gate: its rule as a table, and the same answer from every place
that asks it (a renderer, the launcher, the limits, explain's host section, a plan read
on a host)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from sandbox_agent.hostfacts import Fact
from sandbox_agent.limits.enforcement import decide
from sandbox_agent.policy import compose, gate, load_policy
from sandbox_agent.policy.explain import host_rows
from sandbox_agent.policy.gate import Requirement, Unenforceable, Verdict
from sandbox_agent.runtime import bwrap
from sandbox_agent.runtime.launch import unenforced
from sandbox_agent.runtime.plan import FixedHost

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "sandbox_agent"
E, OPT, R = Verdict.ENFORCED, Verdict.OPTIONAL, Verdict.REFUSED


@pytest.mark.parametrize(
    ("key", "met", "optional", "verdict"),
    [
        ("namespaces.user", True, set(), E),
        ("namespaces.user", True, {"namespaces.user"}, E),  # optional but met: enforced
        ("namespaces.user", False, set(), R),
        ("namespaces.user", False, {"namespaces.user"}, OPT),
        ("namespaces.user", False, {"namespaces.cgroup"}, R),  # another key does not count
        ("namespaces.user", False, {"namespaces"}, OPT),  # a key above it counts
        ("limits.memory", False, {"limits"}, OPT),
        ("limits.memory", False, {"limits.memory.max"}, R),  # a key below it does not
        ("limits.memory", False, {"limits.mem"}, R),  # nor a prefix that is no key
        ("process.rlimits", False, {"process.rlimits"}, OPT),
    ],
)
def test_the_rule(key: str, met: bool, optional: set[str], verdict: Verdict) -> None:
    answer = gate.judge(key, "why", met=met, optional=frozenset(optional))
    assert answer.verdict is verdict
    if verdict is R:
        with pytest.raises(Unenforceable, match=f"^{key}: why$"):
            gate.admit(answer)
    else:
        assert gate.admit(answer) is answer


def effective_of(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    shutil.copytree(ROOT / "policies", tmp_path, dirs_exist_ok=True)
    (tmp_path / "p.toml").write_text(text)
    return compose(load_policy("p", [tmp_path]))


def test_an_optional_level_is_optional_as_a_named_requirement_is(tmp_path: Path) -> None:
    # base marks namespaces.cgroup "optional" and names nothing in optional.requirements:
    # the launcher refused it before the gate ("not implemented yet"), the renderer not
    effective = effective_of(tmp_path, 'extends = "base"\n')
    assert "namespaces.cgroup" in gate.optional_keys(effective)
    plan = bwrap.render(effective, ["/bin/true"], workdir="/w", host=HOST)
    assert unenforced(plan) == ("namespaces.cgroup",)  # until bwrap reports it made it
    found = {"namespaces.cgroup": Fact(True, "the kernel has cgroup namespaces")}
    (cgroup,) = [a for a in plan.answers(found) if a.key == "namespaces.cgroup"]
    assert cgroup.verdict is E
    found = {"namespaces.cgroup": Fact(False, "no cgroup namespaces in this kernel")}
    (cgroup,) = [a for a in plan.answers(found) if a.key == "namespaces.cgroup"]
    assert (cgroup.verdict, cgroup.how) == (OPT, "no cgroup namespaces in this kernel")


HOST = FixedHost({"/usr": "dir", "/usr/bin/python3": "file"})
NO_LANDLOCK = FixedHost({"/usr": "dir", "/usr/bin/python3": "file"}, landlock=0)
CGROUP_LIMITS = frozenset({"memory", "swap", "pids", "cpu_cores"})


@pytest.mark.parametrize("optional", [False, True])
def test_landlock_gets_one_answer_everywhere(tmp_path: Path, optional: bool) -> None:
    text = 'extends = "default"\n[optional]\nrequirements = []\n'
    if optional:
        text = 'extends = "default"\n[optional]\nrequirements = ["process.landlock"]\n'
    effective = effective_of(tmp_path, text)
    found = {"process.landlock": Fact(False, "the kernel has no landlock")}
    (row,) = [r for r in host_rows(effective, found) if r["key"] == "process.landlock"]
    plan = bwrap.render(effective, ["/bin/true"], workdir="/w", host=HOST)  # a landlock host
    (answer,) = [a for a in plan.answers(found) if a.key == "process.landlock"]
    if optional:
        rendered = bwrap.render(effective, ["/bin/true"], workdir="/w", host=NO_LANDLOCK)
        assert "process.landlock" in unenforced(rendered)
        assert (row["verdict"], answer.verdict) == ("runs without it", OPT)
    else:
        refused = r"^process\.landlock: this kernel has no landlock$"
        with pytest.raises(Unenforceable, match=refused):
            bwrap.render(effective, ["/bin/true"], workdir="/w", host=NO_LANDLOCK)
        assert (row["verdict"], answer.verdict) == ("fails closed", R)


@pytest.mark.parametrize("optional", [False, True])
def test_a_kernel_limit_gets_one_answer_everywhere(tmp_path: Path, optional: bool) -> None:
    named = '"limits.memory", "limits.workdir_size"' if optional else '"limits.workdir_size"'
    effective = effective_of(
        tmp_path, f'extends = "default"\n[optional]\nrequirements = [{named}]\n'
    )
    found = {"limits.memory": Fact(False, "cgroup v1: cannot hold memory")}
    (row,) = host_rows(effective, found)
    plan = bwrap.render(effective, ["/bin/true"], workdir="/w", host=HOST)
    (answer,) = [a for a in plan.answers(found) if a.key == "limits.memory"]
    assert answer.how == "cgroup v1: cannot hold memory"
    held = CGROUP_LIMITS - {"memory"}
    if optional:
        assert (row["verdict"], answer.verdict) == ("runs without it", OPT)
        assert "memory" in decide(plan, held, "cgroup v1").monitored
    else:
        assert (row["verdict"], answer.verdict) == ("fails closed", R)
        refused = r"^limits\.memory: cgroup v1: it cannot hold memory"
        with pytest.raises(Unenforceable, match=refused):
            decide(plan, held, "cgroup v1")
    # where the kernel holds it, every place says so
    found = {"limits.memory": Fact(True, "cgroup v2 memory controller")}
    (row,) = host_rows(effective, found)
    (answer,) = [a for a in plan.answers(found) if a.key == "limits.memory"]
    assert (row["verdict"], answer.verdict) == ("available", E)
    assert "memory" in decide(plan, CGROUP_LIMITS, "cgroup v2").kernel


def test_a_statement_nobody_can_enforce_is_refused_unless_optional() -> None:
    # the wrapper's confine step holds landlock only where the plan carries it
    landlock = Requirement("process.landlock", "landlock, inside", by="wrapper")
    (answer,) = gate.answers([landlock], frozenset({"seccomp"}), frozenset())
    assert answer.verdict is R and answer.how.endswith(
        "enforced by the wrapper, not implemented yet"
    )
    assert gate.answers([landlock], frozenset({"confine"}), frozenset())[0].verdict is E
    optional = frozenset({"process.landlock"})
    assert gate.check([landlock], frozenset(), optional) == ("process.landlock",)
    with pytest.raises(Unenforceable, match=r"^process\.landlock: landlock, inside: enforced by"):
        gate.check([landlock], frozenset(), frozenset())


def test_only_the_gate_raises_unenforceable() -> None:
    """grep finds one fail-closed gate: no other module of src raises Unenforceable."""
    raising = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                called = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                name = getattr(called, "id", getattr(called, "attr", ""))
                if name == "Unenforceable":
                    raising.append(str(path.relative_to(SRC)))
    assert sorted(set(raising)) == ["policy/gate.py"]


def test_the_answers_once_run_say_what_the_launch_made() -> None:
    tried = gate.Answer("namespaces.cgroup", OPT, "--unshare-cgroup-try (if possible)")
    memory = gate.Answer("limits.memory", E, "kernel: the job's cgroup", "agent")
    # bwrap made the namespace (not left unenforced); the cgroup could not hold memory
    made = gate.as_run([tried, memory], [], ["limits.memory: monitored instead (v1: no memory)"])
    assert [(a.key, a.verdict, a.how) for a in made] == [
        ("namespaces.cgroup", E, "--unshare-cgroup-try (if possible): made"),
        ("limits.memory", OPT, "monitored instead (v1: no memory)"),
    ]
    # bwrap could not make it: it stays optional, as the record's unenforced list says
    (kept,) = gate.as_run([tried], ["namespaces.cgroup"], [])
    assert kept == tried
