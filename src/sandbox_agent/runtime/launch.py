"""Starting a launch plan: the seccomp program on its descriptor, rlimits, nothing else
inherited.

The runtime process (bwrap here) gets exactly: stdin, stdout and stderr, and the
descriptors the plan names (the seccomp program, the files it carries in, the pipes the
agent reads). Every other descriptor of the agent is closed in the child
(``close_fds``), the rlimits of the policy are set before exec (they are inherited
through the sandbox), and the environment is empty: the sandbox's variables are in the
argv (``--setenv``), the agent's are not passed on.

bwrap gets one more, which it reads and closes before it makes anything: its own
options, the plan's argv up to its "--", NUL-separated (``bwrap --args FD``). The
sandbox's pid 1 is a fork of bwrap, so its /proc/1/cmdline would otherwise hold every
option: the host paths of the work directory, an image's mount point, the values of
the variables. It now holds ``bwrap --args FD -- <the command>``; ``policy render``
and the audit record still show the whole argv, which is what bwrap runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import marshal
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import prctl

from sandbox_agent.limits import rlimits
from sandbox_agent.limits.cgroups import JobCgroup
from sandbox_agent.policy import gate
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.policy.model import within
from sandbox_agent.runtime import bwrap, containers
from sandbox_agent.runtime.plan import (
    AGENT_FILES,
    COMPILED,
    Carried,
    LaunchPlan,
    SourceWord,
)
from sandbox_agent.seccomp.compile import bpf_fd, compile_profile, data_fd
from sandbox_agent.wrapper import confine

_RLIMITS = rlimits.RLIMITS


# When the agent is root, the sandbox is started as this host user, never as root: a
# user namespace maps the payload onto the uid that starts it, and host uid 0 may write
# sysctls and device nodes whatever the capabilities.
SANDBOX_HOST_UID = 65534
OOM_SCORE_ADJ = 1000  # the sandbox's processes are the OOM killer's first choice
OOM_TRAMPOLINE = f'echo {OOM_SCORE_ADJ} > /proc/self/oom_score_adj 2>/dev/null; exec "$@"'


class RuntimeMissing(RuntimeError):
    """The runtime's binary is not there: one line saying which and how to get it."""


class WorkdirRefused(ValueError):
    """A work directory the sandbox must not get: one line saying why."""


@dataclass(frozen=True)
class Started:
    process: subprocess.Popen[bytes]
    seccomp_sha256: str
    unenforced: tuple[str, ...]  # optional requirements nothing enforces here
    info: int | None = None  # read end of the runtime's report (bwrap --info-fd)
    confirm: int | None = None  # read end of the landlock step's confirmation
    files: str | None = None  # the private directory of agent files; the caller removes it
    block: int | None = None  # write end of the pipe the sandbox waits on (egress)


def unenforced(plan: LaunchPlan) -> tuple[str, ...]:
    """The optional requirements this launch does not enforce; raises Unenforceable for
    a required one (the gate decides)."""
    return gate.check(plan.requirements, plan.carried, plan.optional)


def check_workdir(path: Path, effective: EffectivePolicy, runtime: str = "bwrap") -> str:
    """The work directory as the sandbox gets it: an existing directory reached without
    any symlink, away from every denied path (the agent's credentials among them), and
    for a root agent writable by uid 65534, as which the sandbox runs; except on
    Podman, which gives the directory to the container's own uid (the U option)."""
    absolute = os.path.abspath(path)
    if os.path.realpath(absolute) != absolute:
        raise WorkdirRefused(f"{path}: the work directory's path goes through a symlink")
    if not os.path.isdir(absolute):
        raise WorkdirRefused(f"{path}: the work directory must be an existing directory")
    for item in effective["filesystem.deny"].value:
        denied = os.path.abspath(item.value)
        if within(absolute, denied) or within(denied, absolute):
            raise WorkdirRefused(
                f"{path}: the work directory reaches the denied path {denied} ({item.origin})"
            )
    info = os.stat(absolute)
    if runtime == "podman":
        _givable(absolute)
    if info.st_mode & stat.S_ISVTX and info.st_mode & 0o002:
        raise WorkdirRefused(
            f"{path}: a directory every user may write to (such as /tmp) is shared; give the "
            "job a directory of its own"
        )
    if (os.geteuid() == 0 and runtime != "podman" and info.st_uid != SANDBOX_HOST_UID
            and not info.st_mode & 0o002):  # fmt: skip
        raise WorkdirRefused(
            f"{path}: as root the sandbox runs as uid {SANDBOX_HOST_UID}, which cannot "
            f"write here; run: chown {SANDBOX_HOST_UID} {path}"
        )
    return absolute


GIVABLE_ENTRIES = 100_000  # what a work directory given to Podman is checked for, at most


