"""Confine the payload with landlock, inside the sandbox, just before it runs.

A second layer under the mount namespace: whatever the mounts allow, the payload may
change the filesystem only beneath the ``--writable`` paths (the work directory, the
tmpfs mounts); reading and executing stay allowed everywhere. From landlock ABI 6 it
also cannot connect to abstract unix sockets or signal processes outside its own
domain, and with ``--no-tcp`` (ABI 4) it can neither bind nor connect a TCP socket.
With ``--seccomp FILE`` it also loads the agent's compiled seccomp program, for runtimes
that apply none themselves (Apptainer as a user). With ``--confirm-fd FD`` it writes
what it applied ("confined: landlock ABI 7, seccomp") there, closes it, and only then
runs the command. With ``--files-from-stdin DIR`` it first reads the files the
command needs from its stdin (the agent's JobWrapper and its siblings, for a container
engine that takes no descriptors: a bind of the agent's directory would show its host
path in the mount table) into DIR, a tmpfs of its own, leaving the rest of stdin
(the handoff) unread. With ``--clearenv`` the command gets the ``--env`` variables alone,
none of the step's own (a container engine's HOSTNAME, TERM, container=). With
``--in-process`` a command of the form ``PYTHON -I -S SCRIPT
ARGS...`` (the JobWrapper) runs in this interpreter instead of a new one, saving the
second interpreter's start.

The launcher passes this file into the sandbox on a descriptor (bwrap's
--ro-bind-data) and runs it with the sandbox's own interpreter::

    /usr/bin/python3 -I -S /.sandbox-agent/confine.py --writable /workdir ...
        --env=PATH=... -- CMD ARGS...

with an empty environment: the command's variables come as ``--env`` arguments and
reach the command only, never the loader of this interpreter (LD_PRELOAD there would
run code before landlock). It uses the standard library only, and runs on the node's
python3 from 3.6 on (EL8's): no ``from __future__ import annotations``, so every
annotation Python evaluates is a string.
It fails closed: when a restriction cannot be applied it prints one line and exits 125
without running the command; 127 or 126 when the command cannot be executed, as a
shell does.
"""

import ctypes
import os
import stat
import struct
import sys

TYPE_CHECKING = False  # no typing at run time: the step's start-up is every job's
if TYPE_CHECKING:
    from types import CodeType

# The generic system call table, which x86_64, aarch64 and every other architecture but
# alpha share for calls added since Linux 5.1.
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights (linux/landlock.h), by the ABI version that introduced them.
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_ABI1 = (1 << 13) - 1  # bits 0-12: EXECUTE .. MAKE_SYM
_FS_REFER = 1 << 13  # ABI 2: link or rename into another directory
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_FS_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
# A rule on a non-directory may hold only these (the kernel says EINVAL otherwise).
_FS_FILE = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV

_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1  # ABI 6

EXIT_CONFINE = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

_USAGE = (
    "usage: confine [--writable PATH]... [--no-tcp] [--seccomp FILE] [--env=NAME=VALUE]... "
    "[--confirm-fd FD] [--files-from-stdin DIR] [--clearenv] [--in-process] -- COMMAND [ARG]..."
)
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_INSTRUCTION = 8  # bytes of one struct sock_filter


class ConfineError(Exception):
    """A restriction that could not be applied: the command must not run."""


