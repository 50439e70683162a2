"""The landlock confine step, run for real exactly as the launcher runs it.

``python3 -I -S -c <source> --writable DIR ... -- COMMAND`` in a child process; every
refusal is checked against a control showing the same action works unconfined. The
tests run as root, where permissions stop nothing: what is refused, landlock refused.
"""

from __future__ import annotations

import ast
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from sandbox_agent import hostfacts
from sandbox_agent.wrapper import confine

SOURCE = Path(confine.__file__).read_text()
ABI = confine.abi()
SYSTEM_PYTHON = "/usr/bin/python3"
# The payload's own probes: a stdlib-only interpreter that writes no bytecode.
PAYLOAD_PYTHON = [SYSTEM_PYTHON if Path(SYSTEM_PYTHON).exists() else sys.executable, "-I", "-B"]
PREFIX = "sandbox-agent confine: "

pytestmark = pytest.mark.skipif(ABI == 0, reason="landlock is unavailable on this kernel")


def _interpreters() -> list[str]:
    found = [sys.executable]
    if (
        Path(SYSTEM_PYTHON).exists()
        and Path(SYSTEM_PYTHON).resolve() != Path(sys.executable).resolve()
    ):
        found.append(SYSTEM_PYTHON)
    return found


def needs_abi(version: int, what: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        version > ABI, reason=f"{what} needs landlock ABI {version}; this kernel has {ABI}"
    )


@pytest.fixture(params=_interpreters(), ids=lambda path: "system" if "/usr/bin" in path else "venv")
def python(request: pytest.FixtureRequest) -> str:
    """The interpreter that runs the confine source (the sandbox's own, in production)."""
    return str(request.param)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(work, outside): the writable directory and a sibling holding a victim file."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("original\n")
    (outside / "empty").mkdir()
    return work, outside


