"""The modules the sandbox runs (runtime.plan.SHIPPED: the confine step, the JobWrapper and
its siblings; and the attack probe's files, as the selftest copies them into the work
directory) run on the node's own python3, which is older than the agent's: EL9's 3.9,
EL8's 3.6 (images.hostpython.OLDEST). Read for what an older Python lacks (vermin, and
the annotations Python evaluates); run on the fallbacks the JobWrapper takes where os
lacks posix_spawn, pidfd_open and waitstatus_to_exitcode; run for real in a sandbox
whose root is Debian 11, on its python3.9; and an older interpreter refused in one line.
"""

from __future__ import annotations

import ast
import builtins
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_agent.images import hostpython
from sandbox_agent.policy import compose, load_policy
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.runtime import apptainer, bwrap
from sandbox_agent.runtime.launch import bytecode
from sandbox_agent.runtime.plan import (
    SHIPPED,
    WRAPPER_STDIN_FILES,
    FixedHost,
    LaunchPlan,
    RealHost,
    Requirement,
    Unenforceable,
)
from sandbox_agent.selftest import probe_in_sandbox
from sandbox_agent.wrapper import confine, handoff, jobwrapper
from sandbox_agent.wrapper.probe import PROBE_DIR


def probe_shipped() -> list[Path]:
    """The probe's files as the selftest gives them to the sandbox: what its copy puts
    in a work directory (probe_in_sandbox._copy_probe), each the source it came from."""
    with tempfile.TemporaryDirectory() as where:
        probe_in_sandbox._copy_probe(Path(where), {})
        copied = sorted(p.name for p in (Path(where) / probe_in_sandbox.PROBE).iterdir())
    assert probe_in_sandbox.RUNNER in copied and probe_in_sandbox.CONFIG in copied
    modules = [PROBE_DIR / name for name in copied if name != probe_in_sandbox.CONFIG]
    assert all(path.suffix == ".py" and path.is_file() for path in modules), copied
    return modules


WRAPPER = sorted(Path(str(module.__file__)) for module in SHIPPED.values())
PROBE = probe_shipped()
CARRIED = sorted(WRAPPER + PROBE)
OLDEST = ".".join(map(str, hostpython.OLDEST))


# -- read: nothing newer than OLDEST ---------------------------------------------------


def test_vermin_finds_nothing_newer_than_the_oldest_python_in_what_the_sandbox_runs() -> None:
    """vermin on exactly the files the launcher carries in and the selftest copies: every
    module, function and syntax they use is in OLDEST (what a newer Python added is used
    behind a guard, marked ``# novm`` on its line)."""
    assert len(WRAPPER) == len(SHIPPED) >= 4
    assert len(PROBE) >= 10 and not set(PROBE) & set(WRAPPER)
    vermin = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())"]
    done = subprocess.run([*vermin, "--no-tips", f"-t={OLDEST}-",
                           "--violations", *map(str, CARRIED)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"^Minimum required versions: (.*)$", done.stdout, re.MULTILINE)
    assert found is not None, done.stdout
    versions = [tuple(map(int, v.split("."))) for v in re.findall(r"\b3\.\d+", found[1])]
    assert all(version <= hostpython.OLDEST for version in versions), done.stdout


def evaluated_annotations(tree: ast.Module) -> Iterator[ast.expr]:
    """The annotations Python evaluates when the module runs (without ``from __future__
    import annotations``): of every function's parameters and return, and of a variable
    at the module's or a class's level; never those in a function's body."""

    def walk(body: list[ast.stmt], in_function: bool) -> Iterator[ast.expr]:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                arguments = node.args
                for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                            arguments.vararg, arguments.kwarg]:  # fmt: skip
                    if arg is not None and arg.annotation is not None:
                        yield arg.annotation
                if node.returns is not None:
                    yield node.returns
                yield from walk(node.body, True)
            elif isinstance(node, ast.ClassDef):
                yield from walk(node.body, in_function)
            elif isinstance(node, ast.AnnAssign) and not in_function:
                yield node.annotation
            elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
                for block in ("body", "orelse", "finalbody"):
                    yield from walk(getattr(node, block, []), in_function)
                for handler in getattr(node, "handlers", []):
                    yield from walk(handler.body, in_function)

    yield from walk(tree.body, False)


