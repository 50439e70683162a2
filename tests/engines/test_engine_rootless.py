"""Rootless Podman: an unprivileged pilot (uid 65534) whose JobWrapper runs in Podman as
that user. Podman ignores --memory, --cpus and --pids-limit there on cgroup v1 (with a
warning, exit 0), so the plan leaves the limits to the agent's job cgroup, in a cgroup
the site delegated to the pilot, and the session reads them back from the container's
cgroups before the handoff. Without a delegated cgroup nothing would hold them: the
pilot refuses in one line.

The test gives uid 65534 subordinate ids for its duration (as a site gives its pool
account), and a home and runtime directory of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, cli_env, run_cli, unprivileged_or_skip
from engine_support import answers

NOBODY = 65534
IMAGE = "localhost/sandbox-agent-test/busybox-rootless:1"
RANGE = f"{NOBODY}:3000000:65536\n"


@pytest.fixture
def subordinate_ids() -> Iterator[None]:
    """uid 65534 gets a range in /etc/subuid and /etc/subgid; the files are put back."""
    if answers("podman") is not None:
        pytest.skip(str(answers("podman")))
    if shutil.which("newuidmap") is None:
        pytest.skip("rootless Podman needs newuidmap (the uidmap package)")
    kept = {}
    for name in ("/etc/subuid", "/etc/subgid"):
        path = Path(name)
        kept[path] = path.read_text() if path.exists() else None
        text = kept[path] or ""
        path.write_text(text + ("" if not text or text.endswith("\n") else "\n") + RANGE)
    try:
        yield
    finally:
        for path, text in kept.items():
            if text is None:
                path.unlink()
            else:
                path.write_text(text)


@pytest.fixture
def user_dirs(subordinate_ids: None) -> Iterator[tuple[Path, dict[str, str]]]:
    """A base directory for the pilot, and the user's own HOME and runtime directory
    (Podman keeps the user's images and state there), the busybox image imported."""
    base = Path(tempfile.mkdtemp(prefix="sandbox-agent-rootless-"))
    base.chmod(0o711)
    (base / "user" / "run").mkdir(parents=True)
    (base / "user" / "run").chmod(0o700)
    made = subprocess.run(["bash", str(ROOT / "scripts/busybox-image.sh"), str(base / "bb")],
                          capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    subprocess.run(["tar", "-C", str(base / "bb"), "-cf", str(base / "bb.tar"), "."], check=True)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(base)], check=True)
    variables = {"HOME": str(base / "user"), "XDG_RUNTIME_DIR": str(base / "user" / "run")}
    as_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    imported = subprocess.run([*as_user, "podman", "import", "-q", str(base / "bb.tar"), IMAGE],
                              env={"PATH": os.environ["PATH"], **variables}, cwd=base,
                              capture_output=True, text=True)  # fmt: skip
    if imported.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"rootless Podman cannot import here: {imported.stderr.strip()[-200:]}")
    try:
        yield base, variables
    finally:
        subprocess.run([*as_user, "podman", "system", "reset", "--force"], cwd=base,
                       env={"PATH": os.environ["PATH"], **variables},
                       capture_output=True)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def test_an_unprivileged_pilot_runs_jobs_in_rootless_podman_its_cgroup_holding_the_limits(
    user_dirs: tuple[Path, dict[str, str]],
) -> None:
    base, variables = user_dirs
    nobody = unprivileged_or_skip("engine-rootless")
    try:
        home = base / "home"
        shutil.copytree(ROOT / "policies", home / "policies")
        (home / "policies" / "eng.toml").write_text(
            f'extends = "default"\n[filesystem]\nimage = "docker://{IMAGE}"\n'
        )
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(home)], check=True)
        env = cli_env(home, **nobody.extra, **variables)
        submitted = run_cli(env, "submit", ROOT / "samples" / "hello.jdl", program=nobody.program)
        assert submitted.returncode == 0, submitted.stderr

        # no delegated cgroup: nothing would hold the limits, and Podman would ignore them
        refused = run_cli(env, "run", "--runtime", "podman", "--policy", "eng", "--once",
                          program=nobody.program)  # fmt: skip
        assert refused.returncode == 3, refused.stdout + refused.stderr
        [line] = refused.stderr.splitlines()
        assert "limits." in line and "no job cgroup" in line and "takes no work" in line, line

        ran = run_cli(env, "run", "--json", "--runtime", "podman", "--policy", "eng", "--once",
                      program=[*nobody.prefix, *nobody.program])  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        seen = {e["event"]: e for e in map(json.loads, ran.stdout.splitlines())}
        assert seen["preflight"]["leaked"] == []
        assert (seen["finished"]["state"], seen["finished"]["exit_code"]) == ("DONE", 0)
        shown = json.loads(run_cli(env, "audit", "show", int(submitted.stdout), "--json",
                                   program=nobody.program).stdout)  # fmt: skip
        argv = shown["runtime"]["argv"]
        assert argv[argv.index("--userns") + 1] == "keep-id:uid=1000,gid=1000"
        assert "--memory" not in argv  # rootless Podman would ignore it
        # held by the agent's job cgroup, read back from the container's before the handoff
        assert {"memory", "pids", "cpu_cores"} <= set(shown["enforcement"]["kernel"])
        assert shown["runtime"]["container"] == "removed"
        assert shown["network"]["mode"] == "egress"  # plumbed from the user's namespace

        # the whole hostile catalogue, through rootless Podman, as the unprivileged pilot
        probe = run_cli(env, "selftest", "--runtime", "podman", "--policy", "eng", "--json",
                        program=[*nobody.prefix, *nobody.program])  # fmt: skip
        assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr
        answer = json.loads(probe.stdout)
        assert answer["leaked"] == [] and answer["host_saw"] == [], answer
        assert not [r for r in answer["attacks"] if r["result"] == "LEAKED"]
    finally:
        nobody.remove()
