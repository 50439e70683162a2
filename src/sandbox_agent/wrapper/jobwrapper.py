"""The JobWrapper: runs one job inside the sandbox, told only by the handoff frame.

    python3 -I -S jobwrapper.py --status-fd N < handoff-frame

It reads ONE handoff frame on stdin (nothing else from the agent, ever), writes the job
token to 0600 files in a private directory of the work directory and exports only
their paths (JALIEN_TOKEN_CERT, JALIEN_TOKEN_KEY, as JAliEn payloads expect), builds the
payload's environment (the handoff's, then JAliEn's: ALIEN_JDL_<name> for the
JDLVariables, HOME, TMP and TMPDIR, ALIEN_PROC_ID, ALIEN_MASTERJOB_ID, ALIEN_USER,
ALIEN_SITE), checks the inputs are there, runs the executable with its
arguments (an argv, never a shell) in its own session with stdout and stderr to files,
runs the validation command, packages the outputs (packaging.py) and reports each state
on the status descriptor, which the payload does not inherit:

    STARTED, then ERROR_IB (an input or the executable is missing), or
    RUNNING (the payload, then the validation), SAVING (packaging), then one of
    DONE, DONE_WARN (an output wildcard or archive matched nothing), ERROR_S (an
    output is missing or an archive could not be written), ERROR_E (the payload
    failed), ERROR_V (the validation failed), ERROR_VN (it could not be started),
    ERROR_VT (it was killed or ran past its time).

A failed job packages the JDL's OutputErrorE instead of its Output. SIGTERM (the agent
stopping the job) is passed on to the running child's process group and the wrapper
carries on, so what finished is still reported.

SAVING starts only once every other process of the job is gone: a process the payload
left behind could otherwise swap an archive for its own while it is written. Inside the
sandbox's own PID namespace (the wrapper is its pid 1, or a child of its init, and /proc
is that namespace's) the wrapper sends SIGKILL to all of it (kill(-1)) and waits until
/proc lists no one but pid 1 and itself. Where it cannot prove that (namespaces.pid
off: kill(-1) would reach the host's processes of the same uid, the pilot's included)
it kills nothing and makes no archive: ERROR_S, with the reason.

Standard library only, and the sibling modules handoff.py and packaging.py found next
to this file: the agent copies them into the sandbox, where start-up time counts. It
runs on the node's python3 from 3.6 on (EL8's; images.hostpython.OLDEST): every
annotation Python evaluates is a string, and what a newer Python added (posix_spawn,
pidfd_open, waitstatus_to_exitcode) is used where it is there, with the same work done
by fork and exec, and by polling waitpid, where it is not.
"""

import _thread  # the C module: threading costs milliseconds at every job's start
import os
import select
import stat
import sys
import time

TYPE_CHECKING = False  # typing costs milliseconds at every job's start; only mypy needs it
if TYPE_CHECKING:
    from typing import IO, Any

if TYPE_CHECKING:
    import signal
else:  # the C module: `signal` wraps it in enums, milliseconds at every job's start
    import _signal as signal


if __package__:  # imported from the installed package (tests, the agent)
    from sandbox_agent.wrapper import handoff, packaging
else:  # run as a file inside the sandbox: its siblings lie next to it (-I drops the dir;
    # first on the path, so not the PyPI "packaging" either)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import handoff  # type: ignore[import-not-found,no-redef]
    import packaging  # type: ignore[import-not-found,no-redef,unused-ignore]

TMP_DIR = "tmp"  # the payload's TMP and TMPDIR, in the work directory
TOKEN_DIR = ".jalien-token"  # noqa: S105 (a directory name) in the work directory, 0700
EXIT_BAD_HANDOFF = 3
VALIDATION_TIME = 3600  # seconds, when the handoff's limits have no wall_time
ALONE_TIME = 10.0  # seconds the job's other processes get to vanish after SIGKILL


class Reporter:
    """Status frames to the agent, on a descriptor the payload does not inherit."""

    def __init__(self, stream: "IO[bytes]") -> None:
        self.stream = stream

    def state(self, state: str, detail: str = "", exit_code: "int | None" = None) -> None:
        fields: dict[str, Any] = {"state": state}
        if detail:
            fields["detail"] = detail[:4000]
        if exit_code is not None:
            fields["exit_code"] = exit_code
        handoff.write_frame(self.stream, "status", fields)