@pytest.mark.parametrize("path", CARRIED, ids=lambda path: path.name)
def test_every_annotation_python_evaluates_is_a_string_or_a_plain_name(path: Path) -> None:
    """No ``from __future__ import annotations`` (3.7): Python 3.6 evaluates the
    annotations of every def, where ``list[str]`` (3.9), ``int | None`` (3.10) or a
    name imported for mypy only would raise. Each is a string, or the name of a
    builtin or of a class of the module. And the source parses as OLDEST's grammar."""
    source = path.read_text()
    tree = ast.parse(source, str(path), feature_version=hostpython.OLDEST)
    futures = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module == "__future__" for alias in node.names]  # fmt: skip
    assert futures == []
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    plain = classes | {name for name in dir(builtins) if isinstance(getattr(builtins, name), type)}
    found = list(evaluated_annotations(tree))
    assert found  # the walk sees them
    for annotation in found:
        shown = f"{path.name}:{annotation.lineno}: {ast.unparse(annotation)}"
        if isinstance(annotation, ast.Constant):
            assert isinstance(annotation.value, str) or annotation.value is None, shown
        else:
            assert isinstance(annotation, ast.Name) and annotation.id in plain, shown


# -- the JobWrapper's fallbacks, on this Python ----------------------------------------

PROBE = """
import json, os
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd")
             if os.path.exists("/proc/self/fd/" + fd))  # not listdir's own, closed by now
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines()
              if line.startswith(("SigBlk", "SigIgn", "SigCgt", "NoNewPrivs")))
print(json.dumps({"own_session": os.getsid(0) == os.getpid(), "fds": fds,
                  "stdin": os.readlink("/proc/self/fd/0"), "status": status}))
"""


@pytest.fixture
def wrapper_signals() -> Iterator[None]:
    """The dispositions the JobWrapper runs with: SIGTERM handled, SIGINT ignored (and
    SIGPIPE and SIGXFSZ ignored, as every Python has them)."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, lambda _number, _frame: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def spawned(tmp_path: Path, how: str, argv: list[str]) -> tuple[int, str]:
    """``argv`` started as the JobWrapper starts its payload, by posix_spawn or by the
    fork and exec of an older Python; its exit code and stdout."""
    out = tmp_path / f"{how}.out"
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    with out.open("wb") as stdout, (tmp_path / f"{how}.err").open("wb") as stderr:
        fds = (null, stdout.fileno(), stderr.fileno())
        try:
            if how == "posix_spawn":
                pid = jobwrapper._spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"}, fds)
            else:
                pid = jobwrapper.fork_exec(argv[0], argv, {"PATH": "/usr/bin:/bin"}, fds)
        finally:
            os.close(null)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.read_text()


# glibc's posix_spawn leaves its two internal signals (32 and 33, which threads use) ignored
# in the child; fork and exec leaves them at their default, as subprocess does. Neither is
# a signal the payload is ever sent: they are left out of the comparison.
GLIBC_INTERNAL = (1 << 31) | (1 << 32)


def signals(status: dict[str, str]) -> dict[str, int]:
    """The signal masks of /proc/PID/status lines, glibc's internal signals left out."""
    return {name: int(status[name], 16) & ~GLIBC_INTERNAL for name in ("SigBlk", "SigIgn")}