def run(
    python: str,
    command: list[str],
    *,
    writable: Sequence[Path | str] = (),
    options: Sequence[str] = (),
    confined: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` through the confine step, or bare (the control) when not confined."""
    argv = list(command)
    if confined:
        flags = [arg for path in writable for arg in ("--writable", str(path))]
        argv = [python, "-I", "-S", "-c", SOURCE, *flags, *options, "--", *command]
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env={**base, **(env or {})}
    )


def shell(
    python: str, script: str, work: Path, outside: Path, *, confined: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {"WORK": str(work), "OUT": str(outside)}
    return run(python, ["/bin/sh", "-c", script], writable=[work], confined=confined, env=env)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under ``root``: its mode and, for a regular file, its content."""
    found: dict[str, tuple[int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        regular = path.is_file() and not path.is_symlink()
        found[str(path.relative_to(root))] = (mode, path.read_bytes() if regular else b"")
    return found


def probe(code: str) -> list[str]:
    """A payload that runs ``code`` and prints "ok" or the errno name it failed with."""
    wrapped = (
        "import errno, os, signal, socket, sys\n"
        f"try:\n    {code}\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno]); sys.exit(1)\n"
        "print('ok')"
    )
    return [*PAYLOAD_PYTHON, "-c", wrapped]


def assert_one_line(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), result.stderr
    assert "Traceback" not in result.stderr


# ---- filesystem: what stays allowed ----------------------------------------------------

INSIDE = """
set -e
cd "$WORK"
echo one > f; echo two >> f; : > f; echo three > f
truncate -s 1 f
mkdir d; rmdir d; mkdir d
mv f g
ln g h; ln -s g s; mkfifo p; rm h s p
if [ "$(id -u)" = 0 ]; then mknod null c 1 3; rm null; fi
cat g
"""


def test_writing_inside_the_writable_dir_works(python: str, dirs: tuple[Path, Path]) -> None:
    work, outside = dirs
    result = shell(python, INSIDE, work, outside)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "t"
    assert sorted(p.name for p in work.iterdir()) == ["d", "g"]


@needs_abi(2, "renaming and linking across directories (REFER)")
def test_reparenting_within_the_writable_dir_works(python: str, dirs: tuple[Path, Path]) -> None:
    work, outside = dirs
    script = 'set -e; cd "$WORK"; mkdir a b; echo x > a/f; mv a/f b/f; ln b/f a/g; mv b a/b'
    result = shell(python, script, work, outside)
    assert result.returncode == 0, result.stderr
    assert (work / "a" / "b" / "f").read_text() == "x\n"
    assert (work / "a" / "g").read_text() == "x\n"


def test_reading_and_listing_outside_works(python: str, dirs: tuple[Path, Path]) -> None:
    work, outside = dirs
    result = shell(python, 'cat "$OUT/victim"; ls "$OUT"; head -c4 /etc/passwd', work, outside)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "original\nempty\nvictim\nroot"


def test_a_writable_file_is_writable_but_not_its_directory(
    python: str, dirs: tuple[Path, Path]
) -> None:
    """A --writable file gets the file rights only: it may change, its siblings may not."""
    _, outside = dirs
    victim = outside / "victim"
    script = 'echo changed > "$OUT/victim"; echo new > "$OUT/sibling"'
    env = {"OUT": str(outside)}
    result = run(python, ["/bin/sh", "-c", script], writable=[victim], env=env)
    assert result.returncode != 0
    assert "sibling: Permission denied" in result.stderr
    assert victim.read_text() == "changed\n"
    assert not (outside / "sibling").exists()


def test_the_payload_runs_with_no_new_privs(python: str, dirs: tuple[Path, Path]) -> None:
    work, outside = dirs
    result = shell(python, "grep NoNewPrivs /proc/self/status", work, outside)
    assert result.stdout.split() == ["NoNewPrivs:", "1"]


# ---- filesystem: what is refused, each with its control --------------------------------

# (id, shell script, the shell's complaint, minimum ABI)
REFUSED = [
    ("create", 'echo new > "$OUT/new"', "Permission denied", 1),
    ("overwrite", 'echo new > "$OUT/victim"', "Permission denied", 1),
    ("append", 'echo more >> "$OUT/victim"', "Permission denied", 1),
    ("truncate-open", 'truncate -s 0 "$OUT/victim"', "Permission denied", 1),
    ("remove", 'rm "$OUT/victim"', "Permission denied", 1),
    ("rmdir", 'rmdir "$OUT/empty"', "Permission denied", 1),
    ("rename-outside", 'mv "$OUT/victim" "$OUT/renamed"', "Permission denied", 1),
    ("rename-out-of", 'mv -T "$OUT/victim" "$WORK/stolen"', "Permission denied", 1),
    ("rename-into", 'echo x > "$WORK/mine" && mv "$WORK/mine" "$OUT/mine"', "Permission denied", 1),
    ("mkdir", 'mkdir "$OUT/dir"', "Permission denied", 1),
    ("mkfifo", 'mkfifo "$OUT/fifo"', "Permission denied", 1),
    ("symlink", 'ln -s /etc/passwd "$OUT/sym"', "Permission denied", 1),
    ("hardlink-outside", 'ln "$OUT/victim" "$OUT/link"', "Permission denied", 1),
    # REFER: a hard link into the writable dir would make the outside file writable there
    (
        "hardlink-into-work",
        'ln "$OUT/victim" "$WORK/link" && echo pwned > "$WORK/link"',
        "Invalid cross-device link",
        2,
    ),
    ("mknod", 'mknod "$OUT/null" c 1 3', "Permission denied", 1),
]


@pytest.mark.parametrize(("script", "complaint", "version"), [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])  # fmt: skip
def test_changing_outside_is_refused(
    python: str, dirs: tuple[Path, Path], script: str, complaint: str, version: int
) -> None:
    if version > ABI:
        pytest.skip(f"needs landlock ABI {version}; this kernel has {ABI}")
    if "mknod" in script and os.geteuid() != 0:
        pytest.skip("mknod of a device needs root even unconfined")
    work, outside = dirs
    before = snapshot(outside)
    refused = shell(python, script, work, outside)
    assert refused.returncode != 0, refused.stderr
    assert complaint in refused.stderr
    assert snapshot(outside) == before
    assert not (work / "link").exists() and not (work / "stolen").exists()
    # the control: the same script, unconfined, changes the outside directory
    control = shell(python, script, work, outside, confined=False)
    assert control.returncode == 0, control.stderr
    assert snapshot(outside) != before


@needs_abi(3, "truncate(2) on a path (TRUNCATE)")
def test_truncate_by_path_is_refused(dirs: tuple[Path, Path]) -> None:
    """truncate(2) opens nothing, so only the TRUNCATE right stops it."""
    work, outside = dirs
    victim = outside / "victim"
    command = probe(f"os.truncate({str(victim)!r}, 0)")
    refused = run(sys.executable, command, writable=[work])
    assert refused.stdout.strip() == "EACCES"
    assert victim.read_text() == "original\n"
    control = run(sys.executable, command, confined=False)
    assert control.stdout.strip() == "ok"
    assert victim.read_text() == ""


def test_binding_a_unix_socket_outside_is_refused(dirs: tuple[Path, Path]) -> None:
    work, outside = dirs
    path = outside / "sock"
    command = probe(f"socket.socket(socket.AF_UNIX).bind({str(path)!r})")
    assert run(sys.executable, command, writable=[work]).stdout.strip() == "EACCES"
    assert not path.exists()
    assert run(sys.executable, command, confined=False).stdout.strip() == "ok"
    assert path.is_socket()


# ---- network: --no-tcp -----------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[int]:
    """A real TCP listener on the loopback; yields its port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@needs_abi(4, "--no-tcp")
def test_no_tcp_refuses_connect(dirs: tuple[Path, Path], listener: int) -> None:
    work, _ = dirs
    command = probe(f"socket.create_connection(('127.0.0.1', {listener}), timeout=5)")
    refused = run(sys.executable, command, writable=[work], options=["--no-tcp"])
    assert refused.stdout.strip() == "EACCES", refused.stderr
    # controls: confined without --no-tcp, and not confined at all
    assert run(sys.executable, command, writable=[work]).stdout.strip() == "ok"
    assert run(sys.executable, command, confined=False).stdout.strip() == "ok"


@needs_abi(4, "--no-tcp")
def test_no_tcp_refuses_bind(dirs: tuple[Path, Path]) -> None:
    work, _ = dirs
    command = probe("socket.socket().bind(('127.0.0.1', 0))")
    refused = run(sys.executable, command, writable=[work], options=["--no-tcp"])
    assert refused.stdout.strip() == "EACCES", refused.stderr
    assert run(sys.executable, command, writable=[work]).stdout.strip() == "ok"


@pytest.mark.skipif(ABI >= 4, reason=f"this kernel has landlock ABI {ABI}, which can do --no-tcp")
def test_no_tcp_fails_closed_without_abi_4(dirs: tuple[Path, Path]) -> None:
    work, _ = dirs
    result = run(sys.executable, ["/bin/true"], writable=[work], options=["--no-tcp"])
    assert_one_line(result, 125)


# ---- scopes (ABI 6): abstract unix sockets and signals ---------------------------------


@needs_abi(6, "the abstract unix socket scope")
def test_abstract_unix_socket_outside_the_domain_is_refused(dirs: tuple[Path, Path]) -> None:
    work, _ = dirs
    name = f"\0sandbox-agent-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen(8)
    try:
        command = probe(f"socket.socket(socket.AF_UNIX).connect({name!r})")
        refused = run(sys.executable, command, writable=[work])
        assert refused.stdout.strip() == "EPERM", refused.stderr
        assert run(sys.executable, command, confined=False).stdout.strip() == "ok"
    finally:
        server.close()


@needs_abi(6, "the abstract unix socket scope")
def test_abstract_unix_socket_inside_the_domain_works(dirs: tuple[Path, Path]) -> None:
    work, _ = dirs
    name = f"\0sandbox-agent-test-{uuid.uuid4().hex}"
    code = (
        f"s = socket.socket(socket.AF_UNIX); s.bind({name!r}); s.listen(1); "
        f"socket.socket(socket.AF_UNIX).connect({name!r})"
    )
    assert run(sys.executable, probe(code), writable=[work]).stdout.strip() == "ok"


@needs_abi(6, "the signal scope")
def test_signalling_a_process_outside_the_domain_is_refused(dirs: tuple[Path, Path]) -> None:
    work, _ = dirs
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        command = probe(f"os.kill({sleeper.pid}, signal.SIGTERM)")
        refused = run(sys.executable, command, writable=[work])
        assert refused.stdout.strip() == "EPERM", refused.stderr
        assert sleeper.poll() is None
        # the control: unconfined, the same kill works
        assert run(sys.executable, command, confined=False).stdout.strip() == "ok"
        assert sleeper.wait(timeout=10) == -signal.SIGTERM
    finally:
        sleeper.kill()
        sleeper.wait()


def test_signalling_its_own_children_works(dirs: tuple[Path, Path]) -> None:
    work, outside = dirs
    result = shell(sys.executable, 'sleep 60 & kill "$!"; wait "$!"; echo "$?"', work, outside)
    assert result.stdout.strip() == str(128 + signal.SIGTERM), result.stderr


# ---- failing closed --------------------------------------------------------------------


def test_a_missing_writable_path_fails_closed(python: str, dirs: tuple[Path, Path]) -> None:
    work, outside = dirs
    marker = work / "marker"
    script = 'echo ran > "$WORK/marker"'
    env = {"WORK": str(work)}
    missing = outside / "no-such-dir"
    result = run(python, ["/bin/sh", "-c", script], writable=[work, missing], env=env)
    assert_one_line(result, 125)
    assert str(missing) in result.stderr and "No such file or directory" in result.stderr
    assert not marker.exists()
    # the control: with only paths that exist, the command runs and writes the marker
    assert run(python, ["/bin/sh", "-c", script], writable=[work], env=env).returncode == 0
    assert marker.read_text() == "ran\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--writable", "/tmp", "/bin/true"],  # no --
        ["--writable", "/tmp", "--"],  # no command
        ["--writable"],  # no path
        ["--bogus", "--", "/bin/true"],
    ],
    ids=["no-separator", "no-command", "no-path", "unknown-option"],
)
def test_bad_arguments_fail_closed(python: str, argv: list[str]) -> None:
    result = subprocess.run(
        [python, "-I", "-S", "-c", SOURCE, *argv], capture_output=True, text=True, timeout=30
    )
    assert_one_line(result, 125)


def test_a_command_not_found_exits_127(python: str, dirs: tuple[Path, Path]) -> None:
    work, _ = dirs
    result = run(python, ["no-such-command-here"], writable=[work])
    assert_one_line(result, 127)
    assert "no-such-command-here" in result.stderr


def test_a_command_not_executable_exits_126(python: str, dirs: tuple[Path, Path]) -> None:
    work, _ = dirs
    script = work / "script"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    result = run(python, [str(script)], writable=[work])
    assert_one_line(result, 126)
    assert "Permission denied" in result.stderr


def test_exit_status_and_output_of_the_command_pass_through(
    python: str, dirs: tuple[Path, Path]
) -> None:
    work, outside = dirs
    result = shell(python, 'echo "$0" out; echo err >&2; exit 7', work, outside)
    assert (result.returncode, result.stdout, result.stderr) == (7, "/bin/sh out\n", "err\n")


def test_abi_agrees_with_the_host_facts() -> None:
    """abi() reads the same kernel answer as ``policy explain`` shows."""
    assert hostfacts.landlock().detail == f"landlock ABI {ABI}"


def test_the_source_reads_as_python_3_7() -> None:
    """Payload images carry older interpreters; the source must parse there (a newer
    construct raises SyntaxError here)."""
    tree = ast.parse(SOURCE, feature_version=(3, 7))
    assert any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed")
@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason=f"no {SYSTEM_PYTHON}")
def test_an_unprivileged_user_is_confined_too() -> None:
    """Pilots are not root: without CAP_SYS_ADMIN, landlock needs no_new_privs first."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    top = Path(tempfile.mkdtemp(prefix="sandbox-agent-confine-"))
    try:
        work, outside = top / "work", top / "outside"
        work.mkdir()
        outside.mkdir()
        for path in (top, work, outside):
            os.chown(path, 65534, 65534)
        script = f'echo in > "{work}/f" && cat "{work}/f"; echo out > "{outside}/f"'
        confined = [SYSTEM_PYTHON, "-I", "-S", "-c", SOURCE, "--writable", str(work), "--"]
        command = ["/bin/sh", "-c", script]
        result = subprocess.run([*nobody, *confined, *command], capture_output=True, text=True,
                                timeout=30)  # fmt: skip
        assert result.stdout == "in\n"
        assert "Permission denied" in result.stderr
        assert not (outside / "f").exists()
        # the control: the same user, unconfined, may write its own outside directory
        subprocess.run([*nobody, *command], check=True, timeout=30)
        assert (outside / "f").read_text() == "out\n"
    finally:
        shutil.rmtree(top)


def test_variables_given_with_env_reach_the_command_only(python: str, tmp_path: Path) -> None:
    argv = [python, "-I", "-S", "-c", SOURCE, "--writable", str(tmp_path),
            "--env=GREETING=a=b", "--env=PATH=/usr/bin:/bin", "--",
            "sh", "-c", "echo $GREETING; echo $PATH"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, env={}, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["a=b", "/usr/bin:/bin"]
    bad = subprocess.run([*argv[:7], "--env=NOVALUE", "--", "true"], capture_output=True,
                         text=True, env={}, check=False)  # fmt: skip
    assert bad.returncode == 125
    assert bad.stderr.startswith("sandbox-agent confine: --env needs NAME=VALUE")


UNSHARE_USER = (
    "import ctypes, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "print(libc.unshare(0x10000000), ctypes.get_errno())\n"  # CLONE_NEWUSER
)


def test_seccomp_program_is_loaded_for_runtimes_that_load_none(tmp_path: Path) -> None:
    # What Apptainer as a user needs: the agent's compiled program, loaded by the step.
    from sandbox_agent.seccomp.compile import compile_profile

    root = Path(__file__).resolve().parents[2]
    program = tmp_path / "seccomp.bpf"
    program.write_bytes(compile_profile(root / "policies" / "seccomp" / "default.json").bpf)
    confirm_r, confirm_w = os.pipe()
    base = [sys.executable, "-I", "-S", "-c", SOURCE, "--confirm-fd", str(confirm_w)]
    payload = ["--", *PAYLOAD_PYTHON, "-c", UNSHARE_USER]
    filtered = subprocess.run([*base, "--seccomp", str(program), *payload], capture_output=True,
                              text=True, pass_fds=(confirm_w,), check=False)  # fmt: skip
    os.close(confirm_w)
    assert filtered.returncode == 0, filtered.stderr
    assert filtered.stdout.split() == ["-1", str(errno.EPERM)]  # denied by the filter
    assert os.read(confirm_r, 100) == b"confined: seccomp\n"
    os.close(confirm_r)
    control = subprocess.run([*base[:5], *payload], capture_output=True, text=True, check=False)
    assert control.stdout.split()[0] == "0"  # the same call works without it (as root)


@pytest.mark.parametrize("content", [b"", b"1234567", b"\0" * 8 * 5000])
def test_a_broken_seccomp_program_fails_closed(tmp_path: Path, content: bytes) -> None:
    program = tmp_path / "seccomp.bpf"
    program.write_bytes(content)
    marker = tmp_path / "ran"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SOURCE, "--seccomp", str(program), "--",
         "touch", str(marker)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 125
    assert result.stderr.startswith("sandbox-agent confine: ")
    assert "is not a seccomp program" in result.stderr
    assert not marker.exists()
