"""The sandbox is the OOM killer's first choice, never the agent: in a cgroup the
agent shares with its job (a batch slot's, which delegates nothing), a payload of many
small processes would otherwise get the agent killed first (each of its processes
smaller than the agent). Read from inside real sandboxes, root's and a pool account's
(whose undumpable agent cannot write its child's /proc files before exec)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_support import cli_env, run_cli, shared_workdir, unprivileged_or_skip

from sandbox_agent.runtime.launch import OOM_SCORE_ADJ

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")


def test_root_agents_sandbox_has_the_highest_score() -> None:
    workdir = shared_workdir()
    try:
        env = cli_env(workdir.parent / "home")
        done = run_cli(env, "sandbox", "exec", "--workdir", workdir, "--", "cat",
                       "/proc/self/oom_score_adj")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(OOM_SCORE_ADJ)
        mine = Path("/proc/self/oom_score_adj").read_text().strip()
        assert mine != str(OOM_SCORE_ADJ)  # the agent's own is left as it was
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)


def test_a_pool_accounts_sandbox_has_it_too() -> None:
    nobody = unprivileged_or_skip("oom")
    workdir = shared_workdir()
    try:
        env = cli_env(workdir.parent / "home", **nobody.extra)
        program = nobody.prefix + nobody.program
        done = run_cli(env, "sandbox", "exec", "--workdir", workdir, "--", "cat",
                       "/proc/self/oom_score_adj", program=program)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(OOM_SCORE_ADJ)
    finally:
        nobody.remove()
        shutil.rmtree(workdir.parent, ignore_errors=True)
