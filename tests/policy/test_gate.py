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
from sandbox_agent.runtime import apptainer, bwrap, docker
from sandbox_agent.runtime.launch import unenforced
from sandbox_agent.runtime.plan import AGENT_FILES, FixedHost, LaunchPlan

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
    held = CGROUP_LIMITS - {"memory"}
    here = plan.answers(found, held=held, where="cgroup v1")
    (answer,) = [a for a in here if a.key == "limits.memory"]
    assert answer.how == "cgroup v1: it cannot hold memory"
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
    here = plan.answers(found, held=CGROUP_LIMITS, where="cgroup v2")
    (answer,) = [a for a in here if a.key == "limits.memory"]
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
    held = gate.Answer("limits.memory", OPT, "v1: it cannot hold memory", "agent")
    made = gate.as_run([tried, memory], [], [held])
    assert [(a.key, a.verdict, a.how) for a in made] == [
        ("namespaces.cgroup", E, "--unshare-cgroup-try (if possible): made"),
        ("limits.memory", OPT, "v1: it cannot hold memory"),
    ]
    # bwrap could not make it: it stays optional, as the record's unenforced list says
    (kept,) = gate.as_run([tried], ["namespaces.cgroup"], [])
    assert kept == tried


def test_explain_on_a_host_answers_as_the_launch_does(tmp_path: Path) -> None:
    # a namespace the policy turns off is not refused for a kernel that lacks it
    effective = effective_of(tmp_path, 'extends = "default"\n[namespaces]\nuser = "off"\n')
    plan = bwrap.render(effective, ["/bin/true"], workdir="/w", host=HOST)
    found = {"namespaces.user": Fact(False, "user.max_user_namespaces is 0")}
    (user,) = [
        a for a in plan.answers(found, held=ALL_HELD, where="x") if a.key == "namespaces.user"
    ]
    assert user.verdict is E and "namespaces.user" not in unenforced(plan)
    # a limit the monitor cannot measure is refused on every host, as the launch refuses it
    monitored = 'extends = "default"\n[limits]\ncpu_cores = { enforcement = "monitored" }\n'
    plan = bwrap.render(effective_of(tmp_path, monitored), ["/bin/true"], workdir="/w", host=HOST)
    (cores,) = [
        a for a in plan.answers({}, held=ALL_HELD, where="x") if a.key == "limits.cpu_cores"
    ]
    assert cores.verdict is R and "cannot measure cpu_cores" in cores.how
    with pytest.raises(Unenforceable, match="cannot measure cpu_cores"):
        decide(plan, ALL_HELD, "x")
    # a work directory that cannot be a filesystem of its own: refused where required
    strict = compose(load_policy("strict", [ROOT / "policies"]))
    plan = bwrap.render(strict, ["/bin/true"], workdir="/w", host=HOST)
    held = ALL_HELD - {"workdir_size"}
    (disk,) = [a for a in plan.answers({}, held=held, where="x") if a.key == "limits.workdir_size"]
    assert disk.verdict is R
    with pytest.raises(Unenforceable, match=r"^limits\.workdir_size"):
        decide(plan, held, "x")


ALL_HELD = CGROUP_LIMITS | {"workdir_size"}


def test_an_engine_holds_its_own_limits_whatever_the_agents_cgroup(tmp_path: Path) -> None:
    # no network (this is about limits); the pilot's plan, as Podman as root runs it
    text = 'extends = "default"\n[filesystem]\nimage = "docker://debian:12"\n'
    text += '[network]\nmode = "none"\nallow = []\n'
    plan = docker.render(effective_of(tmp_path, text), ["/bin/true"], workdir="/w",
                         engine="podman", wrapper=True, rootless=False)  # fmt: skip
    found = {"limits.memory": Fact(False, "no job cgroup: not delegated")}
    (memory,) = [a for a in plan.answers(found, held=frozenset(), where="x")
                 if a.key == "limits.memory"]  # fmt: skip
    assert (memory.verdict, memory.by) == (E, "runtime")


def test_a_plan_cannot_be_made_without_its_policys_limits() -> None:
    with pytest.raises(ValueError, match="from_policy"):
        LaunchPlan("bwrap", ("bwrap", "--", "/bin/true"))


def test_only_the_renderers_own_words_name_the_agent_files(tmp_path: Path) -> None:
    text = 'extends = "default"\n[filesystem]\nimage = "/srv/images/el9"\n'
    text += '[network]\nmode = "none"\nallow = []\n'  # Apptainer refuses egress for now
    payload = ["/bin/echo", f"{AGENT_FILES}/seccomp.bpf", "10"]
    plan = apptainer.render(effective_of(tmp_path, text), payload, workdir="/w", host=HOST)
    assert plan.argv[-3:] == tuple(payload)
    assert all(at < len(plan.argv) - len(payload) for at in plan.files_at)
    assert len(plan.files_at) == 1
