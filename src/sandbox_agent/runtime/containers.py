"""A job's container on Docker or Podman, from the agent's side: its name and label,
finding it once it runs, removing it, and sweeping what a killed agent left.

The container belongs to the engine, not to the agent's process tree: SIGKILL of the
agent (or of the engine's client) leaves it running. Its JobWrapper ends it when its
stdin, which the agent holds open, closes (the handoff's lifeline). Besides, each one
is named for its job and labelled with the agent that started it (the boot, the PID
namespace, its pid and the pid's start time, which a reused pid does not share);
teardown removes it, and an agent starting removes every labelled container whose
agent it can prove gone: on this boot, in its own PID namespace, no such process. An
agent it cannot see (another PID namespace, another host on a shared engine, an
unreadable /proc) is never taken for dead.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from sandbox_agent.printable import clipped
from sandbox_agent.toolrun import run_tool

LABEL = "io.sandbox-agent.agent"  # boot id, PID namespace, agent pid, the pid's start time
PREFIX = "sandbox-agent-"  # every container's name starts so
PIDFILE = "container.pid"  # Podman's --pidfile, in the launch's private directory
TIMEOUT = 30.0  # seconds for one engine command (an engine under load is slow)
# What the engine's client needs of the agent's environment, and nothing else: a
# rootless Podman its user's runtime directory and home, Docker its socket.
CLIENT_VARIABLES = ("PATH", "HOME", "DOCKER_HOST", "XDG_RUNTIME_DIR", "CONTAINER_HOST")
_PROC = Path("/proc")


class ContainerError(RuntimeError):
    """The engine did not run, show or remove a container as asked: one line."""


def client_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The engine client's environment: CLIENT_VARIABLES the agent has (the payload's
    variables reach the container by other means and never these)."""
    return {name: environ[name] for name in CLIENT_VARIABLES if name in environ}


def name_for(session: str) -> str:
    """The container's name for a session (a job's cgroup name, or an exec's)."""
    return PREFIX + session


