"""The files a site deploys the pilot with (deploy/, docs/deploying.md), each put to work.

- The systemd units are checked by systemd's own verifier, offline, in a copy of this
  machine's unit directories with the pilot's binary made to exist; the unit's settings
  are read and held to what the pilot needs (Delegate=yes, nothing that takes away the
  namespaces, the setuid fusermount3 or the cgroup it works with).
- The pilot runs a job as the unit starts it: as a pool account (uid 65534) in a cgroup
  delegated to it, under the unit's LimitNOFILE and inside the mounts of the unit's own
  hardening (ProtectSystem=, ProtectHome=, PrivateTmp=), made here as systemd makes them
  (systemd is not PID 1 on a test machine). Where this machine has FUSE, /dev/fuse is
  opened to the account as EL9 has it, and the job's work directory must be a fuse2fs
  filesystem; with no_new_privs (which the unit must not imply) it is not.
- The submit file is read by HTCondor's own parser (the htcondor bindings).
- The pilot script runs as HTCondor's starter starts a job, without HTCondor: as uid
  65534, in a fresh scratch directory of its own as the working directory, with a job ad
  and a machine ad, on a job submitted first to the embedded queue of its home.
- The logrotate file is read by logrotate, and rotates a log that a process keeps open
  in append mode, as systemd's append: leaves the pilot's.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import select
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import ROOT, SLOW, close_scopes, delegated_cgroup, nobody_program

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "sandbox-agent@.service"
TIMER = DEPLOY / "systemd" / "sandbox-agent@.timer"
DROPINS = DEPLOY / "systemd" / "sandbox-agent@.service.d"
SUBMIT = DEPLOY / "htcondor" / "pilot.sub"
SCRIPT = DEPLOY / "htcondor" / "sandbox-agent-pilot.sh"
SLOT_POLICY = DEPLOY / "htcondor" / "slot-without-delegation.toml"
LOGROTATE = DEPLOY / "logrotate" / "sandbox-agent"
DEFAULT_POLICY = ROOT / "src" / "sandbox_agent" / "policies" / "default.toml"

INSTANCE = "pilot01"  # a pool account's name, the unit's instance
AGENT = "/opt/sandbox-agent/bin/sandbox-agent"  # where docs/deploying.md installs it
SITE_POLICY = "/etc/sandbox-agent/site.toml"
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SCRIPT_PREFIX = "sandbox-agent-pilot: "
WAIT = 300 * SLOW  # seconds any one pilot run may take here: a bound, never a measurement
_pools = itertools.count(1)
# A site policy: the default, with a work directory of 64 MB (a filesystem of the job's
# size is allocated in full where FUSE works: not the default's 10 GB on a test machine)
SMALL_WORKDIR = 'extends = "default"\n[limits]\nworkdir_size = { default = "64MB" }\n'

# The sandboxing settings of systemd.exec(5). The unit may set only those this file
# makes below (EMULATED); each of the others either implies NoNewPrivileges= for a unit
# with User= (fusermount3 loses its setuid bit: no fuse2fs work directory), takes away a
# namespace bubblewrap makes, or the cgroup, or the broker. A new one is verified here
# (emulated, a job run under it) before the unit gets it.
SANDBOXING = {
    "NoNewPrivileges", "RestrictNamespaces", "SystemCallFilter", "SystemCallArchitectures",
    "SystemCallLog", "LockPersonality", "MemoryDenyWriteExecute", "RestrictRealtime",
    "RestrictSUIDSGID", "RestrictAddressFamilies", "PrivateDevices", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectClock", "ProtectHostname",
    "ProtectControlGroups", "ProtectProc", "ProcSubset", "CapabilityBoundingSet",
    "AmbientCapabilities", "PrivateUsers", "PrivateNetwork", "PrivateIPC", "DynamicUser",
    "RemoveIPC", "ProtectSystem", "ProtectHome", "PrivateTmp", "ReadOnlyPaths",
    "InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths",
    "RootDirectory", "RootImage", "MountAPIVFS", "IPAddressDeny", "IPAddressAllow",
    "DeviceAllow", "DevicePolicy", "RestrictFileSystems", "SecureBits", "KeyringMode",
    "UMask", "NoExecPaths", "ExecPaths",
}  # fmt: skip
EMULATED = {"ProtectSystem": "full", "ProtectHome": "yes", "PrivateTmp": "yes"}


# -- reading unit files -------------------------------------------------------------------


def unit_settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for each assignment of a unit file, in order (a key may
    come more than once; an empty value resets it, as systemd reads it)."""
    settings, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key.strip(), value.strip()))
    return settings


