"""An rlimit above what the agent may set is one line naming it, never "Exception
occurred in preexec_fn": in the launcher (so `sandbox exec`, the pilot's preflight and
its jobs), and in doctor. Real limits: the kernel's fs.nr_open for root, and a pool
account whose hard limit prlimit lowered."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_support import cli_env, run_cli, shared_workdir, unprivileged_or_skip

from sandbox_agent.limits import rlimits
from sandbox_agent.policy import load_policy

SITE = 'extends = "default"\n[process.rlimits]\nnofile = 65536\n'
HARD = 20000  # the pool account's hard limit, as a batch system may set it


TRY_SET = """
import resource, sys
value = int(sys.argv[1])
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (value, value))
except (OSError, ValueError):
    sys.exit(1)
"""


def kernel_takes(value: int) -> bool:
    """Whether the kernel lets this process's child set nofile to ``value``."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", TRY_SET, str(value)], check=False).returncode == 0


def test_the_ceiling_is_the_kernels_own() -> None:
    """Whatever this process is (root with or without CAP_SYS_RESOURCE), the ceiling
    named is exactly where the kernel starts refusing."""
    top = rlimits.ceiling("nofile")
    assert top is not None  # a hard limit or fs.nr_open always bounds nofile
    most, what = top
    assert kernel_takes(most) and not kernel_takes(most + 1)
    assert rlimits.above([("nofile", most), ("core", 0)]) == []
    (line,) = rlimits.above([("nofile", most + 1), ("core", 0)])
    assert line.startswith(f"process.rlimits.nofile = {most + 1} is above {what} ({most}): ")


@pytest.fixture
def pool_account() -> tuple[list[str], list[str], dict[str, str], Path]:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is missing")
    nobody = unprivileged_or_skip("rlimits")
    workdir = shared_workdir()
    policies = workdir.parent / "policies"
    policies.mkdir()
    (policies / "site.toml").write_text(SITE)
    lowered = ["prlimit", f"--nofile={HARD}:{HARD}"]
    env = cli_env(workdir.parent / "home", SANDBOX_AGENT_POLICIES=str(policies), **nobody.extra)
    yield nobody.prefix + lowered, nobody.program, env, workdir
    nobody.remove()
    shutil.rmtree(workdir.parent, ignore_errors=True)


def test_sandbox_exec_names_the_limit_and_the_fix(pool_account) -> None:  # type: ignore[no-untyped-def]
    prefix, program, env, workdir = pool_account
    done = run_cli(env, "sandbox", "exec", "--policy", "site", "--workdir", workdir, "--",
                   "true", program=prefix + program)  # fmt: skip
    assert done.returncode != 0
    assert "preexec_fn" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert (
        f"process.rlimits: nofile = 65536 is above this agent's hard limit ({HARD}): "
        "lower it in the policy, or raise the pilot's hard limit (LimitNOFILE="
    ) in line
    fits = run_cli(env, "sandbox", "exec", "--workdir", workdir, "--", "sh", "-c", "ulimit -n",
                   program=prefix + program)  # fmt: skip
    assert fits.returncode == 0, fits.stderr  # the shipped default's value fits
    assert fits.stdout.strip() == str(load_policy("default").value("process.rlimits.nofile"))


def test_doctor_finds_it_before_any_job(pool_account) -> None:  # type: ignore[no-untyped-def]
    prefix, program, env, _workdir = pool_account
    done = run_cli(env, "doctor", "--policy", "site", program=prefix + program)
    assert done.returncode == 3, done.stdout
    lines = [line for line in done.stdout.splitlines() if line.startswith("MISSING  policy site: ")]
    assert len(lines) == 1 and "process.rlimits" in lines[0], done.stdout
    assert "the pilot cannot run jobs here: policy site: process.rlimits" in done.stdout
    assert f"process.rlimits.nofile = 65536 is above this agent's hard limit ({HARD})" in lines[0]


def test_root_of_a_user_namespace_is_held_to_its_hard_limit() -> None:
    """CAP_SYS_RESOURCE counts for a hard limit only in the initial user namespace: a
    pilot that is root inside a namespace of its own cannot raise one."""
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is missing")
    script = ("from sandbox_agent.limits import rlimits; import resource\n"
              "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
              "print(rlimits.ceiling('nofile'), hard)")  # fmt: skip
    done = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", script],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"no user namespace here: {done.stderr.strip()[-200:]}")
    said = done.stdout.split()
    assert said[-1] in said[0], done.stdout  # (hard, "this agent's hard limit")
    assert "this agent's hard limit" in done.stdout