def agent_label(pid: int | None = None, *, proc: Path = _PROC) -> str:
    """``BOOT:PIDNS:PID:START`` for the agent ``pid`` (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{_boot(proc)}:{_pid_namespace(proc)}:{pid}:{_start_time(pid, proc)}"


def alive(label: str, *, proc: Path = _PROC) -> bool:
    """Whether the agent a label names may still run: False only when it is proven
    gone (this boot, this PID namespace, and that pid is no process, or another one)."""
    parts = label.split(":")
    if len(parts) != 4 or not all(parts) or not parts[2].isdigit():
        return True  # not a label this agent wrote: never taken for dead
    boot, namespace, pid, start = parts
    ours = _boot(proc), _pid_namespace(proc)
    if "" in ours or (boot, namespace) != ours:
        return True  # another boot, host or PID namespace: nothing here can tell
    if not (proc / "self").exists() or _hides_pids(proc):
        return True  # another user's agent would look gone
    return _start_time(int(pid), proc) == start


def locate(binary: str, name: str, client: subprocess.Popen[bytes], *,
           environ: Mapping[str, str], pidfile: str | None = None,
           timeout: float = 120.0) -> int:  # fmt: skip
    """The host pid of the container's first process, once it runs: from ``pidfile``
    where the engine writes one (Podman's --pidfile, in the agent's private directory:
    a look at a file costs nothing), else by asking the engine. ContainerError when the
    client ends first (the engine refused the run) or time runs out."""
    deadline = time.monotonic() + timeout
    asked = 0.0  # when the engine was last asked
    while True:
        if pidfile is not None:
            try:
                word = Path(pidfile).read_text().strip()
            except OSError:
                word = ""
        elif time.monotonic() - asked >= 0.1:  # each question starts a client: not often
            asked = time.monotonic()
            done = _engine([binary, "inspect", "--type", "container", "--format",
                            "{{.State.Pid}}", name], environ)  # fmt: skip
            word = done.stdout.strip() if done.returncode == 0 else ""
        else:
            word = ""
        if word.isdigit() and int(word) > 0:
            return int(word)
        if client.poll() is not None:
            raise ContainerError(f"the engine ended before {name} ran (exit {client.returncode})")
        if time.monotonic() > deadline:
            raise ContainerError(f"{name} was not running after {timeout:g} s")
        time.sleep(0.005)


def image_id(binary: str, reference: str, *, environ: Mapping[str, str]) -> tuple[str, str]:
    """(the image's id in the engine's local store, "") or ("", one line: what to do)."""
    done = _engine([binary, "image", "inspect", "--format", "{{.Id}}", reference], environ)
    found = done.stdout.strip()
    if done.returncode == 0 and found:
        return (found if ":" in found else f"sha256:{found}"), ""
    said = clipped(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", 200)
    name = os.path.basename(binary)
    return "", (f"the image {clipped(reference, 200)} is not in {name}'s local store ({said}); "
                f"jobs never pull: {name} pull or {name} load it on the node")


def remove(binary: str, name: str, *, environ: Mapping[str, str]) -> str | None:
    """Remove the container whatever its state; None once it is gone, else why not."""
    done = _engine([binary, "rm", "-f", name], environ)
    if done.returncode == 0 or _no_such(done.stderr):
        return None
    return f"{binary} rm -f {name}: {clipped(done.stderr.strip(), 300) or done.returncode}"


def sweep(binary: str, *, environ: Mapping[str, str]) -> list[str]:
    """Remove every labelled container whose agent is proven gone (alive): the names
    removed (with why not, for one that stays). Live agents' containers, those this
    agent cannot judge, and the engine's others are never touched. Never raises: an
    engine that does not answer sweeps nothing (the lifeline ends such containers)."""
    try:
        listed = _engine([binary, "ps", "-a", "--filter", f"label={LABEL}", "--format",
                          "{{.Names}}"], environ)  # fmt: skip
    except ContainerError:
        return []
    if listed.returncode != 0:
        return []
    names = [word for word in listed.stdout.split() if word.startswith(PREFIX)]
    swept = []
    for name in names:
        try:
            shown = _engine([binary, "inspect", "--type", "container", "--format",
                             f'{{{{index .Config.Labels "{LABEL}"}}}}', name], environ)  # fmt: skip
            if shown.returncode != 0 or alive(shown.stdout.strip()):
                continue
            problem = remove(binary, name, environ=environ)
        except ContainerError as error:
            problem = str(error)
        swept.append(name if problem is None else f"{name}: {problem}")
    return swept


def _engine(argv: Sequence[str], environ: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return run_tool(argv, env=client_environment(environ), capture_output=True, text=True,
                        errors="replace", timeout=TIMEOUT)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ContainerError(f"{' '.join(argv[:3])}: no answer within {TIMEOUT:g} s") from None
    except OSError as error:
        raise ContainerError(f"cannot run {argv[0]}: {error.strerror}") from None


def _no_such(stderr: str) -> bool:
    said = stderr.lower()
    return "no such container" in said or "no container with name" in said


def _boot(proc: Path) -> str:
    try:
        return (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _hides_pids(proc: Path) -> bool:
    """Whether this /proc may hide other users' processes from us (hidepid, not root)."""
    if os.geteuid() == 0:
        return False
    try:
        table = (proc / "self" / "mountinfo").read_text()
    except OSError:
        return True
    for line in table.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == str(proc) and "hidepid=" in line:
            return "hidepid=0" not in line and "hidepid=off" not in line
    return False


def _pid_namespace(proc: Path) -> str:
    """This process's PID namespace (its inode), or "" when it cannot be read."""
    try:
        return str(os.stat(proc / "self" / "ns" / "pid").st_ino)
    except OSError:
        return ""


def _start_time(pid: int, proc: Path) -> str:
    """The pid's start time in clock ticks since boot (field 22 of its stat), or ""."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()  # the name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else ""