def _givable(directory: str) -> None:
    """Podman gives the work directory to the container's uid (the volume's U option),
    chowning every inode in it: a hard link would give away the file it links, wherever
    that is, and a device node the device. Only directories, symlinks (Podman chowns the
    link itself) and files with one link may be there."""
    count = 0
    for parent, directories, files in os.walk(directory):
        for name in directories + files:
            count += 1
            if count > GIVABLE_ENTRIES:
                raise WorkdirRefused(f"{directory}: more than {GIVABLE_ENTRIES} entries to check "
                                     "before Podman may own them; give a fresh one")  # fmt: skip
            path = os.path.join(parent, name)
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode) or stat.S_ISLNK(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
                what = "a hard link" if stat.S_ISREG(info.st_mode) else "not a file"
                raise WorkdirRefused(f"{path}: {what}; Podman would give it to the container's "
                                     "uid (the work directory's U option): remove it")  # fmt: skip


def start(
    plan: LaunchPlan,
    *,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    cgroup: JobCgroup | None = None,
) -> Started:
    """Start the plan's argv, inside ``cgroup`` before it runs any code of its own.
    The caller waits for the process and tears the cgroup down."""
    skipped = unenforced(plan)
    argv = list(plan.argv)
    binary = shutil.which(argv[0])
    if binary is None:
        raise RuntimeMissing(
            f"{argv[0]} is not installed or not on PATH (Debian/Ubuntu: apt-get install "
            f"{'bubblewrap' if argv[0] == 'bwrap' else argv[0]})"
        )
    # an engine sets the container's rlimits itself; else the child sets them, where a
    # failure can say nothing useful ("Exception occurred in preexec_fn")
    beyond = [] if plan.container else rlimits.above(plan.rlimits)
    if beyond:
        gate.refuse(
            "process.rlimits", "; ".join(b.removeprefix("process.rlimits.") for b in beyond)
        )
    compiled = compile_profile(Path(plan.seccomp_profile))
    fds: list[int] = []
    info = confirm = block = None
    files = None
    try:
        for descriptor in plan.descriptors:
            carries = descriptor.carries
            if carries is Carried.SECCOMP:
                fd = bpf_fd(compiled.bpf)
            elif carries is Carried.INFO:
                info, fd = os.pipe2(os.O_CLOEXEC)
            elif carries is Carried.CONFIRM:
                confirm, fd = os.pipe2(os.O_CLOEXEC)
            elif carries is Carried.BLOCK:  # the runtime reads, the agent writes
                fd, block = os.pipe2(os.O_CLOEXEC)
            elif carries.is_bytecode:  # for the agent's Python
                source = carries.source
                fd = data_fd(f"sandbox-agent-{carries}", bytecode(_name(source), _source(source)))
            else:  # the source of a module the sandbox runs
                fd = data_fd(f"sandbox-agent-{carries}", _source(carries))
            fds.append(fd)
            argv[descriptor.at] = str(fd)  # the plan's number, as the agent has it
        # an engine's client is no sandbox: the engine sets the container's (--ulimit)
        engine = plan.container != ""
        limits = [] if engine else [(_RLIMITS[name], value) for name, value in plan.rlimits]
        files = _agent_files(plan, argv, compiled.bpf)
        for at, kind in plan.sources_at:  # python3 -c SOURCE: no file, no descriptor
            if argv[at] != SourceWord(kind):  # a plan whose argv moved: run nothing of it
                raise ValueError(f"the plan's argv holds no {kind} source at word {at}")
            argv[at] = _source(kind).decode()
        if plan.runtime == "bwrap":
            fds.append(_options_on_descriptor(plan, argv))

        # bwrap and Apptainer map the payload onto the uid that starts them: a root agent
        # starts them as 65534. Docker's client keeps the agent's uid, which must reach
        # the engine's socket; the engine runs the container as --user.
        drop = os.geteuid() == 0 and plan.runtime in ("bwrap", "apptainer")
        placement = cgroup.procs_files() if cgroup else ()

        def before_exec() -> None:  # runs in the child, between fork and exec
            # into the job's cgroup first: everything it execs or forks stays there
            for procs in placement:
                with open(procs, "w") as file:
                    file.write(str(os.getpid()))
            for which, value in limits:
                resource.setrlimit(which, (value, value))
            if not trampoline:  # root: straight away (raising one's score needs nothing)
                with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:
                    adj.write(str(OOM_SCORE_ADJ))
            if drop:
                os.setgroups([])
                os.setresgid(SANDBOX_HOST_UID, SANDBOX_HOST_UID, SANDBOX_HOST_UID)
                os.setresuid(SANDBOX_HOST_UID, SANDBOX_HOST_UID, SANDBOX_HOST_UID)
            # after the uid change, which clears it: the runtime dies with the agent
            prctl.set_pdeathsig(signal.SIGKILL)

        # the sandbox, never the agent, is the OOM killer's first choice when a cgroup it
        # shares with the agent (a batch slot's) runs out of memory. An undumpable
        # unprivileged agent's /proc files are root's until exec: a shell writes the
        # score after its exec, then execs the runtime (same pid, descriptors kept).
        trampoline = not engine and os.geteuid() != 0
        process = subprocess.Popen(
            ["/bin/sh", "-c", OOM_TRAMPOLINE, "sh", binary, *argv[1:]] if trampoline else argv,
            executable="/bin/sh" if trampoline else binary,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=containers.client_environment() if engine else {},
            close_fds=True,
            pass_fds=tuple(fds),
            preexec_fn=before_exec,
            # no controlling terminal for the payload of any runtime (TIOCSTI, job control)
            start_new_session=plan.new_session,
        )
    except BaseException:
        for end in (info, confirm, block):
            if end is not None:
                os.close(end)
        if files:
            shutil.rmtree(files, ignore_errors=True)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return Started(process, compiled.sha256, skipped, info, confirm, files, block)


def stdin_files(plan: LaunchPlan) -> bytes:
    """What the runtime's first process reads on its stdin before anything else (the
    confine step's --files-from-stdin): the plan's stdin files, bytecode made for the
    agent's Python (the interpreter carried in is the agent's)."""
    files = []
    for name, kind in plan.stdin_files:
        if kind is Carried.SECCOMP:  # compiled once per profile and content
            files.append((name, compile_profile(Path(plan.seccomp_profile)).bpf))
        elif kind.is_bytecode:
            files.append((name, bytecode(_name(kind.source), _source(kind.source))))
        else:
            files.append((name, _source(kind)))
    return confine.files_frame(files)


def _options_on_descriptor(plan: LaunchPlan, argv: list[str]) -> int:
    """bwrap's options (``argv`` up to the "--" that ends them, where the plan's own argv
    has it) moved to a new descriptor, ``argv`` made ``bwrap --args FD -- ...``; returns
    the descriptor. bwrap reads it to its end and closes it before it makes the sandbox.
    A NUL in an option would split it in two there: refused (exec refuses it too)."""
    end = bwrap.options_end(plan.argv)
    words = [os.fsencode(word) for word in argv[1:end]]
    if any(b"\0" in word for word in words):
        raise ValueError("a bwrap option holds a NUL byte")
    fd = data_fd("sandbox-agent-bwrap-args", b"".join(word + b"\0" for word in words))
    argv[1:end] = ["--args", str(fd)]
    return fd


def _agent_files(plan: LaunchPlan, argv: list[str], bpf: bytes) -> str | None:
    """The plan's agent files (the confine step, the compiled seccomp program) in a new
    private directory, read-only, readable by the uid the runtime runs as; argv's
    placeholder for it replaced by its path."""
    if not plan.agent_files and not plan.files_at:
        return None
    directory = tempfile.mkdtemp(prefix="sandbox-agent-files-")
    os.chmod(directory, 0o755)  # noqa: S103 (the sandbox's uid reads it; nothing secret)
    for name, kind in plan.agent_files.items():
        path = os.path.join(directory, name)
        source = bpf if kind is Carried.SECCOMP else _source(kind)
        Path(path).write_bytes(source)
        os.chmod(path, 0o444)
        if kind in COMPILED and sys.implementation.cache_tag:
            cache = os.path.join(directory, "__pycache__")
            os.makedirs(cache, exist_ok=True)
            os.chmod(cache, 0o755)  # noqa: S103 (whatever the umask: the sandbox reads it)
            cached = os.path.join(cache, f"{name[:-3]}.{sys.implementation.cache_tag}.pyc")
            Path(cached).write_bytes(bytecode(name, source))
            os.chmod(cached, 0o444)
    for at in plan.files_at:
        argv[at] = argv[at].replace(AGENT_FILES, directory)
    return directory


_BYTECODE: dict[tuple[str, bytes], bytes] = {}


def bytecode(name: str, source: bytes) -> bytes:
    """``source`` compiled, as a hash-based unchecked .pyc (PEP 552) that the sandbox's
    Python reads from __pycache__ instead of compiling the source at every job's start
    (the agent files are read-only: it could never cache them itself). A Python of
    another version looks for another file name, or finds another magic number, and
    compiles the source as before. Made once per agent and source."""
    key = (name, hashlib.sha256(source).digest())
    if key not in _BYTECODE:
        code = compile(source, name, "exec", dont_inherit=True, optimize=0)  # the plain .pyc
        flags = (0b01).to_bytes(4, "little")  # hash-based, not checked against the source
        _BYTECODE[key] = (importlib.util.MAGIC_NUMBER + flags
                          + importlib.util.source_hash(source) + marshal.dumps(code))  # fmt: skip
    return _BYTECODE[key]


def _source(kind: Carried) -> bytes:
    """The source of a module the sandbox runs (plan.SHIPPED)."""
    return Path(kind.module_file).read_bytes()


def _name(kind: Carried) -> str:
    """The file name of the module ``kind`` names (jobwrapper.py for Carried.WRAPPER)."""
    return os.path.basename(kind.module_file)
