"""The stage for the hostile-payload catalogue: canaries planted, the host listening,
and the probe (``src/sandbox_agent/probe/``: ``run.py`` and its ``attack_*.py``
modules) run inside the real sandbox through the real console script (``sandbox
exec``), as root and as an unprivileged agent in a delegated cgroup, and (for the attack
tests) in a real Podman and a real Docker container as root (ENGINE_PROFILES).

What is planted for every run, and where a leak would show:

* the agent's home with ``certs/jobagent.key`` holding a secret, readable by the
  sandbox's host uid on purpose (0644 under 0755 directories): only the sandbox may
  stop the probe, not file permissions;
* ``SECRET_TOKEN=<secret>`` in the agent's environment;
* a descriptor (9) on a root-only file holding a secret, opened by a shell in front of
  the agent and inherited by it (``run_cli`` itself closes every descriptor but 0-2, so
  a descriptor merely made inheritable in the test would never reach the agent);
* a SysV shared memory segment (mode 0666) and a /dev/shm file holding a secret;
* a decoy process outside the sandbox, running as the sandbox's host uid (the easiest
  target: same uid, dumpable) with the secret in its environment, which reports any
  SIGURG it gets;
* TCP listeners on the host's loopback and its own address, a UDP echo on loopback,
  an abstract unix socket; each records what reaches it;
* a terminal (a pty) as the agent's stdin and controlling terminal (setsid --ctty):
  TIOCSTI-injected bytes would echo on it.

Runs are cached per (profile, policy, attacks): every test file shares the one run of
the whole catalogue under the shipped default policy; the controls, each a policy
with one defence removed (``CONTROLS``), or the probe on the host with no sandbox at
all (``unsandboxed``), run once each.
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import platform
import secrets
import select
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_support import (
    ROOT,
    SCRIPT,
    cli_env,
    close_scopes,
    delegated_cgroup,
    nobody_program,
    run_cli,
    shared_workdir,
)
from engine_support import BUSYBOX, accepted, answers, ensure_docker, image

from sandbox_agent.images import hostpython
from sandbox_agent.selftest.stage import Decoy, Listeners, SysvSegment, hexed, sandbox_host_uid
from sandbox_agent.wrapper.probe import PROBE_DIR, RUNNER, probe_files

PROFILES = ["agent-as-root", "agent-as-nobody"]
# The same catalogue with the sandbox a container of a real engine (sandbox exec, as root;
# the policy: the default on a busybox image, no network, what the engine cannot hold
# accepted), for the attack tests. The controls stay on bwrap: they prove the probe.
ENGINE_PROFILES = ["podman-as-root", "docker-as-root"]
ATTACK_PROFILES = [*PROFILES, *ENGINE_PROFILES]
# What a site accepts on an engine and the probe then finds (docs/containers.md)
ACCEPTED = {("docker-as-root", "host_wide_proc"): "Docker cannot mask the node's /proc files "
            "(filesystem.proc optional)"}  # fmt: skip
PYTHON = "/usr/bin/python3"  # the sandbox's interpreter (the host's, bound read-only)
SANDBOX_HOST_UID = 65534  # who the sandbox (and the decoy) are on the host when root runs
CANARY_FD = 9  # a shell redirection can open at most fd 9 portably
PROBE = "probe"  # the directory of the work directory the probe's files are copied to

requirements = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the probes use x86_64 numbers"),
    pytest.mark.skipif(not Path(PYTHON).exists(), reason="no system python3 to run the probes"),
]

# Each control is the default with one defence removed; "@OUTSIDE@" is a directory of
# the run outside /tmp (a bind under /tmp would be hidden by the sandbox's own /tmp).
# The probe must say LEAKED under them, or it is a probe that cannot fail.
ALLOW_ALL_ABIS = json.dumps({
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
})  # fmt: skip
CONTROLS = {
    # a readable copy of the agent's credentials bound in (the real ones are on the deny
    # list, which no policy can bind), and the secret variable passed through
    "leaky-credentials": """extends = "default"
