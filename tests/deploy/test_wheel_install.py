"""The built wheel, installed by a pool account into its own venv, runs a job.

What a site does instead of ``make``: build the wheel from the tracked files alone (the
source tree's symlinks and caches play no part), install it as uid 65534 with the
system's python3 into a venv of that account's, then submit a sample job and run it in
a cgroup delegated to the account (systemd's Delegate=yes), once on the shipped
``default`` and once on a site policy in a directory of its own that extends it by
name. Nothing here reads the source tree at run time: the policies and the seccomp
profile come from the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, close_scopes, delegated_cgroup, tracked_tree

SYSTEM_PYTHON = "/usr/bin/python3"
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing"),
    pytest.mark.skipif(os.geteuid() != 0, reason="installing as uid 65534 needs root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is missing"),
    pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="no system python3"),
    pytest.mark.skipif(shutil.which("git") is None, reason="git lists the tracked files"),
]


@pytest.fixture(scope="module")
def wheel() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-wheel."))
    try:
        base.chmod(0o755)
        tracked_tree(base / "src")
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
             "--disable-pip-version-check", "-w", str(base / "dist"), str(base / "src")],
            capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        if built.returncode != 0:
            pytest.skip(f"pip cannot build the wheel here: {built.stderr.strip()[-300:]}")
        (path,) = (base / "dist").glob("sandbox_agent-*.whl")
        (base / "dist").chmod(0o755)
        yield path
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_wheel_carries_the_policies_and_profiles(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = ROOT / "src" / "sandbox_agent" / "policies"
    wanted = {
        f"sandbox_agent/policies/{p.relative_to(shipped)}"
        for p in shipped.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "sandbox_agent/policies/seccomp/default.json" in wanted
    assert wanted <= names, sorted(wanted - names)


@pytest.fixture
def pool(wheel: Path) -> Iterator[Path]:
    """A pool account's directory (uid 65534) with a venv that has the wheel."""
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-pool."))
    try:
        base.chmod(0o711)
        os.chown(base, 65534, 65534)
        env = {"HOME": str(base), "PATH": "/usr/bin:/bin", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        for argv in (
            [SYSTEM_PYTHON, "-m", "venv", str(base / "venv")],
            [str(base / "venv/bin/pip"), "install", "--quiet", str(wheel)],
        ):
            done = subprocess.run(
                AS_NOBODY + argv, env=env, capture_output=True, text=True, check=False,
                timeout=900, cwd=base,
            )  # fmt: skip
            if done.returncode != 0:
                pytest.skip(f"{argv[0]} failed as uid 65534: {done.stderr.strip()[-300:]}")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_pool(pool: Path, prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(pool), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    argv = [*prefix, *AS_NOBODY, str(pool / "venv/bin/sandbox-agent"), *args]
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, check=False, timeout=300, cwd=pool
    )


def test_a_pool_account_runs_a_job_from_the_installed_wheel(pool: Path) -> None:
    delegated = delegated_cgroup(f"wheel-{os.getpid()}")
    if isinstance(delegated, str):
        pytest.skip(delegated)
    prefix, cgroups = delegated
    try:
        for name in ("hello.jdl", "hello.sh"):
            shutil.copy(ROOT / "samples" / name, pool / name)
            os.chown(pool / name, 65534, 65534)
        site = pool / "etc"  # a site policy alone in its own directory
        site.mkdir()
        (site / "site.toml").write_text(
            'extends = "default"\n[limits.memory]\ndefault = "1 GB"\nmax = "1 GB"\n'
        )
        home = str(pool / "home")
        linted = as_pool(pool, [], "policy", "lint", str(site / "site.toml"))
        assert linted.returncode == 0, linted.stdout + linted.stderr
        for policy in ("default", str(site / "site.toml")):
            submitted = as_pool(pool, [], "--home", home, "submit", "hello.jdl")
            assert submitted.returncode == 0, submitted.stderr
            ran = as_pool(pool, prefix, "--home", home, "run", "--json", "--policy", policy)
            assert ran.returncode == 0, ran.stderr
            events = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
            done = [e for e in events if e.get("event") == "finished"]
            assert [e.get("state") for e in done] == ["DONE"], ran.stdout + ran.stderr
        explained = as_pool(
            pool, [], "--home", home, "policy", "explain", "--policy", str(site / "site.toml")
        )
        assert explained.returncode == 0, explained.stderr
        assert "etc/site.toml" in explained.stdout and "policies/base.toml" in explained.stdout
        assert str(ROOT) not in explained.stdout  # nothing comes from the source tree
        shown = as_pool(pool, [], "--home", home, "outputs", "2")
        assert shown.returncode == 0, shown.stderr
    finally:
        close_scopes(cgroups)