def last(settings: list[tuple[str, str, str]], section: str, key: str) -> str | None:
    values = [v for s, k, v in settings if s == section and k == key]
    return values[-1] if values else None


def exec_start(settings: list[tuple[str, str, str]]) -> list[str]:
    value = last(settings, "Service", "ExecStart")
    assert value, "the unit has no ExecStart="
    return shlex.split(value)


def default_nofile() -> int:
    policy = tomllib.loads(DEFAULT_POLICY.read_text())
    return int(policy["process"]["rlimits"]["nofile"])


# -- systemd ------------------------------------------------------------------------------


def verify_root(base: Path, dropins: list[str]) -> Path:
    """A filesystem root for `systemd-analyze verify --root`: this machine's unit
    directory (the targets the unit orders itself after), the pilot's binary made to
    exist, and the unit, its timer and ``dropins`` as a site installs them."""
    vendor = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                   if (p / "sysinit.target").exists()), None)  # fmt: skip
    if vendor is None:
        pytest.skip("no systemd unit directory with sysinit.target on this machine")
    root = base / "root"
    shutil.copytree(vendor, root / "usr/lib/systemd/system", symlinks=True)
    binary = root / AGENT.lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    shutil.copy(UNIT, etc / UNIT.name)
    shutil.copy(TIMER, etc / TIMER.name)
    if dropins:
        (etc / DROPINS.name).mkdir()
        for name in dropins:
            shutil.copy(DROPINS / name, etc / DROPINS.name / name)
    return root