def write_token(workdir: str, token: "dict[str, Any]") -> "dict[str, str]":
    """The job token's files, 0600 in a 0700 directory; the variables naming them."""
    directory = os.path.join(workdir, TOKEN_DIR)
    os.mkdir(directory, 0o700)
    paths = {}
    for name, text in (("cert.pem", token["certificate"] + "".join(token["chain"])),
                       ("key.pem", token["key"])):  # fmt: skip
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        paths[name] = path
    return {"JALIEN_TOKEN_CERT": paths["cert.pem"], "JALIEN_TOKEN_KEY": paths["key.pem"]}


def temporary_directory(workdir: str) -> str:
    """``tmp`` in the work directory, 0700, for TMP and TMPDIR (as JAliEn's JobWrapper
    makes it); the work directory itself when the job staged a file of that name."""
    path = os.path.join(workdir, TMP_DIR)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        info = os.lstat(path)
        return path if stat.S_ISDIR(info.st_mode) else workdir
    return path


def environment(frame: "dict[str, Any]", workdir: str, token: "dict[str, str]") -> "dict[str, str]":
    """The payload's environment, JAliEn's JobWrapper's variables last so that nothing
    the policy passes on can replace them. ALIEN_MASTERJOB_ID is the job's own id: no
    job here is split into subjobs, and a MasterJobID the JDL writes is not believed."""
    env = dict(frame["environment"])
    for name, value in frame["spec"]["variables"].items():
        env[f"ALIEN_JDL_{name.upper()}"] = value
    tmp = temporary_directory(workdir)
    job_id = str(frame["job_id"])
    env.update(
        HOME=workdir,
        TMP=tmp,
        TMPDIR=tmp,
        ALIEN_PROC_ID=job_id,
        ALIEN_MASTERJOB_ID=job_id,
        ALIEN_USER=frame["user"],
        ALIEN_SITE=frame["site"],
    )
    env.update(token)
    return env


class Child:
    """A started program: what the wrapper needs of subprocess.Popen, without importing
    subprocess (tens of milliseconds of every job's start on a slow node)."""

    def __init__(self, argv: "list[str]", env: "dict[str, str]", stdout: "IO[bytes]",
                 stderr: "IO[bytes]") -> None:  # fmt: skip
        program = _which(argv[0], env.get("PATH", os.defpath))
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.pid = _spawn(program, argv, env, (null, stdout.fileno(), stderr.fileno()))
        finally:
            os.close(null)
        self.returncode: int | None = None

    def wait(self, timeout: "float | None" = None) -> int:
        """The exit code (negative: the signal); TimeoutError past ``timeout`` seconds."""
        if self.returncode is None and timeout is not None and not self._ends_within(timeout):
            raise TimeoutError(self.pid)
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except InterruptedError:  # pragma: no cover (PEP 475 retries for us)
                continue
            self.returncode = exit_code(status)
        return self.returncode

    def _ends_within(self, timeout: float) -> bool:
        """Whether the program ends within ``timeout`` seconds: its pidfd polled, where
        Python (3.9) and the kernel (5.3) have pidfd_open; else waitpid polled, which
        reaps it."""
        if _PIDFD:
            try:
                pidfd = os.pidfd_open(self.pid)  # novm (guarded by _PIDFD)
            except OSError:  # ENOSYS: an older kernel
                pidfd = -1
            if pidfd >= 0:
                try:
                    return bool(select.select([pidfd], [], [], timeout)[0])
                finally:
                    os.close(pidfd)
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = exit_code(status)
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)


# What Python 3.8 and 3.9 added, where this Python has it (EL8's 3.6 has neither)
_POSIX_SPAWN = hasattr(os, "posix_spawn")
_PIDFD = hasattr(os, "pidfd_open")


def exit_code(status: int) -> int:
    """A waitpid status as an exit code, negative for the signal that ended the process
    (os.waitstatus_to_exitcode, which Python has from 3.9)."""
    if hasattr(os, "waitstatus_to_exitcode"):
        return os.waitstatus_to_exitcode(status)  # novm (guarded)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    raise ValueError(f"invalid wait status: {status}")