def inheritable() -> list[int]:
    """This process's descriptors that a program it starts inherits."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.get_inheritable(int(name)):
                found.append(int(name))
        except OSError:  # listdir's own, closed by now
            continue
    return sorted(found)


@pytest.mark.usefixtures("wrapper_signals")
def test_fork_and_exec_gives_the_payload_what_posix_spawn_gives(tmp_path: Path) -> None:
    """The same session, descriptors (0, 1 and 2 as given, an inheritable one passed on,
    a close-on-exec one not), signal mask and dispositions either way."""
    assert jobwrapper._POSIX_SPAWN  # this Python has it: the comparison is real
    kept_r, kept_w = os.pipe()
    os.set_inheritable(kept_w, True)
    try:
        passed = {0, 1, 2, *inheritable()}
        seen = {}
        for how in ("posix_spawn", "fork"):
            code, said = spawned(tmp_path, how, [sys.executable, "-I", "-S", "-c", PROBE])
            shown = json.loads(said)
            assert code == 0 and shown.pop("own_session") and shown.pop("stdin") == os.devnull
            assert kept_w in shown["fds"] and kept_r not in shown["fds"]
            assert set(shown["fds"]) == passed, how
            shown["status"].update(signals(shown["status"]))
            seen[how] = shown
    finally:
        os.close(kept_r)
        os.close(kept_w)
    assert seen["fork"] == seen["posix_spawn"]
    # the probe's Python ignores SIGPIPE and SIGXFSZ itself: see them in a program that
    # does not; SIGINT stays ignored, as a spawned program keeps it
    masks = {}
    for how in ("posix_spawn", "fork"):
        code, said = spawned(tmp_path, how, ["/bin/cat", "/proc/self/status"])
        masks[how] = signals(dict(line.split(":\t", 1) for line in said.splitlines()))
    assert masks["fork"] == masks["posix_spawn"]
    assert masks["fork"]["SigIgn"] & (1 << (signal.SIGINT - 1))
    assert not masks["fork"]["SigIgn"] & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1))
    assert masks["fork"]["SigBlk"] == 0  # the mask blocked across the fork is restored


@pytest.mark.parametrize("how", ["posix_spawn", "fork"])
def test_a_program_that_cannot_run_raises_as_posix_spawn_raises(tmp_path: Path,
                                                                 how: str) -> None:  # fmt: skip
    plain = tmp_path / "plain"
    plain.write_text("not a program\n")
    plain.chmod(stat.S_IRUSR | stat.S_IWUSR)
    before = zombies()
    for program, error in ((str(plain), PermissionError),
                           (str(tmp_path / "missing"), FileNotFoundError)):  # fmt: skip
        with pytest.raises(error) as raised:
            spawned(tmp_path, how, [program])
        assert raised.value.filename == program
    assert zombies() == before  # the child that could not exec was reaped


def zombies() -> set[int]:
    """This process's children that ended and were not reaped."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            found.add(int(entry.name))
    return found


def test_without_pidfd_a_wait_with_a_timeout_polls_and_reaps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(jobwrapper, "_PIDFD", False)
    with (tmp_path / "out").open("wb") as out:
        sleeper = jobwrapper.Child(["sleep", "60"], {"PATH": "/usr/bin:/bin"}, out, out)
        quick = jobwrapper.Child(["sh", "-c", "exit 3"], {"PATH": "/usr/bin:/bin"}, out, out)
    with pytest.raises(TimeoutError):
        sleeper.wait(0.05)
    os.kill(sleeper.pid, signal.SIGKILL)
    assert sleeper.wait(60) == -signal.SIGKILL
    assert quick.wait(60) == 3
    for child in (sleeper, quick):
        with pytest.raises(ChildProcessError):  # reaped by the wait
            os.waitpid(child.pid, os.WNOHANG)