[filesystem]
read_only = ["@OUTSIDE@/decoy-home/certs"]
[process.environment]
allow = { append = ["SECRET_TOKEN"] }
""",
    # the host's PID namespace and its /proc (the deny list without /proc/sys, so that
    # /proc may be bound), and no landlock (its signal and ptrace scoping is a defence)
    "leaky-processes": """extends = "default"
[namespaces]
pid = "off"
[filesystem]
proc = "off"
read_only = ["/proc"]
deny = ["/root", "/home", "/etc/shadow", "/sys"]
[process]
landlock = "off"
""",
    # the host's IPC namespace (the segment is there; /dev/shm is still the sandbox's)
    "leaky-ipc": """extends = "default"
[namespaces]
ipc = "off"
""",
    # a capability kept (bwrap's --disable-userns puts the payload in a nested user
    # namespace, so even CAP_NET_RAW opens no raw socket: the probe shows that too)
    "leaky-privilege": """extends = "default"
[process]
capabilities = ["CAP_NET_RAW"]
""",
    # a profile that allows every call, on every ABI
    "leaky-syscalls": """extends = "default"
[process]
seccomp = "seccomp/allow-all-abis.json"
""",
    # a host directory bound writable
    "leaky-filesystem": """extends = "default"
[filesystem]
writable = ["@OUTSIDE@/writable"]
""",
    # the host's network; landlock still refuses abstract unix sockets (ABI 6)
    "leaky-network": """extends = "default"
[namespaces]
net = "off"
[network]
mode = "host"
""",
    "leaky-network-no-landlock": """extends = "leaky-network"
[process]
landlock = "off"
""",
}

def _attack_table() -> dict[str, Any]:
    """The probe's attack table, imported here as the runner imports it in the sandbox:
    by plain module names, from the probe's directory (importing runs no attack)."""
    if str(PROBE_DIR) not in sys.path:
        sys.path.append(str(PROBE_DIR))
    table: dict[str, Any] = importlib.import_module("attack_table").ATTACKS
    return table


ATTACKS = _attack_table()


def names_of(mechanism: str) -> list[str]:
    """The attacks one test file covers, in the table's order."""
    return [name for name, attack in ATTACKS.items() if attack.mechanism == mechanism]


@dataclass(frozen=True)
class Report:
    """What the probe answered, and what the host saw while it ran."""

    profile: str
    policy: str
    results: dict[str, dict[str, str]]
    arrived: dict[str, list[bytes]]  # tcp, udp, unix: what reached the host's listeners
    terminal: bytes  # what the agent's terminal showed (TIOCSTI echoes here)
    decoy_signals: list[str]  # what the decoy reported
    decoy_alive: bool
    stderr: str
    secrets: tuple[str, ...] = field(default=())

    def result(self, name: str) -> str:
        return self.results[name]["result"]

    def detail(self, name: str) -> str:
        return self.results[name]["detail"]

    def verdicts(self, names: Sequence[str]) -> dict[str, str]:
        return {name: self.result(name) for name in names}

    def assert_blocked(self, name: str) -> None:
        got = self.results[name]
        accepted = ACCEPTED.get((self.profile, name))
        if accepted is not None and got["result"] == "LEAKED":
            pytest.skip(f"{name}: accepted by the site's policy here: {accepted}")
        if got["result"] == "n/a":
            pytest.skip(f"{name} cannot be tried here: {got['detail']}")
        assert got["result"] == "blocked", f"{name} ({self.profile}, {self.policy}): {got}"


def _plant(base: Path, directory: str, secret: str) -> Path:
    """``base/directory/certs/jobagent.key`` holding ``secret``, readable by anyone:
    the sandbox, not permissions, must keep the probe out."""
    certs = base / directory / "certs"
    certs.mkdir(parents=True)
    key = certs / "jobagent.key"
    key.write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    for path in (base / directory, certs):
        path.chmod(0o755)
    key.chmod(0o644)
    return key


_cache: dict[tuple[str, str, tuple[str, ...], int | None], Report | str] = {}
_serial = itertools.count(1)


