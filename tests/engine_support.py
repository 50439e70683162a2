"""Real container engines for the tests: Podman as installed, a Docker daemon (started
here when none answers, and stopped again), and images made without a registry.

- busybox: scripts/busybox-image.sh's root, imported (a second; no Python in it, so the
  JobWrapper runs on the host's python3 carried in, as on bwrap).
- python: Debian bookworm's minimal base with python3, from debootstrap (Debian's
  package archive is reachable where no container registry is), built once into
  CACHE and imported from there in later runs.

Each helper skips its test with the reason when the engine or the image cannot be had.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SANDBOX_AGENT_IMAGE_CACHE", "/var/cache/sandbox-agent-images"))
BUSYBOX = "localhost/sandbox-agent-test/busybox:1"
# the same with an /etc/ld.so.preload naming a library: what an image may try on the
# loader the agent's interpreter is started through
PRELOADING = "localhost/sandbox-agent-test/busybox-preload:1"
PRELOAD_LINE = "/lib/sandbox-agent-test-preload.so"
PYTHON = "localhost/sandbox-agent-test/bookworm-python3:1"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a site accepts to run jobs in Docker, which makes no user namespace per container
# and cannot mask the node's /proc files (runtime/docker.py)
DOCKER_ACCEPTS = ["namespaces.user", "filesystem.proc"]


def accepted(engine: str, *also: str) -> str:
    """The policy lines by which a site accepts what ``engine`` cannot hold (and
    ``also``): an [optional] table, or nothing."""
    keys = [*(DOCKER_ACCEPTS if engine == "docker" else []), *also]
    if not keys:
        return ""
    listed = ", ".join(f'"{key}"' for key in keys)
    return f"[optional]\nrequirements = {{ append = [{listed}] }}\n"


_made: dict[tuple[str, str], str | None] = {}  # (engine, image) -> why not, once tried


def answers(engine: str) -> str | None:
    """None when ``engine`` runs containers here, else why not."""
    if os.geteuid() != 0:
        return "the engine tests run as root (rootful Podman and Docker)"
    if shutil.which(engine) is None:
        return f"{engine} is not installed (make installs it)"
    done = subprocess.run([engine, "version", "--format", "{{.Server.Version}}"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    if done.returncode != 0 or not done.stdout.strip():
        return f"{engine} does not answer: {done.stderr.strip()[:200]}"
    return None


_daemon: list[subprocess.Popen[bytes]] = []  # the dockerd this process started, if any


def ensure_docker() -> str | None:
    """A Docker daemon for the rest of this process: the one running, or one started
    here once (as the reference machine needs it: no iptables, no bridge) and stopped
    when the process ends. Why there is none, or None."""
    if answers("docker") is None:
        return None
    if shutil.which("dockerd") is None:
        return "dockerd is not installed (make installs docker.io)"
    if os.geteuid() != 0 or _daemon:
        return answers("docker")
    log = tempfile.NamedTemporaryFile(prefix="sandbox-agent-dockerd-", suffix=".log",  # noqa: SIM115
                                      delete=False)  # fmt: skip
    daemon = subprocess.Popen(["dockerd", "--iptables=false", "--bridge=none"], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    _daemon.append(daemon)
    atexit.register(_stop, daemon, log.name)
    for _ in range(300):
        if answers("docker") is None or daemon.poll() is not None:
            break
        time.sleep(0.1)
    why = answers("docker")
    if why is not None:
        tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-3:]
        why = f"dockerd did not start: {' | '.join(tail)}"
    return why


def _stop(daemon: subprocess.Popen[bytes], log: str) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    with contextlib.suppress(OSError):
        os.unlink(log)


def image(engine: str, which: str) -> str:
    """The image ``which`` (BUSYBOX or PYTHON) in ``engine``'s store; skips the test
    when it cannot be made."""
    why = answers(engine)
    if why is None:
        key = (engine, which)
        if key not in _made:
            _made[key] = _load(engine, which)
        why = _made[key]
    if why is not None:
        pytest.skip(why)
    return which


def _load(engine: str, which: str) -> str | None:
    present = subprocess.run([engine, "image", "inspect", which], capture_output=True)
    if present.returncode == 0:
        return None
    archive = _python_tar() if which == PYTHON else _busybox_tar(which == PRELOADING)
    if isinstance(archive, str):
        return archive
    done = subprocess.run([engine, "import", str(archive), which], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    if which != PYTHON:
        archive.unlink()
    if done.returncode != 0:
        return f"{engine} import failed: {done.stderr.strip()[:300]}"
    return None


def _busybox_tar(preload: bool = False) -> Path | str:
    with tempfile.TemporaryDirectory(prefix="sandbox-agent-busybox-") as where:
        root = Path(where) / "root"
        made = subprocess.run(["bash", str(ROOT / "scripts/busybox-image.sh"), str(root)],
                              capture_output=True, text=True)  # fmt: skip
        if made.returncode != 0:
            return f"no busybox image: {made.stderr.strip()[:200]}"
        # as in any distribution's image; runc keeps the image's mode of a directory it
        # mounts a tmpfs on (the directory image for bwrap must not be writable by others)
        (root / "tmp").chmod(0o1777)
        if preload:
            (root / "etc" / "ld.so.preload").write_text(PRELOAD_LINE + "\n")
        fd, name = tempfile.mkstemp(prefix="sandbox-agent-busybox-", suffix=".tar")
        os.close(fd)  # tar writes it by name; an open descriptor would outlive its unlink
        archive = Path(name)
        subprocess.run(["tar", "-C", str(root), "-cf", str(archive), "."], check=True)
        return archive


def _python_tar() -> Path | str:
    """Debian's minimal base with python3, as a tar in CACHE: built once (a minute)."""
    archive = CACHE / f"{SUITE}-python3.tar"
    if archive.is_file():
        return archive
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (make installs it)"
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sandbox-agent-debootstrap-", dir=CACHE) as where:
        root = Path(where) / "root"
        made = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3", SUITE,
                               str(root), MIRROR], capture_output=True, text=True,
                              timeout=1200)  # fmt: skip
        if made.returncode != 0:
            said = (made.stderr or made.stdout).strip().splitlines()[-1:]
            return f"debootstrap of {SUITE} failed: {said}"
        partial = archive.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."],
                       check=True)  # fmt: skip
        partial.rename(archive)
    return archive


OLD_SUITE = "bullseye"  # Debian 11: python3 is 3.9, as on an EL9 node


def old_python_tree() -> Path | str:
    """Debian 11's minimal base with its python3 (3.9), as a directory in CACHE, built
    once with debootstrap (a minute): a node's userland whose /usr/bin/python3 is older
    than the agent's, for the confine step and the JobWrapper to run on. Why not, when
    it cannot be had."""
    tree = CACHE / f"{OLD_SUITE}-python3"
    if (tree / "usr" / "bin" / "python3").exists():
        return tree
    if os.geteuid() != 0:
        return "debootstrap runs as root"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (make installs it)"
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sandbox-agent-debootstrap-", dir=CACHE) as where:
        root = Path(where) / "root"
        made = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3",
                               OLD_SUITE, str(root), MIRROR], capture_output=True, text=True,
                              timeout=1200)  # fmt: skip
        if made.returncode != 0 or not (root / "usr" / "bin" / "python3").exists():
            said = (made.stderr or made.stdout).strip().splitlines()[-1:]
            return f"debootstrap of {OLD_SUITE} failed: {said}"
        try:
            root.rename(tree)  # whole or not at all
        except OSError as error:
            return f"cannot keep the {OLD_SUITE} tree in {tree}: {error.strerror}"
    return tree