def test_exit_codes_without_waitstatus_to_exitcode(monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = [0, 3 << 8, 255 << 8, signal.SIGKILL, signal.SIGSEGV | 0x80]  # 0x80: core
    expected = [os.waitstatus_to_exitcode(status) for status in statuses]
    assert expected == [0, 3, 255, -signal.SIGKILL, -signal.SIGSEGV]
    monkeypatch.delattr(os, "waitstatus_to_exitcode")
    assert [jobwrapper.exit_code(status) for status in statuses] == expected
    with pytest.raises(ValueError):
        jobwrapper.exit_code(0x137F)  # stopped by SIGSTOP: no exit code


# -- the refusal of an older interpreter -----------------------------------------------


@pytest.mark.parametrize("version", [(3, 5), (3, 5, 10), (2, 7), (3, 0)])
def test_an_interpreter_older_than_the_oldest_is_refused_in_one_line(
    version: tuple[int, ...],
) -> None:
    said = hostpython.too_old(version, "/opt/old/bin/python3")
    assert said is not None and "\n" not in said
    shown = ".".join(map(str, version[:2]))
    assert said.startswith(f"/opt/old/bin/python3 is Python {shown}: ")
    assert f"need Python {OLDEST} or later" in said
    assert said.endswith(f"(install python3 {OLDEST} or later as {hostpython.PYTHON})")


@pytest.mark.parametrize("version", [hostpython.OLDEST, (3, 6, 8), (3, 9), (3, 11), (4, 0)])
def test_the_oldest_and_newer_are_taken(version: tuple[int, ...]) -> None:
    assert hostpython.too_old(version) is None


def test_the_version_is_read_from_the_interpreter_and_refused(tmp_path: Path) -> None:
    """version() runs the program and reads its answer; an old one is refused by
    too_old, a broken one in one line too."""
    old = tmp_path / "python3"
    old.write_text("#!/bin/sh\necho 3 5\n")
    old.chmod(0o755)
    assert hostpython.version.__wrapped__(str(old)) == (3, 5)
    refusal = hostpython.too_old(hostpython.version.__wrapped__(str(old)), str(old))
    assert refusal is not None and refusal.startswith(f"{old} is Python 3.5: ")
    assert hostpython.version.__wrapped__(sys.executable) == sys.version_info[:2]
    old.write_text("#!/bin/sh\necho Python 2.7.18\n")
    with pytest.raises(hostpython.NoHostPython, match=f"^{re.escape(str(old))} did not say"):
        hostpython.version.__wrapped__(str(old))


def test_find_refuses_an_interpreter_older_than_the_oldest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """find() reads the version with its standard library: an old answer is refused
    there, with too_old's line (the interpreter's other facts are the real ones)."""
    real_run = hostpython.run_tool

    def old_answer(argv: list[str], **options: Any) -> subprocess.CompletedProcess[Any]:
        done = real_run(argv, **options)
        stdlib = done.stdout.split()[0]
        return subprocess.CompletedProcess(argv, 0, f"{stdlib}\n3.5\n", "")

    python = str(Path(sys.executable).resolve())
    assert hostpython.find.__wrapped__(python).command  # the real answer is taken
    monkeypatch.setattr(hostpython, "run_tool", old_answer)
    with pytest.raises(hostpython.NoHostPython) as refused:
        hostpython.find.__wrapped__(python)
    assert str(refused.value) == hostpython.too_old((3, 5), python)


# -- the sandbox's python3 run in place, with no find(): refused when older -------------

POLICIES = Path(__file__).resolve().parents[2] / "policies"
LINE = hostpython.too_old((3, 5), hostpython.PYTHON)
# A merged-/usr host, its /usr/bin/python3 the userland's (the sandbox runs it in place).
USERLAND = {"/usr": "dir", "/bin": "symlink:usr/bin", "/lib": "symlink:usr/lib",
            "/lib64": "symlink:usr/lib64", "/etc/ld.so.cache": "file",
            "/usr/bin/python3": "symlink:python3"}  # fmt: skip
IMAGE = "/cvmfs/images/el"  # a directory image, for Apptainer


def answering(version: tuple[int, int] | None, where: str = hostpython.PYTHON) -> FixedHost:
    """A host whose interpreter at ``where`` says it is ``version`` (None: cannot tell)."""
    return FixedHost({**USERLAND, IMAGE: "dir"}, versions={where: version} if version else {})


def policy(tmp_path: Path, text: str) -> EffectivePolicy:
    shutil.copytree(POLICIES, tmp_path, dirs_exist_ok=True)
    (tmp_path / "site.toml").write_text(text)
    return compose(load_policy("site", [tmp_path]))


LANDLOCK_OPTIONAL = 'extends = "default"\n'
# Apptainer's: an image, and no network (egress is bwrap's for now)
ON_IMAGE = 'extends = "default"\n[filesystem]\nimage = "{}"\n[network]\nmode = "none"\nallow = []\n'
LANDLOCK_REQUIRED = ('extends = "default"\n[optional]\n'
                     'requirements = ["namespaces.cgroup", "limits.workdir_size"]\n')  # fmt: skip


def landlock(plan: LaunchPlan) -> Requirement:
    return next(r for r in plan.requirements if r.key == "process.landlock")


@pytest.mark.parametrize(
    "text", [LANDLOCK_OPTIONAL, LANDLOCK_REQUIRED], ids=["optional", "required"]
)
def test_the_jobwrapper_on_the_hosts_older_python3_is_refused_in_too_olds_line(
    tmp_path: Path, text: str
) -> None:
    """bwrap on the host's userland: the JobWrapper runs on the host's /usr/bin/python3
    in place. An older one is refused whatever landlock is, in too_old's line."""
    effective = policy(tmp_path, text)
    with pytest.raises(Unenforceable) as refused:
        bwrap.render(effective, list(bwrap.WRAPPER_ARGV), workdir="/srv/w",
                     host=answering((3, 5)), wrapper=True)  # fmt: skip
    assert str(refused.value) == f"filesystem.image: {LINE}"
    assert LINE is not None and "\n" not in LINE


def test_a_command_on_the_hosts_older_python3_goes_without_the_confine_step(
    tmp_path: Path,
) -> None:
    """Without the JobWrapper (sandbox exec) only the confine step runs on it: landlock
    is then refused where required, and noted as not met where optional, in too_old's
    line, as where the sandbox has no python3 at all."""
    with pytest.raises(Unenforceable) as refused:
        bwrap.render(policy(tmp_path, LANDLOCK_REQUIRED), ["/bin/true"], workdir="/srv/w",
                     host=answering((3, 5)))  # fmt: skip
    assert str(refused.value) == f"process.landlock: {LINE}"
    plan = bwrap.render(policy(tmp_path, LANDLOCK_OPTIONAL), ["/bin/true"], workdir="/srv/w",
                        host=answering((3, 5)))  # fmt: skip
    assert bwrap.CONFINE_PATH not in plan.argv
    assert not landlock(plan).met and landlock(plan).how == LINE


@pytest.mark.parametrize(
    "version", [hostpython.OLDEST, (3, 9), None], ids=["3.6", "3.9", "unknown"]
)
@pytest.mark.parametrize(
    "text", [LANDLOCK_OPTIONAL, LANDLOCK_REQUIRED], ids=["optional", "required"]
)
def test_the_oldest_python3_and_newer_run_the_step_and_the_jobwrapper(
    tmp_path: Path, text: str, version: tuple[int, int] | None
) -> None:
    """OLDEST is taken; so is a python3 whose version cannot be read (what runs on it
    then fails in the sandbox, as it would without the check)."""
    effective = policy(tmp_path, text)
    for wrapper in (False, True):
        argv = list(bwrap.WRAPPER_ARGV) if wrapper else ["/bin/true"]
        plan = bwrap.render(effective, argv, workdir="/srv/w", host=answering(version),
                            wrapper=wrapper)  # fmt: skip
        assert bwrap.CONFINE_PATH in plan.argv and landlock(plan).met


def test_apptainer_refuses_a_directory_image_whose_python3_is_older(tmp_path: Path) -> None:
    """Without the JobWrapper, Apptainer runs the confine step (which loads the seccomp
    program) on the image's own python3: a directory image's, older than OLDEST as its
    name says, is refused; OLDEST is taken, and so is one that cannot be told."""
    effective = policy(tmp_path, ON_IMAGE.format(IMAGE))
    inside = IMAGE + hostpython.PYTHON
    with pytest.raises(Unenforceable) as refused:
        apptainer.render(effective, ["/bin/true"], workdir="/srv/w",
                         host=answering((3, 5), inside))  # fmt: skip
    line = hostpython.too_old((3, 5), f"the image's {hostpython.PYTHON}")
    assert str(refused.value) == f"filesystem.image: {line}"
    for version in (hostpython.OLDEST, None):
        plan = apptainer.render(effective, ["/bin/true"], workdir="/srv/w",
                                host=answering(version, inside))  # fmt: skip
        assert "--no-privs" in plan.argv
    # a host interpreter's answer is no image's: the image's own is asked for
    plan = apptainer.render(effective, ["/bin/true"], workdir="/srv/w", host=answering((3, 5)))
    assert "--no-privs" in plan.argv


def test_the_real_host_reads_an_images_python3_by_name_and_never_runs_it(
    tmp_path: Path,
) -> None:
    image = tmp_path / "image"
    (image / "usr" / "bin").mkdir(parents=True)
    (image / "etc" / "alternatives").mkdir(parents=True)
    ran = tmp_path / "ran"
    for name in ("python3.5", "python3.6"):
        program = image / "usr" / "bin" / name
        program.write_text(f"#!/bin/sh\ntouch {ran}\necho 3 5\n")
        program.chmod(0o755)
    python3 = image / "usr" / "bin" / "python3"
    python3.symlink_to("python3.5")
    host = RealHost()
    assert host.python_version(hostpython.PYTHON, root=str(image)) == (3, 5)
    python3.unlink()  # EL8's: through /etc/alternatives, links absolute inside the image
    python3.symlink_to("/etc/alternatives/python3")
    (image / "etc" / "alternatives" / "python3").symlink_to("/usr/bin/python3.6")
    assert host.python_version(hostpython.PYTHON, root=str(image)) == (3, 6)
    python3.unlink()
    shutil.copy(image / "usr" / "bin" / "python3.5", python3)  # a name that says nothing
    assert host.python_version(hostpython.PYTHON, root=str(image)) is None
    python3.unlink()
    python3.symlink_to("python3.5")
    effective = policy(tmp_path / "policies", ON_IMAGE.format(image))
    with pytest.raises(Unenforceable) as refused:
        apptainer.render(effective, ["/bin/true"], workdir="/srv/w", host=host)
    line = hostpython.too_old((3, 5), f"the image's {hostpython.PYTHON}")
    assert str(refused.value) == f"filesystem.image: {line}"
    assert not ran.exists()  # no program of the image ran on the host


def test_the_real_host_runs_its_own_python3_once_for_its_version(tmp_path: Path) -> None:
    assert RealHost().python_version(sys.executable) == sys.version_info[:2]
    assert RealHost().python_version(str(tmp_path / "missing")) is None


def test_the_selftest_refuses_the_hosts_older_python3_in_too_olds_line(tmp_path: Path) -> None:
    """On the host's userland the probe runs on its /usr/bin/python3 in place: an older
    one is refused before anything is planted; OLDEST is taken. In an image the probe
    runs on the carried interpreter, which find() refuses already."""
    shipped = load_policy("default", [POLICIES])
    old = answering((3, 5))
    with pytest.raises(probe_in_sandbox.SelftestError) as refused:
        probe_in_sandbox.run_probe(shipped, certs=tmp_path / "certs", credentials=[],
                                   work_area=tmp_path, home_tag="t", host=old)  # fmt: skip
    assert str(refused.value) == LINE
    assert list(tmp_path.iterdir()) == []  # nothing planted, no work directory made
    for version in (hostpython.OLDEST, None):
        got = probe_in_sandbox._interpreter(shipped, answering(version))
        assert got == [probe_in_sandbox.PYTHON]


# -- a real run on Debian 11's python3.9 -----------------------------------------------

# What the JobWrapper runs on where os is Python 3.6's or 3.7's: the script, with the
# functions 3.8 and 3.9 added taken out of os first.
OLD_OS = """import os, sys
for name in ("posix_spawn", "POSIX_SPAWN_DUP2", "pidfd_open", "waitstatus_to_exitcode"):
    delattr(os, name)
script = sys.argv[1]
sys.argv = sys.argv[1:]
with open(script, "rb") as file:
    code = compile(file.read(), script, "exec")
exec(code, {"__name__": "__main__", "__file__": script, "__package__": None,
            "__builtins__": __builtins__})
"""
AGENT = "/run/agent"  # the agent's files, read-only
WORK = "/run/work"  # the job's work directory
FILES = "/run/lib"  # where --files-from-stdin puts the JobWrapper's files
PAYLOAD = """echo "hello $1"
grep NoNewPrivs /proc/self/status
echo to stderr >&2
exit "$1"
"""


def old_tree() -> Path:
    from engine_support import old_python_tree

    tree = old_python_tree()
    if isinstance(tree, str):
        pytest.skip(tree)
    return tree


def agent_directory(where: Path) -> Path:
    """The agent's files as bwrap's launcher gives them: the confine step, and the
    JobWrapper with its siblings and their bytecode for the agent's own Python."""
    where.mkdir()
    for name, kind in WRAPPER_STDIN_FILES:
        source = Path(kind.source.module_file).read_bytes()
        target = where / name
        target.parent.mkdir(exist_ok=True)
        module = os.path.basename(kind.source.module_file)
        target.write_bytes(bytecode(module, source) if kind.is_bytecode else source)
    shutil.copy(str(confine.__file__), where / "confine.py")
    (where / "old_os.py").write_text(OLD_OS)
    return where


def wrapper_files() -> bytes:
    """What an engine's confine step reads first on its stdin (launch.stdin_files)."""
    files = []
    for name, kind in WRAPPER_STDIN_FILES:
        source = Path(kind.source.module_file).read_bytes()
        module = os.path.basename(kind.source.module_file)
        files.append((name, bytecode(module, source) if kind.is_bytecode else source))
    return confine.files_frame(files)


def handoff_frame(code: int) -> bytes:
    return handoff.encode("handoff", {
        "job_id": 7, "resubmission": 0, "user": "alice", "site": "ALICE::Old",
        "spec": {"executable": "/bin/sh", "arguments": ["-c", PAYLOAD, "payload", str(code)],
                 "input_files": [], "outputs": ["out.zip:stdout,stderr"],
                 "output_errors": ["errors.zip:stdout"], "variables": {},
                 "validation": ["/bin/sh", "-c", "grep -q '^hello 0$' stdout"]},
        "token": {"certificate": "CERT\n", "key": "JOB-KEY\n", "chain": []},
        "environment": {"PATH": "/usr/bin:/bin"}, "limits": {"wall_time": 60},
    })  # fmt: skip


def statuses(data: bytes) -> list[dict[str, Any]]:
    stream = io.BytesIO(data)
    found = []
    while stream.tell() < len(data):
        found.append(handoff.read_frame(stream, "status"))
    return found


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")
@pytest.mark.skipif(confine.abi() == 0, reason="landlock is unavailable on this kernel")
@pytest.mark.parametrize("code", [0, 3], ids=["done", "failed"])
@pytest.mark.parametrize("how", ["exec", "in-process", "old-os"])
def test_the_confine_step_and_the_jobwrapper_run_on_debian_11s_python_3_9(
    tmp_path: Path, how: str, code: int
) -> None:
    """bwrap with Debian 11's tree as the root: its /usr/bin/python3 (3.9) runs the
    confine step, which confines (landlock, no_new_privs) and says so, then the
    JobWrapper: exec'd as bwrap's runtime does it, in the step's interpreter from
    files read on stdin as the container engines' does, or exec'd with os stripped
    of what 3.8 and 3.9 added (its fork and exec, its polling wait). The job reaches
    its final state with the payload's exit code, output and archive."""
    tree = old_tree()
    version = subprocess.run(["bwrap", "--ro-bind", str(tree), "/", "--proc", "/proc", "--dev",
                              "/dev", "/usr/bin/python3", "-c", "import sys; print(sys.version)"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert version.stdout.startswith("3.9."), version.stderr  # the interpreter below
    agent = agent_directory(tmp_path / "agent")
    work = tmp_path / "work"
    work.mkdir()
    confirm_r, confirm_w = os.pipe()
    step = ["/usr/bin/python3", "-I", "-S", f"{AGENT}/confine.py", "--writable", WORK,
            "--confirm-fd", str(confirm_w), "--clearenv", "--env=PATH=/usr/bin:/bin"]  # fmt: skip
    data = handoff_frame(code)
    if how == "in-process":
        step += ["--files-from-stdin", FILES, "--in-process", "--",
                 "/usr/bin/python3", "-I", "-S", f"{FILES}/jobwrapper.py"]  # fmt: skip
        data = wrapper_files() + data
    elif how == "old-os":
        step += ["--", "/usr/bin/python3", "-I", "-S", f"{AGENT}/old_os.py",
                 f"{AGENT}/jobwrapper.py"]  # fmt: skip
    else:
        step += ["--", "/usr/bin/python3", "-I", "-S", f"{AGENT}/jobwrapper.py"]
    argv = ["bwrap", "--ro-bind", str(tree), "/", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/run", "--ro-bind", str(agent), AGENT, "--bind", str(work), WORK,
            "--dir", FILES, "--tmpfs", "/tmp", "--chdir", WORK, "--unshare-pid",
            "--unshare-net", "--unshare-ipc", "--unshare-uts", "--cap-drop", "ALL",
            "--die-with-parent", "--clearenv", *step, "--status-fd", "1"]  # fmt: skip
    try:
        done = subprocess.run(argv, input=data, capture_output=True, timeout=120,
                              pass_fds=(confirm_w,))  # fmt: skip
    finally:
        os.close(confirm_w)
    with os.fdopen(confirm_r, "rb") as pipe:
        confirmed = pipe.read().decode()
    stderr = done.stderr.decode()
    assert confirmed == f"confined: landlock ABI {confine.abi()}\n", stderr
    frames = statuses(done.stdout)
    assert [f["state"] for f in frames] == [
        "STARTED",
        "RUNNING",
        "SAVING",
        "DONE" if code == 0 else "ERROR_E",
    ], stderr
    assert frames[-1]["exit_code"] == code
    assert done.returncode == code, stderr
    said = (work / "stdout").read_text()
    assert said == f"hello {code}\nNoNewPrivs:\t1\n"
    assert (work / "stderr").read_text() == "to stderr\n"
    archive = work / ("out.zip" if code == 0 else "errors.zip")
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        assert zipped.read("stdout").decode() == said
    assert names == (["stderr", "stdout"] if code == 0 else ["stdout"])
    assert "Traceback" not in stderr