def attack(profile: str, policy: str = "default", names: Sequence[str] = ()) -> Report:
    """Run the probe (``names``, or every attack) in the sandbox ``policy`` composes,
    the agent being ``profile``. Skips with the reason when the profile cannot be had."""
    return _cached(profile, policy, names, None)


def unsandboxed(profile: str, names: Sequence[str] = (), *, uid: int | None = None) -> Report:
    """A control: the probe straight on the host, no sandbox at all, started the same
    way (the same terminal, the same inherited descriptor), as ``uid``: by default the
    sandbox's host uid, what a payload would be without the sandbox. The probe refuses
    there the attacks that could change the host (it finds no user namespace)."""
    return _cached(profile, "no sandbox", names, sandbox_host_uid() if uid is None else uid)


def _cached(profile: str, policy: str, names: Sequence[str], host_uid: int | None) -> Report:
    key = (profile, policy, tuple(names), host_uid)
    if key not in _cache:
        try:
            _cache[key] = _run(profile, policy, list(names), host_uid)
        except _Skip as exc:
            _cache[key] = str(exc)
    cached = _cache[key]
    if isinstance(cached, str):
        pytest.skip(cached)
    return cached


class _Skip(Exception):
    pass


def _engine_policy(engine: str, policies: Path) -> str:
    """The site policy of an engine profile, written beside the shipped ones: its name."""
    why = answers(engine) if engine == "podman" else ensure_docker()
    if why is not None:
        raise _Skip(why)
    (policies / f"adv-{engine}.toml").write_text(
        f'extends = "default"\n[filesystem]\nimage = "docker://{image(engine, BUSYBOX)}"\n'
        '[network]\nmode = "none"\n' + accepted(engine, "process.die_with_parent")
    )
    return f"adv-{engine}"


