"""Jobs on images, end to end through the console script with the real bwrap, seccomp,
landlock, squashfuse and token authority: a busybox root as a directory, a squashfs
file and a SIF file; the payload sees the image's userland, not the host's; a pinned
image with one byte changed does not run; a JDL cannot pick an image outside the
site's roots; the isolation probes pass inside an image."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import cli_env, run_cli, shared_workdir, shell_script
from image_support import busybox_root, need_fuse, sif, squashfs

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
CLI = Callable[..., subprocess.CompletedProcess[str]]
# What the payload prints: the image's release, and whether host files are visible. The
# script is base/look.sh, beside every JDL here (the base fixture writes it).
LOOK_SH = ("cat /etc/os-release\n"
           "test -e /etc/debian_version && echo HOST-ETC || echo no-host-etc\n"
           "test -e /usr/bin/python3 && echo HOST-PYTHON || echo no-host-python")  # fmt: skip
LOOK = 'Executable = "look.sh";\n'


@pytest.fixture
def base() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-imagejobs-"))
    where.chmod(0o711)
    assert shell_script(where, "look.sh", LOOK_SH) == LOOK
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def images(base: Path) -> dict[str, Path]:
    """The same busybox root three ways, under base/images (the site's image root)."""
    root = busybox_root(base / "images" / "busybox")
    (base / "images").chmod(0o755)
    packed = squashfs(root, base / "images" / "busybox.sqfs")
    return {"directory": root, "squashfs": packed,
            "sif": sif(packed, base / "images" / "busybox.sif")}  # fmt: skip


@pytest.fixture
def cli(base: Path) -> CLI:
    env = cli_env(base / "home")

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return run_cli(env, *args)

    return run


def site_policy(base: Path, body: str) -> None:
    """HOME/policies/images.toml: the shipped default with ``body`` on top."""
    policies = base / "home" / "policies"
    if not policies.exists():
        shutil.copytree(SHIPPED, policies)
    (policies / "images.toml").write_text(f'extends = "default"\n{body}')


def submit(cli: CLI, base: Path, name: str, text: str, policy: str = "images") -> int:
    path = base / f"{name}.jdl"
    path.write_text(text)
    result = cli("submit", path, "--policy", policy)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def pilot(cli: CLI) -> subprocess.CompletedProcess[str]:
    return cli("run", "--json", "--lease", "30", "--policy", "images")


def status(cli: CLI, job: int) -> dict[str, Any]:
    return json.loads(cli("status", job, "--json").stdout)


def finished(result: subprocess.CompletedProcess[str], job: int) -> dict[str, Any]:
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return next(e for e in lines if e["event"] == "finished" and e["job"] == job)


def leftovers() -> set[str]:
    """Image mounts and mount points on this host (none may outlive a job)."""
    mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if "sandbox-agent-image-" in line}  # fmt: skip
    return mounts | {str(p) for p in Path("/tmp").glob("sandbox-agent-image-*")}


@pytest.mark.parametrize("kind", ["directory", "squashfs", "sif"])
def test_a_job_runs_on_the_images_userland_not_the_hosts(
    cli: CLI, base: Path, images: dict[str, Path], kind: str
) -> None:
    if kind != "directory":
        need_fuse()
    before = leftovers()
    site_policy(base, f'[images]\nplatforms = {{ busybox = "{images[kind]}" }}\n')
    job = submit(cli, base, "look", LOOK + 'Platform = "busybox";')
    result = pilot(cli)
    assert result.returncode == 0, result.stderr
    assert status(cli, job)["state"] == "DONE"
    stdout = cli("logs", job, "--stream", "stdout").stdout
    assert 'PRETTY_NAME="Busybox Test Image 1.0"' in stdout
    assert "no-host-etc" in stdout and "no-host-python" in stdout
    assert "debian" not in stdout.lower()
    record = json.loads((base / "home" / "outputs" / str(job) / "0" / "audit.json").read_text())
    image = record["record"]["image"]
    shown = json.loads(cli("image", "inspect", images[kind], "--json").stdout)
    assert (image["kind"], image["digest"], image["pinned"]) == (kind, shown["digest"], False)
    assert image["chosen_by"].startswith("jdl:Platform busybox (")
    audit = cli("audit", "show", job).stdout
    assert f"image: {kind} {images[kind]}, {shown['digest']} (unpinned; chosen by jdl:" in audit
    assert leftovers() == before  # unmounted, mount point removed


