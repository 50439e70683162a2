"""Exact Apptainer, Docker and Podman command lines; the real tools are not on this host.

Each golden file is the argv one word a line, the policy directory shown as
<policies>. Where the tool exists, the rendered argv is also run (skipped otherwise,
with the reason)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandbox_agent.images.hostpython import HostPython
from sandbox_agent.jdl import load_job
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.runtime import apptainer, docker
from sandbox_agent.runtime.plan import AGENT_FILES, FixedHost, Unenforceable

ROOT = Path(__file__).resolve().parents[2]
LANDLOCK_6 = FixedHost({}, landlock=6)  # the golden plan does not depend on this kernel
GOLDEN = Path(__file__).parent / "golden"
HERE = Path(__file__).parent / "policies"
JOB = load_job(
    'Executable = "/bin/sh"; MemorySize = "4GB";\nReadOnlyBinds = { "/cvmfs/alice.cern.ch" };'
)
# The payload's argv as the renderer gets it: a shell snippet, which no JDL Arguments
# spells (JAliEn splits them on white space, quotes kept).
PAYLOAD = [JOB.executable, "-c", "echo $ALIEN_PROC_ID"]


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    for name in ("base.toml", "default.toml", "gpu.toml"):
        shutil.copy(ROOT / "policies" / name, tmp_path / name)
    for test_policy in HERE.glob("*.toml"):
        shutil.copy(test_policy, tmp_path / test_policy.name)
    return tmp_path


def words(plan_argv: tuple[str, ...], directory: Path) -> list[str]:
    return [w.replace(str(directory), "<policies>") for w in plan_argv]


def effective(policies: Path, name: str):  # type: ignore[no-untyped-def]
    return compose(load_policy(name, [policies]), JOB)


def test_apptainer_golden(policies: Path) -> None:
    plan = apptainer.render(effective(policies, "images"), PAYLOAD,
                            workdir="/srv/work/7", host=LANDLOCK_6)  # fmt: skip
    expected = (GOLDEN / "apptainer-user.argv").read_text().splitlines()
    assert words(plan.argv, policies) == expected
    # the limits are the job's cgroup, which Apptainer runs in: no flags of its own
    assert not {"--apply-cgroups", "--memory", "--pids-limit"} & set(plan.argv)
    memory = next(r for r in plan.requirements if r.key == "limits.memory")
    assert (memory.by, memory.how) == ("agent", "kernel: the job's cgroup")
    # never as root (a root agent starts Apptainer as uid 65534), so Apptainer loads no
    # seccomp program: the confine step loads the agent's, from the bound agent files
    assert "--security" not in plan.argv
    assert plan.agent_files == {"confine.py": "confine", "seccomp.bpf": "seccomp"}
    assert f"{AGENT_FILES}:/.sandbox-agent:ro" in plan.argv
    step = plan.argv[plan.argv.index("docker://registry.example.org/alice/el9:2024.1") + 1 :]
    assert step[:4] == ("/usr/bin/python3", "-I", "-S", "/.sandbox-agent/confine.py")
    assert "--seccomp" in step and "--writable" in step
    seccomp = next(r for r in plan.requirements if r.key == "process.seccomp")
    assert (seccomp.by, seccomp.met) == ("wrapper", True)


PY = "/.sandbox-agent/python"
CARRIED = HostPython(
    binds=(("/usr/bin/python3.11", f"{PY}/bin/python3"),
           ("/usr/lib/ld-linux-x86-64.so.2", f"{PY}/so/ld-linux-x86-64.so.2")),
    command=(f"{PY}/so/ld-linux-x86-64.so.2", "--library-path", f"{PY}/so", f"{PY}/bin/python3"),
)  # fmt: skip
ENGINE_HOST = FixedHost({"/cvmfs/alice.cern.ch": "dir"}, landlock=6, interpreter=CARRIED)


@pytest.mark.parametrize("engine", ["docker", "podman"])
@pytest.mark.parametrize("wrapper", [False, True], ids=["exec", "wrapper"])
def test_engine_golden(policies: Path, engine: str, wrapper: bool) -> None:
    plan = docker.render(effective(policies, "docker"), PAYLOAD, workdir="/srv/work/7",
                         engine=engine, host=ENGINE_HOST, wrapper=wrapper,
                         rootless=False)  # fmt: skip
    name = f"{engine}-wrapper.argv" if wrapper else f"{engine}.argv"
    expected = (GOLDEN / name).read_text().splitlines()
    assert words(plan.argv, policies) == expected
    user = next(r for r in plan.requirements if r.key == "namespaces.user")
    assert user.met is (engine == "podman")
    # the JobWrapper is the container's pid 1, alone holding its stdin and stdout
    assert ("--init" in plan.argv) is not wrapper
    assert plan.waits_for_agent is wrapper
    # nothing of the agent's is bound: the step is its source, the wrapper's files come
    # on stdin (each module and, for the agent's Python, its bytecode)
    assert plan.agent_files == {}
    assert [kind for _, kind in plan.sources_at] == ["confine"]
    modules = {name for name, kind in plan.stdin_files if not kind.is_bytecode}
    assert modules == ({"jobwrapper.py", "handoff.py", "packaging.py"} if wrapper else set())
    assert not [word for word in plan.argv if word.endswith(":/.sandbox-agent/lib:ro")]


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_the_engine_requirements_name_only_flags_that_exist(policies: Path, engine: str) -> None:
    """Every flag a requirement of the plan names is one the plan passes (there is no
    --cpu-cores or --swap)."""
    plan = docker.render(effective(policies, "docker"), PAYLOAD, workdir="/srv/work/7",
                         engine=engine, host=ENGINE_HOST, rootless=False)  # fmt: skip
    named = {word.strip("(),;:") for r in plan.requirements for word in r.how.split()
             if word.strip("(),;:").startswith("--")}  # fmt: skip
    passed = {word.split("=")[0] for word in plan.argv if word.startswith("--")}
    assert named and named <= passed, named - passed


def test_rootless_podman_leaves_the_limits_to_the_agent(policies: Path) -> None:
    """Rootless Podman ignores --memory, --cpus and --pids-limit on cgroup v1 (and
    without a delegated cgroup): the plan passes none and leaves them to the agent's
    job cgroup, which the session reads back; the agent's uid is the payload's."""
    plan = docker.render(effective(policies, "docker"), PAYLOAD, workdir="/srv/work/7",
                         engine="podman", host=ENGINE_HOST, rootless=True)  # fmt: skip
    assert not {"--memory", "--cpus", "--pids-limit", "--memory-swap"} & set(plan.argv)
    held = {r.key: r.by for r in plan.requirements if r.key.startswith("limits.")}
    assert held["limits.memory"] == held["limits.pids"] == "agent"
    at = plan.argv.index("--userns")
    assert plan.argv[at + 1] == "keep-id:uid=1000,gid=1000"
    assert not [word for word in plan.argv if word.endswith(":rw,U")]


def test_docker_fails_closed_when_a_user_namespace_is_required(policies: Path) -> None:
    with pytest.raises(Unenforceable, match="Docker gives no container its own user namespace"):
        docker.render(effective(policies, "images"), ["/bin/true"], workdir="/w",
                      host=ENGINE_HOST)  # fmt: skip
    plan = docker.render(effective(policies, "images"), ["/bin/true"], workdir="/w",
                         engine="podman", host=ENGINE_HOST, wrapper=True)  # fmt: skip
    assert "--userns" in plan.argv


def test_a_payload_started_with_its_container_does_not_die_with_its_agent(
    policies: Path,
) -> None:
    """sandbox exec: the payload owns the container's stdin, so nothing inside learns
    that the agent is gone, and the engine runs the container on: die_with_parent is
    not met (the pilot's JobWrapper holds it, through its lifeline)."""
    with pytest.raises(Unenforceable, match=r"process\.die_with_parent: here the payload"):
        docker.render(effective(policies, "images"), ["/bin/true"], workdir="/w",
                      engine="podman", host=ENGINE_HOST)  # fmt: skip
    plan = docker.render(effective(policies, "images"), ["/bin/true"], workdir="/w",
                         engine="podman", host=ENGINE_HOST, wrapper=True)  # fmt: skip
    held = next(r for r in plan.requirements if r.key == "process.die_with_parent")
    assert (held.met, held.by) == (True, "agent") and "lifeline" in held.how


@pytest.mark.parametrize("runtime", ["apptainer", "docker"])
def test_the_host_userland_needs_bwrap(policies: Path, runtime: str) -> None:
    plain = compose(load_policy("default", [policies]))
    render = apptainer.render if runtime == "apptainer" else docker.render
    with pytest.raises(Unenforceable, match=r"filesystem\.image"):
        render(plain, ["/bin/true"], workdir="/w")


def test_gpu_policy_adds_nv(policies: Path) -> None:
    (policies / "gpu-image.toml").write_text(
        'extends = "gpu"\n[filesystem]\nimage = "docker://registry.example.org/cuda:12"\n'
        '[network]\nmode = "none"\nallow = []\n'  # Apptainer refuses egress for now
    )
    plan = apptainer.render(compose(load_policy("gpu-image", [policies])), ["/bin/true"],
                            workdir="/w")  # fmt: skip
    assert "--nv" in plan.argv
    assert "/dev/nvidia0:/dev/nvidia0" in plan.argv


@pytest.mark.skipif(shutil.which("apptainer") is None, reason="Apptainer is not installed here")
def test_real_apptainer_accepts_the_flags() -> None:  # pragma: no cover - no Apptainer in CI
    import subprocess

    out = subprocess.run(["apptainer", "exec", "--help"], capture_output=True, text=True)
    for flag in ("--containall", "--no-privs", "--userns", "--scratch", "--apply-cgroups"):
        assert flag in out.stdout


@pytest.mark.skipif(shutil.which("podman") is None and shutil.which("docker") is None,
                    reason="no container engine runs on this host")  # fmt: skip
def test_real_engine_accepts_the_flags() -> None:  # pragma: no cover - no engine in CI
    import subprocess

    engine = shutil.which("podman") or shutil.which("docker")
    assert engine is not None
    out = subprocess.run([engine, "run", "--help"], capture_output=True, text=True)
    for flag in ("--cap-drop", "--security-opt", "--pids-limit", "--read-only", "--ulimit"):
        assert flag in out.stdout


def test_policy_render_shows_the_pilot_s_plan_on_an_engine(tmp_path: Path) -> None:
    """``policy render --pilot``: the JobWrapper as the container's pid 1, the files it
    gets on stdin, the container's name; without it, the payload starts with the
    container, so the shipped default's egress is refused (exit 3, one line)."""
    from cli_support import cli_env, run_cli

    home = tmp_path / "home"
    shutil.copytree(ROOT / "policies", home / "policies")
    (home / "policies" / "oci.toml").write_text(
        'extends = "default"\n[filesystem]\nimage = "docker://localhost/el9:1"\n'
    )
    env = cli_env(home)
    jdl = ROOT / "samples" / "hello.jdl"
    shown = run_cli(env, "policy", "render", jdl, "--runtime", "podman", "--policy", "oci",
                    "--pilot")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "  /.sandbox-agent/lib/jobwrapper.py\n" in shown.stdout
    assert "  --init\n" not in shown.stdout
    assert "stdin, before the handoff: jobwrapper.py, " in shown.stdout
    assert "container: <the job's container>, removed at teardown" in shown.stdout
    assert "network.mode                 egress: the job's own network namespace" in shown.stdout
    refused = run_cli(env, "policy", "render", jdl, "--runtime", "podman", "--policy", "oci")
    assert refused.returncode == 3
    assert refused.stderr.splitlines() == [
        "cannot enforce with podman: network.mode: egress: here the payload starts with the "
        "container, before the agent could plumb its network (the pilot's JobWrapper waits for "
        "it); it gets --network none"
    ]


def test_podman_without_a_uid_range_for_its_containers_is_refused_naming_the_fix(
    policies: Path,
) -> None:
    """--userns auto takes each container's host uids from the user containers in
    /etc/subuid and /etc/subgid; without a range every run fails with Podman's words
    alone: refused first, naming the line to add."""
    lacking = FixedHost(ENGINE_HOST.table, interpreter=CARRIED,
                        uid_ranges="/etc/subuid gives the user containers no range")  # fmt: skip
    with pytest.raises(Unenforceable, match=r"namespaces\.user: Podman: /etc/subuid gives"):
        docker.render(effective(policies, "images"), ["/bin/true"], workdir="/w",
                      engine="podman", host=lacking, rootless=False)  # fmt: skip


def test_the_real_host_names_the_range_podman_needs(tmp_path: Path) -> None:
    from sandbox_agent.runtime.plan import SUBORDINATE_RANGE, RealHost

    said = RealHost().uid_ranges_unmet()
    has = all(any(line.startswith("containers:") for line in Path(f).read_text().splitlines())
              for f in ("/etc/subuid", "/etc/subgid") if Path(f).exists())  # fmt: skip
    assert (said is None) is (has and Path("/etc/subuid").exists())
    if said is not None:
        assert SUBORDINATE_RANGE in said


def test_apptainer_jobwrapper_golden(policies: Path) -> None:
    """The pilot's plan on Apptainer: the JobWrapper on the host's python3 carried in,
    the confine step as its source, the wrapper's files and the compiled seccomp program
    on stdin into a scratch directory; nothing of the agent's bound (no <agent files>)."""
    plan = apptainer.render(effective(policies, "images"), ["unused"], workdir="/srv/work/7",
                            host=ENGINE_HOST, wrapper=True)  # fmt: skip
    expected = (GOLDEN / "apptainer-wrapper.argv").read_text().splitlines()
    assert words(plan.argv, policies) == expected
    assert not [word for word in plan.argv if AGENT_FILES in word]
    assert plan.agent_files == {} and [k for _, k in plan.sources_at] == ["confine"]
    names = [name for name, _ in plan.stdin_files]
    assert "seccomp.bpf" in names and "jobwrapper.py" in names
    step = list(plan.argv[plan.argv.index("-c") : plan.argv.index("--")])

    def given(option: str) -> str:
        return step[step.index(option) + 1]

    assert given("--files-from-stdin") == "/.sandbox-agent/lib"
    assert given("--seccomp") == "/.sandbox-agent/lib/seccomp.bpf"
    assert given("--confirm-fd") == "2"  # its word on stderr, before the JobWrapper
    assert plan.argv[-3:] == ("/.sandbox-agent/lib/jobwrapper.py", "--status-fd", "1")
    assert plan.confirm_on_stderr and not plan.container