def _run(profile: str, policy: str, names: list[str], host_uid: int | None) -> Report:
    as_nobody = profile == "agent-as-nobody"
    engine = profile.split("-")[0] if profile in ENGINE_PROFILES else None
    sandboxed = host_uid is None
    program: list[str] = [str(SCRIPT)]
    extra: dict[str, str] = {}
    cgroups: list[Path] = []
    if as_nobody:
        how = nobody_program()
        if isinstance(how, str):
            raise _Skip(how)
        program, extra = how
    workdir = shared_workdir()
    base = workdir.parent
    outside = Path(tempfile.mkdtemp(dir="/var/tmp"))
    outside.chmod(0o711)
    listeners = decoy = segment = shm_file = None
    master = slave = -1
    try:
        if as_nobody and sandboxed:
            delegated = delegated_cgroup(f"adv-{os.getpid()}-{next(_serial)}")
            if isinstance(delegated, str):
                raise _Skip(delegated)
            prefix, cgroups = delegated
            program = prefix + program
        secret_key = f"CANARY-KEY-{secrets.token_hex(8)}"
        secret_env = f"CANARY-ENV-{secrets.token_hex(8)}"
        secret_fd = f"CANARY-FD-{secrets.token_hex(8)}"
        secret_ipc = f"CANARY-IPC-{secrets.token_hex(8)}"
        marker = f"sandbox-agent-decoy-{secrets.token_hex(6)}"
        home = base / "home"
        key = _plant(base, "home", secret_key)
        _plant(outside, "decoy-home", secret_key)  # the credentials control binds this one
        (outside / "writable").mkdir()
        (outside / "writable").chmod(0o777)
        fd_file = base / "fd-canary"
        fd_file.write_text(secret_fd + "\n")
        fd_file.chmod(0o600)  # root's only: the inherited descriptor is the only way in
        if as_nobody:
            for path in (home, key.parent, key):
                os.chown(path, SANDBOX_HOST_UID, SANDBOX_HOST_UID)
        policies = base / "policies"  # where an unprivileged agent can read them
        shutil.copytree(ROOT / "policies", policies)
        (policies / "seccomp" / "allow-all-abis.json").write_text(ALLOW_ALL_ABIS)
        for name, text in CONTROLS.items():
            (policies / f"{name}.toml").write_text(text.replace("@OUTSIDE@", str(outside)))
        probe = workdir / PROBE  # the files side by side, as the runner expects them
        probe.mkdir()
        probe.chmod(0o755)
        for source in probe_files():
            shutil.copy(source, probe / source.name)
            (probe / source.name).chmod(0o644)

        segment = SysvSegment(secret_ipc)
        shm_file = Path(f"/dev/shm/sandbox-agent-adv-{secrets.token_hex(6)}")
        shm_file.write_text(secret_ipc)
        shm_file.chmod(0o644)
        listeners = Listeners()
        decoy = Decoy(PYTHON, {"SECRET_TOKEN": secret_env}, marker)
        config = {
            "secrets": [hexed(s) for s in (secret_key, secret_env, secret_fd, secret_ipc)],
            "env_names": ["SECRET_TOKEN"],
            "key_paths": [hexed(key if policy != "leaky-credentials" else
                               outside / "decoy-home" / "certs" / "jobagent.key")],
            "cert_dirs": [hexed(key.parent if policy != "leaky-credentials" else
                               outside / "decoy-home" / "certs")],
            "sysv_key": segment.key,
            "shm_paths": [hexed(shm_file)],
            "host_pid": decoy.pid,
            "host_marker": marker.encode().hex(),
            "tcp": listeners.tcp,
            "udp": listeners.udp,
            "abstract": listeners.abstract,
            "canary_fd": CANARY_FD,
            "write_paths": [str(outside / "writable")],
        }  # fmt: skip
        env = cli_env(home, SECRET_TOKEN=secret_env, LANG="C.UTF-8",
                      SANDBOX_AGENT_POLICIES=str(policies), **extra)  # fmt: skip
        # In front of the agent: a new session whose controlling terminal is the pty on
        # stdin (an admin running `sandbox exec` in a terminal), then a shell that opens
        # the canary on fd 9 (as root, before any switch to 65534) and execs the agent,
        # which inherits it.
        front = ["setsid", "--ctty", "--wait",
                 "/bin/sh", "-c", f'exec {CANARY_FD}<"$0"; exec "$@"', str(fd_file)]  # fmt: skip
        probe_argv = [PYTHON, "-I", "-S"]
        runtime: list[str] = []
        if engine is not None:  # the interpreter the container carries in (the agent's)
            policy = _engine_policy(engine, policies) if policy == "default" else policy
            probe_argv = [*hostpython.find().command, "-I", "-S"]
            runtime = ["--runtime", engine]
        if host_uid is None:
            command: list[object] = ["sandbox", "exec", *runtime, "--policy", policy,
                                     "--workdir", workdir, "--", *probe_argv,
                                     f"{PROBE}/{RUNNER}"]  # fmt: skip
            program = front + program
        else:
            switch = ["setpriv", f"--reuid={host_uid}", f"--regid={host_uid}", "--clear-groups"]
            command = [*probe_argv, probe / RUNNER]
            program = front + (switch if os.geteuid() == 0 else [])
        command += ["--json", json.dumps(config), *names]

        # The agent's stdin is a terminal, as when an admin runs `sandbox exec` by hand:
        # run_cli passes our fd 0 on, so it is the pty while the probe runs.
        master, slave = os.openpty()
        saved = os.dup(0)
        os.dup2(slave, 0)
        try:
            result = run_cli(env, *command, program=program)
        finally:
            os.dup2(saved, 0)
            os.close(saved)
        time.sleep(0.05)  # let a datagram or a signal that got out be seen
        terminal = _drain(master)
        decoy_alive = decoy.process.poll() is None
        assert result.returncode == 0, f"the probe run failed ({policy}): {result.stderr}"
        results = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        signals = decoy.stop() if decoy is not None else []
        if segment is not None:
            segment.remove()
        if shm_file is not None:
            shm_file.unlink(missing_ok=True)
        if listeners is not None:
            listeners.close()
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)
        close_scopes(list(cgroups))
    assert listeners is not None
    return Report(
        profile, policy, results, listeners.arrived, terminal, signals, decoy_alive,
        result.stderr, (secret_key, secret_env, secret_fd, secret_ipc),
    )  # fmt: skip


def _drain(fd: int) -> bytes:
    out = b""
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out
