"""Running the installed ``sandbox-agent`` console script as a user would, for CLI tests.

Every CLI test goes through ``run_cli``: the real entry point in a subprocess, a private
state directory, and the check that no answer is ever a traceback."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "sandbox-agent"
ROOT = Path(__file__).resolve().parents[1]
# On a cgroup v2 test machine (tests/vm boots one): the cgroup under which each command
# gets one of its own, alone in it, as systemd starts a service with Delegate=yes or
# `systemd-run --scope -p Delegate=yes` does. Unset: commands share the test's cgroup.
SCOPES = os.environ.get("SANDBOX_AGENT_TEST_SCOPES")
# How many times slower than this machine the test machine runs (an emulated CPU)
SLOW = float(os.environ.get("SANDBOX_AGENT_TEST_SLOW", "1"))
_scopes = itertools.count(1)


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: ours, with a private home and no colours."""
    return {**os.environ, "SANDBOX_AGENT_HOME": str(home), "NO_COLOR": "1", **extra}


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout
    assert "Traceback" not in result.stderr


def run_cli(
    env: dict[str, str], *args: object, program: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script (or ``program``) with ``args``; never a traceback."""
    command = (program or [str(SCRIPT)]) + [str(a) for a in args]
    scope = None
    if SCOPES and not any("cgroup.procs" in word for word in command[:3]):
        scope = new_scope("cli")  # a command not already started in a delegated cgroup
        command = scope_prefix([scope]) + command
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            cwd=ROOT,
            env=env,
            check=False,
            timeout=120 * SLOW,
        )
    finally:
        if scope is not None:
            close_scopes([scope])
    assert_no_traceback(result)
    return result


def new_scope(name: str, owner: int | None = None) -> Path:
    """A fresh cgroup under SCOPES for one command, delegated to ``owner`` as systemd
    delegates one: the directory and its cgroup.procs, cgroup.subtree_control and
    cgroup.threads are the owner's, the limit files stay root's."""
    assert SCOPES, "scopes exist on a cgroup v2 test machine only"
    directory = Path(SCOPES) / f"sandbox-agent-test-{name}-{os.getpid()}-{next(_scopes)}"
    directory.mkdir()
    if owner is not None:
        for entry in (directory, *(directory / f for f in DELEGATED_FILES)):
            os.chown(entry, owner, owner)
    return directory


DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")


def scope_prefix(directories: list[Path]) -> list[str]:
    """The argv prefix that starts a command in ``directories`` (one per hierarchy)."""
    script = "".join(f"echo $$ > {d}/cgroup.procs; " for d in directories) + 'exec "$@"'
    return ["sh", "-c", script, "sh"]


def close_scopes(directories: list[Path]) -> None:
    """Remove a command's cgroups once it has ended, and fail the test when the command
    left anything there: a process still running, or a cgroup but the agent's own
    leaf (``sandbox-agent-agent``, where a v2 agent moves itself)."""
    problems = []
    for directory in directories:
        for below in sorted(directory.rglob("*"), key=lambda p: -len(p.parts)):
            if not below.is_dir():
                continue
            running = (below / "cgroup.procs").read_text().split()
            if running:
                problems.append(f"{below} still runs {running}")
            elif below.name != "sandbox-agent-agent" or below.parent != directory:
                problems.append(f"{below} was left behind")
            below.rmdir()
        left = (directory / "cgroup.procs").read_text().split()
        if left:
            problems.append(f"{directory} still runs {left}")
        else:
            directory.rmdir()
    assert not problems, "; ".join(problems)


def shared_workdir() -> Path:
    """A fresh work directory the sandbox's host uid can reach and write: as root the
    sandbox runs as 65534, and pytest's tmp_path sits under a directory private to root.
    The caller removes ``result.parent``."""
    import tempfile

    base = Path(tempfile.mkdtemp(dir="/tmp"))
    base.chmod(0o711)
    workdir = base / "work"
    workdir.mkdir()
    workdir.chmod(0o777)
    return workdir


def shell_script(directory: Path, name: str, script: str, interpreter: str = "/bin/sh") -> str:
    """``script`` written as the program ``directory/name`` (``#!interpreter`` first, mode
    0755: readable by the sandbox's uid), and the JDL line that runs it: a relative
    Executable is a local file next to the JDL, staged into the work directory at
    submit. A payload's script is never an ``Arguments = "-c '...'"``: JAliEn splits
    Arguments on white space alone, quotes kept as plain characters."""
    path = directory / name
    path.write_text(f"#!{interpreter}\n{script}\n")
    path.chmod(0o755)
    return f'Executable = "{name}";\n'


def nobody_program() -> tuple[list[str], dict[str, str]] | str:
    """How to run the CLI as an unprivileged agent (uid 65534): the argv prefix and the
    extra environment, or why it cannot be done here. The venv's interpreter may live
    where 65534 cannot read it (pyenv under /root), so the system Python runs the
    package from the source tree with the venv's installed dependencies."""
    import shutil
    import site

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "switching to uid 65534 needs root and setpriv"
    python = "/usr/bin/python3"
    if not Path(python).exists():
        return "no system python3 to run the agent as uid 65534"
    packages = [p for p in site.getsitepackages() if "site-packages" in p]
    paths = [str(ROOT / "src"), *packages]
    probe = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c",
         "import sandbox_agent.cli, psutil, pyseccomp, prctl"],
        env={"PYTHONPATH": ":".join(paths), "PATH": os.environ.get("PATH", "")},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"uid 65534 cannot import the agent from {paths[0]}: {last}"
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-m",
              "sandbox_agent"]  # fmt: skip
    return prefix, {"PYTHONPATH": ":".join(paths)}