def test_a_pinned_site_image_with_one_byte_changed_stops_the_pilot_before_any_job(
    cli: CLI, base: Path, images: dict[str, Path]
) -> None:
    need_fuse()
    packed = images["squashfs"]
    pin = cli("image", "pin", packed).stdout
    site_policy(base, f'[filesystem]\nimage = "{packed}"\n{pin}')
    job = submit(cli, base, "look", LOOK)
    first = pilot(cli)  # pinned and intact: runs
    assert first.returncode == 0, first.stderr
    assert status(cli, job)["state"] == "DONE"
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0x01
    packed.write_bytes(bytes(data))
    second_job = submit(cli, base, "look-again", LOOK)
    result = pilot(cli)
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pins it to sha256:" in result.stderr and "the image changed" in result.stderr
    assert [h["state"] for h in status(cli, second_job)["history"]] == ["WAITING"]


def test_a_changed_platform_image_hands_the_job_back_and_stops_the_pilot(
    cli: CLI, base: Path, images: dict[str, Path]
) -> None:
    root = images["directory"]
    pin = cli("image", "pin", root).stdout
    site_policy(base, f'[images]\nplatforms = {{ busybox = "{root}" }}\n{pin}')
    (root / "etc" / "hostname").write_text("changed\n")
    job = submit(cli, base, "look", LOOK + 'Platform = "busybox";')
    result = pilot(cli)
    assert result.returncode == 3, result.stderr  # the site's image: every job here would fail
    assert "the site's image:" in result.stderr and "the image changed" in result.stderr
    assert status(cli, job)["state"] == "WAITING"  # given back, not failed


def test_a_job_on_a_pinned_image_it_chose_ends_error_ib_when_the_image_changed(
    cli: CLI, base: Path, images: dict[str, Path]
) -> None:
    root = images["directory"]
    pin = cli("image", "pin", root).stdout
    site_policy(base, f'[images]\nroots = ["{base}/images"]\n{pin}')
    (root / "etc" / "hostname").write_text("changed\n")
    job = submit(cli, base, "look", LOOK + f'Image = "{root}";')
    result = pilot(cli)
    assert result.returncode == 0, result.stderr  # the job's choice, not the node's fault
    event = finished(result, job)
    assert event["state"] == "ERROR_IB"
    assert "its image:" in event["detail"] and "the image changed" in event["detail"]


def test_a_jdl_naming_an_image_outside_the_roots_is_refused_with_the_reason(
    cli: CLI, base: Path, images: dict[str, Path]
) -> None:
    elsewhere = busybox_root(base / "elsewhere" / "root")
    (base / "images" / "escape").symlink_to(elsewhere)
    site_policy(base, f'[images]\nroots = ["{base}/images"]\n')
    (base / "home" / "policies" / "wide.toml").write_text(
        f'extends = "default"\n[images]\nroots = ["{base}"]\n'
    )
    # at submit, against the site's policy: one line, nothing queued
    path = base / "outside.jdl"
    path.write_text(LOOK + f'Image = "{elsewhere}";')
    refused = cli("submit", path, "--policy", "images")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert f"Image: '{elsewhere}' is not under an image root this site allows" in refused.stderr
    # a job queued elsewhere (another site's roots) is never matched here
    outside = submit(cli, base, "outside", LOOK + f'Image = "{elsewhere}";', policy="wide")
    reason = json.loads(pilot(cli).stdout.splitlines()[-1])["reason"]
    assert f"Image: '{elsewhere}' is not under an image root this site allows" in reason
    assert [h["state"] for h in status(cli, outside)["history"]] == ["WAITING"]
    cli("kill", outside)
    link = submit(cli, base, "link", LOOK + f'Image = "{base}/images/escape";', policy="wide")
    reason = json.loads(pilot(cli).stdout.splitlines()[-1])["reason"]
    assert "leads through a symlink to" in reason and status(cli, link)["state"] == "WAITING"


def test_the_isolation_probes_pass_inside_an_image(
    cli: CLI, base: Path, images: dict[str, Path]
) -> None:
    need_fuse()
    site_policy(base, f'[filesystem]\nimage = "{images["sif"]}"\n')
    result = cli("selftest", "--policy", "images", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    rows = {row["attack"]: row for row in outcome["attacks"]}
    assert not [name for name, row in rows.items() if row["result"] == "LEAKED"]
    assert sum(row["result"] == "blocked" for row in rows.values()) > 30
    # the probe wrote at the image's root: it has no /usr/bin, the host's has
    assert re.search(r"/usr/bin/probe-planted-\d+: ENOENT", rows["write_root_fs"]["detail"])


def test_sandbox_exec_runs_a_command_on_an_image(
    cli: CLI, base: Path, images: dict[str, Path]
) -> None:
    site_policy(base, f'[filesystem]\nimage = "{images["directory"]}"\n')
    workdir = shared_workdir()
    try:
        result = cli("sandbox", "exec", "--policy", "images", "--workdir", workdir, "--",
                     "/bin/sh", "-c", "cat /etc/os-release; ls /")  # fmt: skip
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert "Busybox Test Image 1.0" in result.stdout
    assert "usr" in result.stdout.split() and "lib" not in result.stdout.split()