def systemd_verify(root: Path) -> subprocess.CompletedProcess[str]:
    units = [f"sandbox-agent@{INSTANCE}.service", f"sandbox-agent@{INSTANCE}.timer"]
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *units],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("dropins", [[], ["broker.conf"], ["logfiles.conf"]], ids=str)
def test_systemd_verifies_the_unit_and_its_timer(tmp_path: Path, dropins: list[str]) -> None:
    root = verify_root(tmp_path, dropins)
    verified = systemd_verify(root)
    # systemd-analyze exits 0 past an unknown key or a bad value; it says so on stderr
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, ""), verified.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_verifier_here_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a setting systemd does not take is reported."""
    root = verify_root(tmp_path, [])
    unit = root / "etc/systemd/system" / UNIT.name
    unit.write_text(unit.read_text().replace("Delegate=yes", "Delegate=yes\nDelegat=yes"))
    verified = systemd_verify(root)
    assert "Delegat" in verified.stderr


def test_the_unit_delegates_its_cgroup_and_takes_nothing_the_sandbox_needs() -> None:
    settings = unit_settings(UNIT)
    service = {k: v for s, k, v in settings if s == "Service"}
    assert service["Delegate"] == "yes"
    assert service["User"] == "%i" and service["Group"] == "%i"
    assert service["OOMPolicy"] == "continue"
    # only the sandboxing the emulation below runs a job under, with its value
    sandboxing = {k: v for k, v in service.items() if k in SANDBOXING}
    assert sandboxing == EMULATED
    argv = exec_start(settings)
    assert argv[0] == AGENT
    assert argv[1:3] == ["--home", "%S/" + service["StateDirectory"]]
    assert service["StateDirectory"] == "sandbox-agent/%i"
    assert service["StateDirectoryMode"] == "0700"
    assert "run" in argv and argv[argv.index("--policy") + 1] == SITE_POLICY
    assert argv[-1] == "$SANDBOX_AGENT_RUN_ARGS"  # words from /etc/sandbox-agent/pilot.env
    assert service["EnvironmentFile"] == "-/etc/sandbox-agent/pilot.env"
    # stopping: SIGTERM to the pilot alone, and time for its --grace and the hand-back
    assert (service["KillMode"], service["KillSignal"]) == ("mixed", "SIGTERM")
    grace = float(argv[argv.index("--grace") + 1])
    assert int(service["TimeoutStopSec"]) >= grace + 20 + 30
    # restarts: on failure, not for a usage error, within a start limit
    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split()
    assert service["RestartSec"] == "2min"
    assert last(settings, "Unit", "StartLimitIntervalSec") == "1h"
    assert int(last(settings, "Unit", "StartLimitBurst") or 0) >= 3
    # open files: select() in the agent takes no descriptor past 1023; the hard limit
    # is what a policy may give a job
    soft, hard = (int(n) for n in service["LimitNOFILE"].split(":"))
    assert soft <= 1024 and hard >= default_nofile()
    assert (service["StandardOutput"], service["StandardError"]) == ("journal", "journal")


def test_the_drop_ins_point_each_instance_at_its_own_token_and_log() -> None:
    broker = unit_settings(DROPINS / "broker.conf")
    environment = dict(v.split("=", 1) for s, k, v in broker if k == "Environment")
    assert set(environment) == {"SANDBOX_AGENT_BROKER", "SANDBOX_AGENT_CA",
                                "SANDBOX_AGENT_CERT", "SANDBOX_AGENT_KEY"}  # fmt: skip
    cert, key = Path(environment["SANDBOX_AGENT_CERT"]), Path(environment["SANDBOX_AGENT_KEY"])
    assert cert.parent == key.parent == Path("/etc/sandbox-agent/tokens/%i")
    # the renewal is written back into that directory, under ProtectSystem=full
    assert last(broker, "Service", "ReadWritePaths") == f"-{cert.parent}"
    assert environment["SANDBOX_AGENT_BROKER"].startswith("https://")
    logs = unit_settings(DROPINS / "logfiles.conf")
    assert last(logs, "Service", "StandardOutput") == "append:/var/log/sandbox-agent/%i.log"
    assert last(logs, "Service", "StandardError") == "append:/var/log/sandbox-agent/%i.err"
    timer = unit_settings(TIMER)
    assert last(timer, "Timer", "OnUnitInactiveSec") and last(timer, "Timer", "OnActiveSec")


# -- the pilot as a pool account, in a delegated cgroup ------------------------------------


@dataclass
class Pool:
    """A pool account's way to run the agent: a venv-like directory whose
    bin/sandbox-agent runs the agent from this source tree with the venv's dependencies
    (as cli_support.nobody_program does), the argv prefix of a cgroup delegated to uid
    65534, and a private base directory (0711) for its files."""

    venv: Path
    prefix: list[str]
    base: Path
    cgroups: list[Path]

    @property
    def agent(self) -> str:
        return str(self.venv / "bin" / "sandbox-agent")

    def own(self, path: Path, mode: int = 0o700) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, NOBODY, NOBODY)
        path.chmod(mode)
        return path

    def file(self, path: Path, text: str, mode: int = 0o644) -> Path:
        path.write_text(text)
        os.chown(path, NOBODY, NOBODY)
        path.chmod(mode)
        return path

    def submit(self, home: Path, jdl: Path) -> None:
        done = subprocess.run(
            [*AS_NOBODY, self.agent, "--home", str(home), "submit", jdl.name],
            cwd=jdl.parent, env=plain_env(), capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def jobs(self, home: Path) -> str:
        done = subprocess.run(
            [*AS_NOBODY, self.agent, "--home", str(home), "jobs"], env=plain_env(),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout


def plain_env(**extra: str) -> dict[str, str]:
    return {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", **extra}


def make_pool(base_dir: str, delegate: bool = True) -> Iterator[Pool]:
    how = nobody_program()
    if isinstance(how, str):
        pytest.skip(how)
    pythonpath = how[1]["PYTHONPATH"]
    prefix: list[str] = []
    cgroups: list[Path] = []
    if delegate:
        delegated = delegated_cgroup(f"deploy-{os.getpid()}-{next(_pools)}")
        if isinstance(delegated, str):
            pytest.skip(delegated)
        prefix, cgroups = delegated
    base = Path(tempfile.mkdtemp(dir=base_dir, prefix="sandbox-agent-deploy."))
    try:
        base.chmod(0o711)
        venv = base / "venv" / "bin"
        venv.mkdir(parents=True)
        (base / "venv").chmod(0o755)
        venv.chmod(0o755)
        shim = venv / "sandbox-agent"
        shim.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(pythonpath)} "
                        'exec /usr/bin/python3 -m sandbox_agent "$@"\n')  # fmt: skip
        shim.chmod(0o755)
        yield Pool(base / "venv", prefix, base, cgroups)
    finally:
        try:
            if cgroups:
                end_podman_pause(cgroups)
                close_scopes(cgroups)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def end_podman_pause(cgroups: list[Path]) -> None:
    """doctor probes Podman as the account; rootless Podman leaves its pause process
    (catatonit -P) running in the cgroup it was started in. End those, by pid, so that
    the cgroups can go (under systemd the unit's stop ends them: docs/deploying.md)."""
    paused = []
    for directory in cgroups:
        for procs in [directory / "cgroup.procs", *directory.rglob("*/cgroup.procs")]:
            for pid in procs.read_text().split():
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    owner = Path(f"/proc/{pid}").stat().st_uid
                except OSError:
                    continue
                if comm == "catatonit" and owner == NOBODY:
                    os.kill(int(pid), signal.SIGKILL)
                    paused.append(pid)
    for _ in range(1000):  # until the kernel has taken them out of the cgroups
        if not any(pid in procs.read_text().split() for pid in paused
                   for directory in cgroups for procs in [directory / "cgroup.procs",
                   *directory.rglob("*/cgroup.procs")]):  # fmt: skip
            return
        select.select([], [], [], 0.01)


def events(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def finished(stdout: str) -> list[object]:
    return [e.get("state") for e in events(stdout) if e.get("event") == "finished"]


HELLO = ("# the sample job, and where its work directory is mounted from\n"
         'Executable = "probe.sh";\nOutput = { "stdout@disk=1", "stderr@disk=1" };\n'
         "TTL = 120;\n")  # fmt: skip
PROBE = ("#!/bin/sh\necho hello from the sandbox\n"
         "while read -r line; do\n"
         '    case $line in *" /workdir "*) echo "workdir: $line" ;; esac\n'
         "done < /proc/self/mountinfo\n")  # fmt: skip


def queue_probe(pool: Pool, home: Path, where: Path) -> None:
    pool.own(where, 0o755)
    pool.file(where / "probe.jdl", HELLO)
    pool.file(where / "probe.sh", PROBE, 0o755)
    pool.submit(home, where / "probe.jdl")


def job_stdout(home: Path, job: int = 1) -> str:
    return (home / "outputs" / str(job) / "0" / "logs" / "stdout").read_text()


# -- the unit's hardening, made as systemd makes it ----------------------------------------


def fuse_here() -> bool:
    """Whether an unprivileged pilot could mount fuse2fs work directories here once
    /dev/fuse is open to it."""
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    return Path("/dev/fuse").exists() and bool(shutil.which("fuse2fs")) and bool(fusermount)


def fuse_as_on_el9(base: Path) -> Path | None:
    """A /dev/fuse node anyone may open, as EL9 has it (this machine's may be root's
    only), to mount over /dev/fuse inside the namespace; None where FUSE is not here."""
    if not fuse_here():
        return None
    node = base / "fuse"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.stat("/dev/fuse").st_rdev)
    node.chmod(0o666)
    return node


def hardening_mounts(settings: list[tuple[str, str, str]], private: Path,
                     fuse: Path | None, keep: Sequence[str] = ()) -> str:  # fmt: skip
    """The shell commands that make, in a new mount namespace, what the unit's
    sandboxing settings make (systemd.exec(5)): read-only /usr, /boot, /efi and /etc
    (ProtectSystem=full), empty inaccessible /home, /root and /run/user (ProtectHome=yes),
    a /tmp and /var/tmp of the unit's own (PrivateTmp=yes). ``keep``: the agent's code
    where this test runs it from; one under /tmp or /var/tmp (a clone there) is bound
    back into the private one, as a site's /opt/sandbox-agent would simply be there."""
    service = {k: v for s, k, v in settings if s == "Service"}
    commands = ["set -e"]
    if service.get("ProtectSystem") == "full":
        for path in ("/usr", "/boot", "/efi", "/etc"):
            if Path(path).is_dir():
                commands.append(f"mount --rbind {path} {path}")
                commands.append(f"mount -o remount,bind,ro {path}")
    if service.get("ProtectHome") == "yes":
        for path in ("/home", "/root", "/run/user"):
            if Path(path).is_dir():
                commands.append(f"mount -t tmpfs -o ro,mode=000 inaccessible {path}")
    if service.get("PrivateTmp") == "yes":
        kept = [p for p in keep if p.startswith(("/tmp/", "/var/tmp/"))]
        for number, path in enumerate(kept):
            (private / "keep" / str(number)).mkdir(parents=True)
            commands.append(f"mount --bind {path} {private / 'keep' / str(number)}")
        for path, own in (("/tmp", private / "tmp"), ("/var/tmp", private / "var-tmp")):
            own.mkdir(mode=0o1777)
            own.chmod(0o1777)
            commands.append(f"mount --bind {own} {path}")
        for number, path in enumerate(kept):
            held = private / "keep" / str(number)
            commands.append(f"mkdir -p {path}; mount --bind {held} {path}")
    if fuse is not None:
        commands.append(f"mount --bind {fuse} /dev/fuse")
    return "; ".join(commands) + '; exec "$@"'


def hidden_by_protect_home(paths: list[str]) -> list[str]:
    return [p for p in paths if p.startswith(("/home/", "/root/", "/run/user/"))]


@pytest.fixture
def state_pool() -> Iterator[Pool]:
    """A pool account whose files live under /var/lib, as StateDirectory= has them
    (PrivateTmp= hides /tmp from the unit)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("prlimit") is None:
        pytest.skip("making the unit's mounts needs root, unshare and prlimit")
    yield from make_pool("/var/lib")


def run_as_the_unit(pool: Pool, *, no_new_privs: bool = False
                    ) -> tuple[subprocess.CompletedProcess[str], Path, Path | None]:  # fmt: skip
    """The unit's ExecStart, as systemd starts it for instance INSTANCE: its specifiers
    resolved (%S in the pool's base), the site policy and the binary at the pool's, in a
    cgroup delegated to the account, under its LimitNOFILE and its hardening."""
    settings = unit_settings(UNIT)
    how = nobody_program()
    assert not isinstance(how, str)
    code = [str(ROOT), *how[1]["PYTHONPATH"].split(":")]
    hidden = hidden_by_protect_home(code)
    if hidden:
        pytest.skip(f"the agent's sources are where ProtectHome= hides them: {hidden}")
    state = pool.base / "state"
    state.mkdir(mode=0o755)
    home = pool.own(state / "sandbox-agent" / INSTANCE)
    (state / "sandbox-agent").chmod(0o755)
    policy = pool.file(pool.base / "site.toml", SMALL_WORKDIR)
    queue_probe(pool, home, pool.base / "jobs")
    argv = []
    for word in exec_start(settings):
        word = word.replace("%S", str(state)).replace("%i", INSTANCE)
        if word == "$SANDBOX_AGENT_RUN_ARGS":
            argv.append("--json")  # what a site puts in /etc/sandbox-agent/pilot.env
        elif word == AGENT:
            argv.append(pool.agent)
        elif word == SITE_POLICY:
            argv.append(str(policy))
        else:
            argv.append(word)
    private = pool.base / "private"
    private.mkdir(mode=0o700)
    fuse = fuse_as_on_el9(pool.base)
    mounts = hardening_mounts(settings, private, fuse, code)
    soft, hard = (int(n) for n in last(settings, "Service", "LimitNOFILE").split(":"))  # type: ignore[union-attr]
    # systemd (PID 1) may raise the hard limit; a test in a container may not: the soft
    # limit is the unit's, the hard one what this machine lets us have of it
    hard = min(hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    switch = [*AS_NOBODY, *(["--no-new-privs"] if no_new_privs else [])]
    command = [*pool.prefix, "unshare", "--mount", "--propagation", "slave",
               "sh", "-c", mounts, "sh", "prlimit", f"--nofile={soft}:{hard}", *switch,
               *argv]  # fmt: skip
    ran = subprocess.run(command, env=plain_env(), capture_output=True, text=True,
                         timeout=WAIT, check=False, cwd="/")  # fmt: skip
    return ran, home, fuse


def workdir_line(home: Path) -> str:
    lines = [line for line in job_stdout(home).splitlines() if line.startswith("workdir: ")]
    assert lines, job_stdout(home)
    return lines[-1]  # the mount on top


def mount_type(mountinfo_line: str) -> str:
    """The filesystem type of a /proc/self/mountinfo line (the field after " - ")."""
    return mountinfo_line.split(" - ", 1)[1].split()[0]


def test_the_unit_runs_a_job_under_its_own_hardening(state_pool: Pool) -> None:
    ran, home, fuse = run_as_the_unit(state_pool)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert finished(ran.stdout) == ["DONE"], ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "hello from the sandbox" in job_stdout(home)
    kind = mount_type(workdir_line(home))
    if fuse is not None:  # the setuid fusermount3 mounted the job's own filesystem
        assert kind.startswith("fuse"), workdir_line(home)


def test_no_new_privileges_would_take_the_work_directorys_filesystem(state_pool: Pool) -> None:
    """Why the unit sets nothing that implies NoNewPrivileges=: under no_new_privs the
    setuid fusermount3 mounts nothing, and the job's work directory is a plain
    directory of the node's disk instead of a filesystem of the job's size."""
    if not fuse_here():
        pytest.skip("no FUSE here (/dev/fuse, fuse2fs, fusermount3)")
    ran, home, fuse = run_as_the_unit(state_pool, no_new_privs=True)
    assert fuse is not None
    # the agent sees no_new_privs and says so: the job runs on a plain directory, the
    # size measured by the agent (workdir_size is optional in default), and the audit
    # record says monitored, never that the kernel held it
    assert finished(ran.stdout), ran.stdout + ran.stderr
    assert not mount_type(workdir_line(home)).startswith("fuse")
    record = json.loads(next((home / "outputs").rglob("audit.json")).read_text())["record"]
    assert "workdir_size" not in record["enforcement"]["kernel"]
    assert "workdir_size" in record["enforcement"]["monitored"]
    assert any("no_new_privs" in note for note in record["enforcement"]["notes"]), record


# -- HTCondor -----------------------------------------------------------------------------


def test_htcondor_reads_the_submit_file() -> None:
    htcondor = pytest.importorskip("htcondor2")
    classad = pytest.importorskip("classad2")
    submit = htcondor.Submit(SUBMIT.read_text())
    assert submit.getQArgs().strip() == "1"
    assert submit["universe"] == "vanilla"
    assert submit["executable"] == SCRIPT.name and os.access(SCRIPT, os.X_OK)
    assert submit["transfer_executable"] == "true"
    assert submit["should_transfer_files"] == "YES"
    assert submit["transfer_output_files"] == '""'  # nothing of the home comes back
    assert submit["getenv"] == "false"
    environment = dict(entry.split("=", 1) for entry in submit["environment"].strip('"').split())
    assert environment["SANDBOX_AGENT_VENV"] == str(Path(AGENT).parents[1])
    assert environment["SANDBOX_AGENT_POLICY"] == SITE_POLICY
    ttl = int(environment["SANDBOX_AGENT_TTL"])
    assert int(submit["allowed_job_duration"]) >= ttl
    for key in ("request_cpus", "request_memory", "request_disk"):
        assert submit[key], key
    memory = re.fullmatch(r"(\d+) GB", submit["request_memory"])
    default = tomllib.loads(DEFAULT_POLICY.read_text())["limits"]["memory"]["default"]
    assert memory and int(memory[1]) > int(re.sub(r"\D", "", default))  # the job, and the pilot
    assert submit["kill_sig"] == "SIGTERM"
    assert int(submit["job_max_vacate_time"]) > 10 + 20  # the pilot's --grace, its reports
    assert classad.ExprTree(submit["MY.SandboxAgentPilot"]).eval() is True


def test_the_pilot_script_is_posix_sh() -> None:
    for shell in ("dash", "sh"):
        if shutil.which(shell):
            checked = subprocess.run([shell, "-n", str(SCRIPT)], capture_output=True,
                                     text=True, check=False)  # fmt: skip
            assert checked.returncode == 0, checked.stderr
    text = SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n") and "\nset -eu\n" in text
    assert re.search(r'^exec "\$agent" --home "\$home" run ', text, re.M)
    # the leaf the script steps into before doctor is the one the pilot moves itself into
    from sandbox_agent.limits.cgroup_v2 import AGENT_LEAF

    assert text.count(AGENT_LEAF) >= 2


@dataclass
class CondorJob:
    """A job as HTCondor's starter starts one: a fresh scratch directory of the job's
    own (the account's, 0700) with the job ad and the machine ad the starter writes."""

    pool: Pool
    scratch: Path
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        return plain_env(
            _CONDOR_SCRATCH_DIR=str(self.scratch), _CONDOR_JOB_AD=str(self.scratch / ".job.ad"),
            _CONDOR_MACHINE_AD=str(self.scratch / ".machine.ad"), _CONDOR_SLOT="slot1_1",
            BATCH_SYSTEM="HTCondor", HOME=str(self.scratch), TMPDIR=str(self.scratch),
            SANDBOX_AGENT_VENV=str(self.pool.venv), **extra,
        )  # fmt: skip

    def argv(self, *args: str, prefix: list[str] | None = None) -> list[str]:
        chosen = self.pool.prefix if prefix is None else prefix
        return [*chosen, *AS_NOBODY, str(SCRIPT), *args]

    def run(self, *args: str, prefix: list[str] | None = None,
            **extra: str) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return subprocess.run(self.argv(*args, prefix=prefix), env=self.env(**extra),
                              cwd=self.scratch, capture_output=True, text=True, timeout=WAIT,
                              check=False)  # fmt: skip


JOB_AD = ('ClusterId = 4242\nProcId = 0\nOwner = "pilot01"\nJobUniverse = 5\n'
          "AllowedJobDuration = 3600\nRequestCpus = 1\nRequestMemory = 3072\n"
          "SandboxAgentPilot = true\n")  # fmt: skip
MACHINE_AD = ('Name = "slot1_1@wn001.example.org"\nSlotType = "Dynamic"\nCpus = 1\n'
              "Memory = 4096\nDisk = 16777216\nCurrentTime = time()\n")  # fmt: skip


def condor_job(pool: Pool) -> CondorJob:
    scratch = pool.own(pool.base / "execute" / "dir_4242")
    (pool.base / "execute").chmod(0o755)
    pool.file(scratch / ".job.ad", JOB_AD)
    pool.file(scratch / ".machine.ad", MACHINE_AD)
    home = pool.own(scratch / "sandbox-agent")
    return CondorJob(pool, scratch, home)


def small_policy(pool: Pool, extra: str = "") -> str:
    """The site policy the script is given: the default with a small work directory."""
    return str(pool.file(pool.base / "site.toml", SMALL_WORKDIR + extra))


@pytest.fixture
def pool() -> Iterator[Pool]:
    yield from make_pool("/tmp")


@pytest.fixture
def undelegated_pool() -> Iterator[Pool]:
    yield from make_pool("/tmp", delegate=False)


def test_the_pilot_script_runs_a_job_as_htcondor_starts_it(pool: Pool) -> None:
    job = condor_job(pool)
    queue_probe(pool, job.home, pool.base / "jobs")
    ran = job.run("--json", SANDBOX_AGENT_POLICY=small_policy(pool))
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert SCRIPT_PREFIX not in ran.stderr
    assert "the pilot can run jobs here" in ran.stdout  # doctor's report, in the job's output
    assert finished(ran.stdout) == ["DONE"], ran.stdout[-3000:]
    assert "hello from the sandbox" in job_stdout(job.home)
    matched = [e for e in events(ran.stdout) if e.get("event") == "matched"]
    # the job ad allows 3600 s; the script keeps 600 back for the pilot's own stop
    assert 0 < int(matched[0]["ttl_left"]) <= 3000  # type: ignore[call-overload]


def test_the_pilot_script_becomes_the_pilot_and_a_sigterm_hands_the_job_back(
    pool: Pool,
) -> None:
    """HTCondor removes or evicts a job with SIGTERM to the process it started: the
    script's own pid, which is the pilot's once it has exec'd. The pilot stops its job,
    hands it back to the queue and exits 0."""
    job = condor_job(pool)
    where = pool.own(pool.base / "jobs", 0o755)
    pool.file(where / "long.jdl", 'Executable = "/bin/sleep";\nArguments = "600";\nTTL = 900;\n')
    pool.submit(job.home, where / "long.jdl")
    process = subprocess.Popen(
        job.argv("--json", "--grace", "2"), env=job.env(SANDBOX_AGENT_POLICY=small_policy(pool)),
        cwd=job.scratch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    seen = b""
    try:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        while b'"event": "started"' not in seen:  # until the pilot says the job started
            ready, _, _ = select.select([fd], [], [], WAIT)
            assert ready, "no event from the pilot within the bound: " + seen[-2000:].decode()
            chunk = os.read(fd, 65536)
            assert chunk, "the pilot ended before the job started: " + seen[-2000:].decode()
            seen += chunk
        process.send_signal(signal.SIGTERM)
        rest, errors = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = (seen + rest).decode()
    assert process.returncode == 0, output[-2000:] + errors.decode()[-2000:]
    assert [e.get("event") for e in events(output)].count("handed_back") == 1, output[-2000:]
    assert "WAITING" in pool.jobs(job.home)


@pytest.mark.parametrize("refusal", ["required-path", "nofile"])
def test_the_pilot_script_refuses_a_node_doctor_refuses(pool: Pool, refusal: str) -> None:
    job = condor_job(pool)
    queue_probe(pool, job.home, pool.base / "jobs")
    if refusal == "required-path":
        absent = "/cvmfs/sandbox-agent-test.example.org"
        assert not Path(absent).exists()
        policy = small_policy(pool, f'[filesystem]\nrequired = ["{absent}"]\n')
        ran = job.run(SANDBOX_AGENT_POLICY=policy)
        reason = absent
    else:  # a job's open files above what the batch system lets the pilot give
        policy = small_policy(pool, "[process.rlimits]\nnofile = 65536\n")
        ran = job.run(SANDBOX_AGENT_POLICY=policy,
                      prefix=[*pool.prefix, "prlimit", "--nofile=2000:2000"])  # fmt: skip
        reason = "process.rlimits"
    assert ran.returncode == 3, ran.stdout[-2000:] + ran.stderr[-2000:]
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith(SCRIPT_PREFIX + "this node cannot run sandbox-agent jobs: ")
    assert reason in lines[0]
    assert "WAITING" in pool.jobs(job.home)  # no pilot ran: the job is still queued


def test_the_pilot_script_says_which_setting_is_wrong(pool: Pool) -> None:
    job = condor_job(pool)
    for extra, said in (({"SANDBOX_AGENT_VENV": str(pool.base / "nowhere")}, "SANDBOX_AGENT_VENV"),
                        ({"SANDBOX_AGENT_TTL": "a day"}, "SANDBOX_AGENT_TTL")):  # fmt: skip
        ran = subprocess.run(job.argv(), env={**job.env(), **extra}, cwd=job.scratch,
                             capture_output=True, text=True, timeout=WAIT, check=False)  # fmt: skip
        assert ran.returncode == 2 and len(ran.stderr.splitlines()) == 1, ran.stderr
        assert ran.stderr.startswith(SCRIPT_PREFIX) and said in ran.stderr
    ran = subprocess.run(job.argv(), env={k: v for k, v in job.env().items()
                                          if k != "_CONDOR_SCRATCH_DIR"},
                         cwd=job.scratch, capture_output=True, text=True, timeout=WAIT,
                         check=False)  # fmt: skip
    assert ran.returncode == 2 and "_CONDOR_SCRATCH_DIR" in ran.stderr


def test_a_slot_without_a_delegated_cgroup_runs_jobs_on_the_slot_policy(
    undelegated_pool: Pool,
) -> None:
    """In a cgroup the account may not write (HTCondor's usual job cgroup), the default
    policy is refused in one line naming the cgroup; the slot policy runs the job."""
    pool = undelegated_pool
    job = condor_job(pool)
    queue_probe(pool, job.home, pool.base / "jobs")
    refused = job.run(SANDBOX_AGENT_POLICY=small_policy(pool))
    if refused.returncode == 0:
        pytest.skip("uid 65534 may write this test's own cgroup: it is delegated here")
    assert refused.returncode == 3 and "limits.memory" in refused.stderr, refused.stderr
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    slot = pool.file(pool.base / "slot.toml", SLOT_POLICY.read_text()
                     + '\n[limits.workdir_size]\ndefault = "64MB"\n')  # fmt: skip
    ran = job.run("--json", SANDBOX_AGENT_POLICY=str(slot))
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert finished(ran.stdout) == ["DONE"], ran.stdout[-2000:]


# -- logrotate ----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
def test_logrotate_reads_the_file(tmp_path: Path) -> None:
    checked = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(LOGROTATE)],
                             capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    said = checked.stdout + checked.stderr
    assert "error" not in said.lower(), said
    assert "copytruncate" in LOGROTATE.read_text()


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
def test_logrotate_rotates_a_log_the_pilot_keeps_open(tmp_path: Path) -> None:
    """As systemd's append: leaves it: the pilot writes on through its descriptor, and
    its next line starts the emptied file (no hole where the old lines were)."""
    logs = tmp_path / "log"
    logs.mkdir(mode=0o750)
    config = tmp_path / "sandbox-agent"
    config.write_text(LOGROTATE.read_text().replace("/var/log/sandbox-agent", str(logs)))
    log = logs / f"{INSTANCE}.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, b"before the rotation\n" * 100)
        rotated = subprocess.run(
            ["logrotate", "-f", "-s", str(tmp_path / "state"), str(config)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert rotated.returncode == 0, rotated.stderr
        os.write(fd, b"after the rotation\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"after the rotation\n"
    assert (logs / f"{INSTANCE}.log.1").read_bytes() == b"before the rotation\n" * 100