def _spawn(program: str, argv: "list[str]", env: "dict[str, str]",
           fds: "tuple[int, int, int]") -> int:  # fmt: skip
    """Start ``program`` in a session of its own, ``fds`` as its stdin, stdout and
    stderr, SIGPIPE and SIGXFSZ at their defaults (Python ignores them for itself; a
    write past RLIMIT_FSIZE must kill, as subprocess gives them back); its pid. By
    posix_spawn where Python (3.8) and the C library (POSIX_SPAWN_SETSID) have it."""
    if _POSIX_SPAWN:
        try:
            return os.posix_spawn(program, argv, env, setsid=True,  # novm (guarded)
                                  setsigdef=(signal.SIGPIPE, signal.SIGXFSZ), file_actions=[
                (os.POSIX_SPAWN_DUP2, fds[0], 0), (os.POSIX_SPAWN_DUP2, fds[1], 1),  # novm
                (os.POSIX_SPAWN_DUP2, fds[2], 2)])  # novm  # fmt: skip
        except NotImplementedError:  # no POSIX_SPAWN_SETSID in this C library
            pass
    return fork_exec(program, argv, env, fds)


def fork_exec(program: str, argv: "list[str]", env: "dict[str, str]",
              fds: "tuple[int, int, int]") -> int:  # fmt: skip
    """posix_spawn's work by fork and exec, as the C library does it: the signals this
    process handles are blocked across the fork and reset to their defaults in the
    child (none of the wrapper's handlers ever runs there), the session made, the
    descriptors duplicated in the same order, the mask restored, then exec. A failed
    exec is raised here as posix_spawn raises it (OSError naming ``program``), its
    errno told on a pipe that a successful exec closes."""
    handled = [number for number in range(1, signal.NSIG)
               if callable(signal.getsignal(number))]  # fmt: skip
    readable, writable = os.pipe()  # both close on exec
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        pid = os.fork()
        if pid == 0:  # the child: it never returns from here
            error = 0
            try:
                for number in (*handled, signal.SIGPIPE, signal.SIGXFSZ):
                    signal.signal(number, signal.SIG_DFL)
                os.setsid()
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                os.execve(program, argv, env)  # noqa: S606 (an argv list, no shell)
            except OSError as exc:
                error = exc.errno or 0
            finally:
                try:
                    os.write(writable, str(error).encode())
                finally:
                    os._exit(127)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(writable)
    with os.fdopen(readable, "rb") as pipe:
        said = pipe.read()  # nothing once exec has closed it
    if not said:
        return pid
    os.waitpid(pid, 0)
    number = int(said)
    raise OSError(number, os.strerror(number) if number else "failed before exec", program)


def _which(name: str, path: str) -> str:
    """The file ``name`` runs, searched in ``path`` as a shell would when it has no /."""
    if "/" in name:
        return name
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(2, "No such file or directory", name)


class Children:
    """The child the wrapper waits for, and SIGTERM passed on to its process group: the
    agent stops a job by signalling all its processes, and the wrapper must outlive the
    payload to report what finished."""

    def __init__(self) -> None:
        self.current: Child | None = None
        self.stopping = False

    def on_sigterm(self, _signum: int, _frame: object) -> None:
        self.stopping = True
        self._forward()

    def _forward(self, signum: int = signal.SIGTERM) -> None:
        child = self.current
        if child is not None and child.returncode is None:  # not reaped: its group is ours
            try:  # noqa: SIM105 (contextlib costs milliseconds at start)
                os.killpg(child.pid, signum)
            except OSError:
                pass  # the group is already gone

    def start(self, argv: "list[str]", *, cwd: str, env: "dict[str, str]",
              stdout: "IO[bytes]", stderr: "IO[bytes]") -> "Child":  # fmt: skip
        if cwd != os.getcwd():  # the wrapper runs in the work directory; tests may not
            os.chdir(cwd)
        child = Child(argv, env, stdout, stderr)
        self.current = child
        if self.stopping:  # SIGTERM came while it was being started
            self._forward()
        return child

    def kill(self) -> None:
        self._forward(signal.SIGKILL)


