"""The JobWrapper in Apptainer (or Singularity), where one is installed (a site, CVMFS):
a real job to DONE through USE_CONTAINERS, on a busybox directory image, and the whole
hostile catalogue finding nothing. Apptainer is not packaged for Debian, so on the
reference machine this is skipped with the reason; the plan itself is held exactly by
tests/runtime/golden/apptainer-wrapper.argv."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, cli_env, run_cli

from sandbox_agent.runtime import choose


@pytest.fixture(params=["apptainer", "singularity"])
def runtime(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    found = choose.available(name)
    if not found.ok:
        pytest.skip(f"{name} is not here: {found.reason}")
    return name


@pytest.fixture
def home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-apptainer-"))
    base.chmod(0o711)
    made = subprocess.run(["bash", str(ROOT / "scripts/busybox-image.sh"), str(base / "bb")],
                          capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    home = base / "home"
    shutil.copytree(ROOT / "policies", home / "policies")
    # Apptainer has no cgroup namespace flag, and the agent's relay plumbs no Apptainer
    # network yet: the site accepts both
    (home / "policies" / "app.toml").write_text(
        f'extends = "default"\n[filesystem]\nimage = "{base / "bb"}"\n[network]\n'
        'mode = "none"\n[optional]\nrequirements = { append = ["namespaces.cgroup"] }\n'
    )
    yield home
    shutil.rmtree(base, ignore_errors=True)


def test_use_containers_runs_a_real_job_in_apptainer_and_the_probe_finds_nothing(
    runtime: str, home: Path
) -> None:
    env = cli_env(home, USE_CONTAINERS=runtime.upper())
    submitted = run_cli(env, "submit", ROOT / "samples" / "hello.jdl")
    assert submitted.returncode == 0, submitted.stderr
    ran = run_cli(env, "run", "--json", "--policy", "app", "--once")
    assert ran.returncode == 0, ran.stderr
    seen = {e["event"]: e for e in map(json.loads, ran.stdout.splitlines())}
    assert seen["agent"]["runtime"] == runtime
    assert (seen["finished"]["state"], seen["finished"]["exit_code"]) == ("DONE", 0)
    probe = run_cli(env, "selftest", "--runtime", runtime, "--policy", "app", "--json")
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr
    answer = json.loads(probe.stdout)
    assert answer["leaked"] == [] and answer["host_saw"] == [], answer