def delegated_cgroup(name: str) -> tuple[list[str], list[Path]] | str:
    """A cgroup delegated to uid 65534, as a site gives its unprivileged pilot one: the
    argv prefix that starts a command inside it, and the directories to remove after
    (``close_scopes``). Or why it cannot be made here (not root, no writable cgroup)."""
    from sandbox_agent.limits.cgroups import CgroupError, discover

    if os.geteuid() != 0:
        return "delegating a cgroup needs root"
    if SCOPES:
        made = [new_scope(name, owner=65534)]
        return scope_prefix(made), made
    try:
        hierarchy = discover()
    except CgroupError as exc:
        return f"no cgroup to delegate: {exc}"
    made = []
    for parent in hierarchy.roots():
        directory = parent / f"sandbox-agent-test-{name}"
        directory.mkdir(exist_ok=True)
        for entry in [directory, *directory.iterdir()]:
            if entry.name in (directory.name, "tasks", *DELEGATED_FILES):
                os.chown(entry, 65534, 65534)
        made.append(directory)
    return scope_prefix(made), made


@dataclass
class Unprivileged:
    """How to run the CLI as an unprivileged pilot (uid 65534) in a cgroup delegated to
    it: ``prefix + program`` for the pilot itself, ``program`` for the other commands,
    ``extra`` for the environment; ``remove()`` the cgroups after."""

    prefix: list[str]
    program: list[str]
    extra: dict[str, str]
    cgroups: list[Path]

    def remove(self) -> None:
        close_scopes(self.cgroups)


def unprivileged_or_skip(name: str) -> Unprivileged:
    """An unprivileged pilot's way to run, or the test skipped with the reason."""
    import pytest

    how = nobody_program()
    if isinstance(how, str):
        pytest.skip(how)
    delegated = delegated_cgroup(f"{name}-{os.getpid()}")
    if isinstance(delegated, str):
        pytest.skip(delegated)
    return Unprivileged(delegated[0], how[0], how[1], delegated[1])


@contextmanager
def loop_filesystem(mib: int) -> Iterator[Path]:
    """A fresh ext4 filesystem of ``mib`` MiB on a loop device, mounted on a directory
    under /tmp (0711): a small real disk to fill. Root only; the caller skips else."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-loopfs-"))
    base.chmod(0o711)
    image, mountpoint = base / "disk.img", base / "disk"
    mountpoint.mkdir()
    with open(image, "wb") as file:
        file.truncate(mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        mountpoint.chmod(0o711)
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def running(marker: str) -> list[int]:
    """The host pids whose command line starts with ``marker`` (a test's own daemon)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(marker.encode()):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def tracked_tree(target: Path) -> None:
    """A copy of the files git tracks, as a fresh clone has them (a wheel is built from
    it: the source tree's caches and untracked files play no part)."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target / name)
        else:
            shutil.copy2(source, target / name)