def create(workdir: str, name: str) -> "IO[bytes]":
    """A fresh output file of the wrapper's; a symlink left in its place is refused,
    not written through."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(os.path.join(workdir, name), flags, 0o644), "wb")


def missing_inputs(workdir: str, names: "list[str]") -> "list[str]":
    """The inputs that are not a regular file directly in the work directory (a symlink
    is not one: the agent places real files)."""
    missing = []
    for name in names:
        try:
            plain = "/" not in name and name not in ("", ".", "..")
            ok = plain and stat.S_ISREG(os.lstat(os.path.join(workdir, name)).st_mode)
        except OSError:
            ok = False
        if not ok:
            missing.append(name)
    return missing


def validate(argv: "list[str]", workdir: str, env: "dict[str, str]", timeout: int,
             children: "Children") -> "tuple[str, str] | None":  # fmt: skip
    """None when the validation command passes, else its error state and why."""
    try:
        with create(workdir, "validation.out") as out, create(workdir, "validation.err") as err:
            child = children.start(argv, cwd=workdir, env=env, stdout=out, stderr=err)
    except OSError as exc:
        return "ERROR_VN", f"cannot run the validation {argv[0]}: {exc.strerror}"
    try:
        code = child.wait(timeout)
    except TimeoutError:
        children.kill()  # its whole group: a shell script's children too
        child.wait()
        return "ERROR_VT", f"the validation ran past {timeout} s and was killed"
    if code < 0:
        return "ERROR_VT", f"the validation was killed by signal {-code}"
    if code:
        return "ERROR_V", f"the validation exited with {code}"
    return None


def own_pid_namespace(proc: str = "/proc") -> "str | None":
    """None when the wrapper can show it is in a PID namespace of the sandbox's own, seen
    whole in ``proc``; else why not, in words. Its own pid is 1, or its parent's is (the
    runtime's init: bwrap's, docker's): outside such a namespace the wrapper's parent is
    the runtime, never pid 1. And ``proc`` must be that namespace's: the first pid its
    NSpid line gives the wrapper is the wrapper's own."""
    pid, parent = os.getpid(), os.getppid()
    if pid != 1 and parent != 1:
        return (f"the sandbox has no PID namespace of its own (the wrapper is pid {pid}, its "
                f"parent pid {parent}; is namespaces.pid off?)")  # fmt: skip
    try:
        with open(os.path.join(proc, "self", "status"), "rb") as status:
            lines = status.read().decode("ascii", "replace").splitlines()
    except OSError as exc:
        return f"{proc}/self/status cannot be read ({exc.strerror})"
    ids = next((line.split()[1:] for line in lines if line.startswith("NSpid:")), [])
    if not ids or ids[0] != str(pid):
        return f"{proc} is not the sandbox's own (it gives the wrapper pid {ids[:1] or '?'})"
    return None


def others(proc: str = "/proc") -> "list[int]":
    """The pids ``proc`` lists besides pid 1 and the wrapper (zombies included)."""
    mine = os.getpid()
    return [int(name) for name in os.listdir(proc)
            if name.isdigit() and int(name) not in (1, mine)]  # fmt: skip


def _reap() -> None:
    """Collect the wrapper's own ended children (zombies are listed in /proc)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_other_processes(timeout: float = ALONE_TIME, proc: str = "/proc") -> "str | None":
    """Kill every process of the job but the wrapper and its namespace's init, and wait
    until they are gone; None once they are, else why not (then no archive is made).
    kill(-1) is sent only inside the sandbox's own PID namespace (own_pid_namespace):
    elsewhere it would reach every process of this uid on the host."""
    why = own_pid_namespace(proc)
    if why is not None:
        return why
    deadline = time.monotonic() + timeout
    while True:
        try:  # noqa: SIM105 (contextlib costs milliseconds at start)
            os.kill(-1, signal.SIGKILL)  # again each round: one forked as the first went
        except ProcessLookupError:
            pass  # nobody else: the usual case
        _reap()
        left = others(proc)
        if not left:
            return None
        if time.monotonic() > deadline:
            return (f"{len(left)} process(es) of the job outlived SIGKILL for {timeout:g} s "
                    f"(pid {left[0]} among them)")  # fmt: skip
        time.sleep(0.005)


def run_job(frame: "dict[str, Any]", workdir: str, report: Reporter,
            children: "Children | None" = None) -> int:  # fmt: skip
    """Run the job the frame describes; report its states; return its exit code."""
    spec = frame["spec"]
    children = children or Children()
    report.state("STARTED")
    missing = missing_inputs(workdir, spec["input_files"])
    if missing:
        report.state("ERROR_IB", "input files missing or not regular files: " + ", ".join(missing))
        return 1
    env = environment(frame, workdir, write_token(workdir, frame["token"]))
    if children.stopping:
        report.state("ERROR_E", "stopped (SIGTERM) before the payload started")
        return 128 + signal.SIGTERM
    try:
        with create(workdir, "stdout") as out, create(workdir, "stderr") as err:
            payload = children.start([spec["executable"], *spec["arguments"]], cwd=workdir,
                                     env=env, stdout=out, stderr=err)  # fmt: skip
    except OSError as exc:
        report.state("ERROR_IB", f"cannot run {spec['executable']}: {exc.strerror}")
        return 127
    report.state("RUNNING")
    code = payload.wait()
    failure: tuple[str, str] | None = None
    if code < 0:
        stopped = " after the wrapper got SIGTERM" if children.stopping else ""
        failure = "ERROR_E", f"the executable was killed by signal {-code}{stopped}"
    elif code:
        failure = "ERROR_E", f"the executable exited with {code}"
    elif spec.get("validation"):
        wall = frame["limits"].get("wall_time", 0)
        failure = validate(spec["validation"], workdir, env,
                           wall if wall > 0 else VALIDATION_TIME, children)  # fmt: skip
    # nothing the payload left may run while the archives are made (a process renaming
    # its own zip over one): the job's other processes are killed first, or no archive
    alone = end_other_processes()
    # DONE and every error after the payload ran go through SAVING (the state table)
    report.state("SAVING")
    entries = spec["output_errors"] if failure else spec["outputs"]
    errors, warnings = packaging.save(workdir, entries, {TOKEN_DIR},
                                      no_archives="" if alone is None else alone)  # fmt: skip
    if failure:
        state, detail = failure
        problems = errors + warnings
        if problems:
            detail += "; saving OutputErrorE: " + "; ".join(problems)
    elif errors:
        state, detail = "ERROR_S", "; ".join(errors + warnings)
    elif warnings:
        state, detail = "DONE_WARN", "; ".join(warnings)
    else:
        state, detail = "DONE", ""
    report.state(state, detail, exit_code=code)
    return code if code >= 0 else 128 - code


def undumpable() -> None:
    """Close this process's /proc entries (memory, descriptors: the status pipe, the
    job key) to the payload, which runs as the same uid. exec resets it for the payload.
    ctypes is already loaded when the landlock step runs us in its interpreter."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError(ctypes.get_errno(), "cannot make the wrapper undumpable")