def _call(what: str, function: str, *args: "int | bytes | None") -> int:
    """Call a libc function; a negative result raises ConfineError with the errno text."""
    try:
        entry = getattr(ctypes.CDLL(None, use_errno=True), function)
    except (OSError, AttributeError):
        raise ConfineError(f"{what}: no {function}() in the C library") from None
    entry.restype = ctypes.c_long
    # Both are variadic: pass integers as full longs, not as ctypes' default int.
    result = int(entry(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args)))
    if result < 0:
        raise ConfineError(f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def _version() -> int:
    return _call(
        "landlock is unavailable: landlock_create_ruleset",
        "syscall",
        _SYS_LANDLOCK_CREATE_RULESET,
        None,
        0,
        _CREATE_RULESET_VERSION,
    )


def abi() -> int:
    """The kernel's landlock ABI version, 0 when it has none or it is disabled."""
    try:
        return _version()
    except ConfineError:
        return 0


def _allow(ruleset: int, path: str, access: int) -> None:
    """Allow ``access`` beneath ``path`` (the file itself, if it is not a directory)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as error:
        raise ConfineError(f"cannot open {path}: {error.strerror}") from None
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FS_FILE
        rule = struct.pack("=Qi", access, fd)  # landlock_path_beneath_attr is packed
        _call(
            f"landlock_add_rule({path})",
            "syscall",
            _SYS_LANDLOCK_ADD_RULE,
            ruleset,
            _RULE_PATH_BENEATH,
            rule,
            0,
        )
    finally:
        os.close(fd)


def confine(writable: "list[str]", *, no_tcp: bool = False) -> int:
    """Restrict this process (and what it executes); return the ABI version used."""
    version = _version()
    # Handle every right this ABI knows: a right left unhandled is a right allowed.
    fs = _FS_ABI1
    if version >= 2:
        fs |= _FS_REFER
    if version >= 3:
        fs |= _FS_TRUNCATE
    if version >= 5:
        fs |= _FS_IOCTL_DEV
    net = 0
    if no_tcp:
        if version < 4:
            raise ConfineError(f"--no-tcp needs landlock ABI 4 (Linux 6.7); this is {version}")
        net = _NET_BIND_TCP | _NET_CONNECT_TCP  # handled with no port rule: all denied
    # landlock_ruleset_attr grew a u64 per feature; pass exactly the fields this ABI has.
    if version >= 6:
        attr = struct.pack("=QQQ", fs, net, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    elif version >= 4:
        attr = struct.pack("=QQ", fs, net)
    else:
        attr = struct.pack("=Q", fs)
    ruleset = _call(
        "landlock_create_ruleset", "syscall", _SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0
    )
    try:
        _allow(ruleset, "/", _FS_READ)
        for path in writable:
            _allow(ruleset, path, fs)
        # Required before restrict_self without CAP_SYS_ADMIN; harmless if already set.
        _call("prctl(PR_SET_NO_NEW_PRIVS)", "prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        # Applies to this thread only; this interpreter runs no other, and exec follows.
        _call("landlock_restrict_self", "syscall", _SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
    return version


class Options:
    """What the arguments after the program name ask for."""

    def __init__(self) -> None:
        self.writable: list[str] = []
        self.no_tcp = False
        self.variables: dict[str, str] = {}  # the command's environment
        self.confirm_fd = -1  # where to say what was applied, before the command runs
        self.seccomp = ""  # a BPF program to load after landlock
        self.in_process = False  # run a Python command here rather than exec it
        self.clearenv = False  # the command gets the --env variables alone
        self.files_to = ""  # where the files read from stdin go (--files-from-stdin)
        self.command: list[str] = []


def load_seccomp(path: str) -> None:
    """Load the BPF program in ``path`` (compiled by the agent from the policy's profile)
    as this process's seccomp filter, for runtimes that apply none themselves."""
    try:
        with open(path, "rb") as file:
            program = file.read(_BPF_INSTRUCTION * 65536)
    except OSError as error:
        raise ConfineError(f"cannot read the seccomp program {path}: {error.strerror}") from None
    count = len(program) // _BPF_INSTRUCTION
    if not program or len(program) % _BPF_INSTRUCTION or count > 4096:
        raise ConfineError(f"{path} is not a seccomp program ({len(program)} bytes)")
    buffer = ctypes.create_string_buffer(program, len(program))

    class SockFprog(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(count, ctypes.cast(buffer, ctypes.c_void_p))
    _call("prctl(PR_SET_NO_NEW_PRIVS)", "prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.prctl(ctypes.c_long(_PR_SET_SECCOMP), ctypes.c_long(_SECCOMP_MODE_FILTER),
                        ctypes.byref(fprog), ctypes.c_long(0), ctypes.c_long(0))  # fmt: skip
    if result != 0:
        raise ConfineError(f"prctl(PR_SET_SECCOMP): {os.strerror(ctypes.get_errno())}")


FILES_MAGIC = b"sandbox-agent-files\n"
FILES_CAP = 8 << 20  # bytes of files in all: the JobWrapper's are about 200 KiB


def files_frame(files: "list[tuple[str, bytes]]") -> bytes:
    """What the agent writes before the handoff for --files-from-stdin: the magic, then
    each file as a 2-byte name length, the name, a 4-byte size and the bytes; a name
    length of 0 ends it."""
    out = [FILES_MAGIC]
    for name, data in files:
        encoded = name.encode()
        out += [len(encoded).to_bytes(2, "big"), encoded, len(data).to_bytes(4, "big"), data]
    out.append((0).to_bytes(2, "big"))
    return b"".join(out)


def receive_files(fd: int, directory: str) -> None:
    """Read a files frame from ``fd``, byte for byte (what follows stays unread), into
    ``directory`` (empty, ours): each file read-only, then the directories too.
    A name is a plain file name, or one in __pycache__/."""

    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = os.read(fd, count - len(data))
            if not chunk:
                raise ConfineError("stdin ended inside the agent's files")
            data += chunk
        return data

    if exactly(len(FILES_MAGIC)) != FILES_MAGIC:
        raise ConfineError("stdin does not start with the agent's files")
    total = 0
    made = [directory]
    while True:
        size = int.from_bytes(exactly(2), "big")
        if size == 0:
            break
        name = exactly(size).decode("ascii", "replace")
        parts = name.split("/")
        if (len(parts) > 2 or (len(parts) == 2 and parts[0] != "__pycache__")
                or any(not part or part.startswith(".") for part in parts)):  # fmt: skip
            raise ConfineError(f"the agent's files name {name[:60]!r}")
        length = int.from_bytes(exactly(4), "big")
        total += length
        if total > FILES_CAP:
            raise ConfineError(f"the agent's files are over {FILES_CAP} bytes")
        data = exactly(length)
        if len(parts) == 2 and not os.path.isdir(os.path.join(directory, parts[0])):
            os.mkdir(os.path.join(directory, parts[0]), 0o700)
            made.append(os.path.join(directory, parts[0]))
        path = os.path.join(directory, name)
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
        finally:
            os.close(out)
    for path in reversed(made):  # read-only once whole
        os.chmod(path, 0o500)


def _parse(argv: "list[str]") -> Options:
    options = Options()
    rest = iter(argv)
    for arg in rest:
        if arg == "--":
            options.command = list(rest)
            if not options.command:
                raise ConfineError(f"no command after --; {_USAGE}")
            return options
        if arg == "--no-tcp":
            options.no_tcp = True
        elif arg == "--in-process":
            options.in_process = True
        elif arg == "--clearenv":
            options.clearenv = True
        elif arg.startswith("--env="):
            name, equals, value = arg[len("--env=") :].partition("=")
            if not name or not equals:
                raise ConfineError(f"--env needs NAME=VALUE, got {arg!r}; {_USAGE}")
            options.variables[name] = value
        elif arg in ("--writable", "--confirm-fd", "--seccomp", "--files-from-stdin"):
            given = next(rest, None)
            if given is None:
                raise ConfineError(f"{arg} needs a value; {_USAGE}")
            if arg == "--writable":
                options.writable.append(given)
            elif arg == "--files-from-stdin":
                options.files_to = given
            elif arg == "--seccomp":
                options.seccomp = given
            elif given.isdigit():
                options.confirm_fd = int(given)
            else:
                raise ConfineError(f"--confirm-fd needs a descriptor number; {_USAGE}")
        else:
            raise ConfineError(f"unexpected argument {arg!r}; {_USAGE}")
    raise ConfineError(f"no -- before the command; {_USAGE}")


def _fail(code: int, message: str) -> int:
    # One line, whatever a path holds: the launcher relays it as the job's reason.
    print("sandbox-agent confine: " + message.replace("\n", "\\n"), file=sys.stderr)
    return code


def main(argv: "list[str]") -> int:
    """Confine, then exec the command; an exit code only when that cannot happen."""
    options = Options()
    try:
        options = _parse(argv)
        if options.files_to:  # before landlock, which would forbid writing them
            receive_files(0, options.files_to)
        applied = []
        if options.writable:
            applied.append(f"landlock ABI {confine(options.writable, no_tcp=options.no_tcp)}")
        if options.seccomp:  # last: the filter must still allow the landlock calls above
            load_seccomp(options.seccomp)
            applied.append("seccomp")
        if options.confirm_fd >= 0:  # the agent learns the payload runs confined
            os.write(options.confirm_fd, f"confined: {', '.join(applied)}\n".encode())
    except ConfineError as error:
        return _fail(EXIT_CONFINE, str(error))
    except OSError as error:  # unforeseen: still no command and no traceback
        return _fail(EXIT_CONFINE, f"{error.strerror or error}")
    finally:
        if options.confirm_fd > 2:  # never inherited by the command (stderr stays its own)
            try:  # noqa: SIM105 (contextlib costs milliseconds at every job's start)
                os.close(options.confirm_fd)
            except OSError:
                pass
    command = options.command
    # this step's own environment (empty under bwrap) plus the command's
    environment = (
        dict(options.variables) if options.clearenv else {**os.environ, **options.variables}
    )
    script = _python_script(command) if options.in_process else None
    if script is not None:
        return _run_here(script[0], script[1], environment)
    try:
        os.execvpe(command[0], command, environment)  # noqa: S606 (an argv list, no shell)
    except FileNotFoundError as error:
        return _fail(EXIT_NOT_FOUND, f"cannot run {command[0]}: {error.strerror}")
    except OSError as error:
        return _fail(EXIT_CANNOT_EXECUTE, f"cannot run {command[0]}: {error.strerror}")


def _python_script(command: "list[str]") -> "tuple[str, list[str]] | None":
    """The script and its arguments when ``command`` is this interpreter, run as this
    step is (directly, or through the loader inside an image), on a script."""
    words = command[3:] if len(command) > 3 and command[1] == "--library-path" else command
    if (len(words) >= 4 and os.path.realpath(words[0]) == os.path.realpath(sys.executable)
            and words[1:3] == ["-I", "-S"] and words[3].endswith(".py")):  # fmt: skip
        return words[3], words[4:]
    return None


def _cached_code(script: str) -> "CodeType | None":
    """The script's code from the .pyc the agent put beside it (hash-based, unchecked),
    or None when there is none this Python can read."""
    magic = getattr(sys.modules.get("_frozen_importlib_external"), "MAGIC_NUMBER", None)
    tag = sys.implementation.cache_tag
    if magic is None or tag is None:
        return None
    directory, name = os.path.split(script)
    cached = os.path.join(directory, "__pycache__", name[:-3] + "." + tag + ".pyc")
    try:
        with open(cached, "rb") as file:
            data = file.read()
    except OSError:
        return None
    if data[:4] != magic or data[4:8] != b"\x01\x00\x00\x00":
        return None
    import marshal

    try:
        # the agent's own file, in its private read-only directory: trusted as the source
        return marshal.loads(data[16:])  # type: ignore[no-any-return]  # noqa: S302
    except (EOFError, ValueError, TypeError):
        return None


def _run_here(script: str, args: "list[str]", environment: "dict[str, str]") -> int:
    """Run ``script`` as __main__ in this confined interpreter."""
    try:
        code = _cached_code(script)
        if code is None:
            with open(script, "rb") as file:
                code = compile(file.read(), script, "exec")
    except OSError as error:
        return _fail(EXIT_NOT_FOUND, f"cannot run {script}: {error}")
    os.environ.clear()
    os.environ.update(environment)
    sys.argv = [script, *args]
    main_globals = {"__name__": "__main__", "__file__": script, "__package__": None,
                    "__builtins__": __builtins__}  # fmt: skip
    exec(code, main_globals)  # noqa: S102 (the agent's own file, from its private directory)
    return 0


if __name__ == "__main__":  # also under `python3 -c <source>`, where argv[0] is "-c"
    sys.exit(main(sys.argv[1:]))