EXIT_AGENT_GONE = 137  # the lifeline ended: the job was killed, as by its agent
_FINISHED: "list[int]" = []  # the job's exit code, once its final state is reported


def watch_lifeline(fd: int, proc: str = "/proc") -> None:
    """Block until ``fd`` (the wrapper's stdin, which the agent keeps open while the job
    runs) ends, then end the job: every other process of the sandbox killed, and the
    wrapper with them. A container belongs to its engine, not to the agent's process
    tree, and would run on after the agent was killed; this is what ends it then. Once
    the job has reported its final state, the end is the agent's word that it has read
    what the container's cgroup counted: the wrapper exits with the job's code."""
    while True:
        try:
            if not os.read(fd, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    if _FINISHED:
        os._exit(_FINISHED[0])
    print("sandbox-agent wrapper: the agent is gone (its end of stdin closed): the job is "
          "killed", file=sys.stderr)  # fmt: skip
    if own_pid_namespace(proc) is None:  # else kill(-1) would reach the host's processes
        try:  # noqa: SIM105 (contextlib costs milliseconds at start)
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
    os._exit(EXIT_AGENT_GONE)


def main(argv: "list[str]") -> int:
    if len(argv) != 2 or argv[0] != "--status-fd" or not argv[1].isdigit():
        print("sandbox-agent wrapper: usage: jobwrapper.py --status-fd N < handoff",
              file=sys.stderr)  # fmt: skip
        return EXIT_BAD_HANDOFF
    status_fd = int(argv[1])
    os.set_inheritable(status_fd, False)  # never reaches the payload
    try:
        undumpable()  # before the handoff (and its job key) is read
    except OSError as exc:
        print(f"sandbox-agent wrapper: {exc.strerror}: {os.strerror(exc.errno or 0)}",
              file=sys.stderr)  # fmt: skip
        return EXIT_BAD_HANDOFF
    children = Children()
    signal.signal(signal.SIGTERM, children.on_sigterm)  # from here on, never fatal
    # the payload may signal the wrapper (a container's pid 1 gets only the signals it
    # handles, and Python handles SIGINT): its own error must not become FAILED
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with os.fdopen(status_fd, "wb") as status:
        try:
            frame = handoff.read_frame(sys.stdin.buffer, "handoff")
        except handoff.FrameError as exc:
            print(f"sandbox-agent wrapper: {exc}", file=sys.stderr)
            return EXIT_BAD_HANDOFF
        if not frame.get("lifeline"):
            return run_job(frame, os.getcwd(), Reporter(status), children)
        _thread.start_new_thread(watch_lifeline, (sys.stdin.fileno(),))
        code = run_job(frame, os.getcwd(), Reporter(status), children)
    _FINISHED.append(code)  # the final state is out: the container ends when the agent says
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
