"""The JobWrapper's interpreter inside an image: the host's own python3, bound
read-only at a private path and started through the host's own dynamic loader.

An image's userland may have no Python (a busybox root), an old one (SL6's 2.6), or
one of another build. The JobWrapper and the landlock step are the agent's code, so
they run on the agent's side of the contract: the host's /usr/bin/python3 (the same
interpreter they run on with the host's userland), its standard library, the shared
libraries it and its extension modules need, and the loader, all bound read-only under
``/.sandbox-agent/python``. The loader is run as a program with ``--library-path``: the
search path is the loader's own, not an environment variable, so the payload the
wrapper then execs loads the image's libraries, not ours. This is what Apptainer does
with its own helpers.

The confine step and the JobWrapper run on that interpreter from Python 3.6 on (EL8's
python3; EL9's is 3.9): OLDEST. An older one is refused with one line (too_old), here
and wherever the agent learns the sandbox interpreter's version.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import struct
import subprocess
from dataclasses import dataclass

from sandbox_agent.toolrun import run_tool

PYTHON = "/usr/bin/python3"  # the host interpreter the sandbox runs the wrapper on
PRIVATE = "/.sandbox-agent/python"  # where the sandbox sees it
# The oldest Python the modules the sandbox runs (runtime.plan.SHIPPED) run on: EL8's.
OLDEST = (3, 6)
_PT_INTERP = 3
_LISTED = re.compile(r"=>\s+(/\S+)")


@dataclass(frozen=True)
class HostPython:
    binds: tuple[tuple[str, str], ...]  # (host path, path inside), read-only
    command: tuple[str, ...]  # the argv prefix that starts the interpreter inside


class NoHostPython(RuntimeError):
    """The host's python3 cannot be carried into an image: one line saying why."""


@functools.cache
def find(python: str = PYTHON) -> HostPython:
    """The binds and command for ``python``; NoHostPython when it cannot be used."""
    real = os.path.realpath(python)
    if not os.path.isfile(real):
        raise NoHostPython(f"{python} is not here; the wrapper runs on it in every image "
                           "(install python3)")  # fmt: skip
    loader = interpreter(real)
    if loader is None:
        raise NoHostPython(f"{real} names no dynamic loader; a static python3 is not supported")
    try:
        done = run_tool(
            [real, "-I", "-S", "-c", "import sys, sysconfig; "
             "print(sysconfig.get_path('stdlib')); print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=True, env={},
        )  # fmt: skip
        stdlib, version = done.stdout.split()
        numbers = tuple(int(part) for part in version.split("."))
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        raise NoHostPython(f"{real} did not say where its standard library is: {error}") from None
    old = too_old(numbers, python)
    if old is not None:
        raise NoHostPython(old)
    libraries: dict[str, str] = {}
    if not _needs(loader, real):
        raise NoHostPython(f"{loader} --list {real} named no libraries; cannot carry it")
    for elf in [real, *sorted(glob.glob(os.path.join(stdlib, "lib-dynload", "*.so")))]:
        for path in _needs(loader, elf):
            libraries.setdefault(os.path.basename(path), os.path.realpath(path))
    so = f"{PRIVATE}/so"
    inside_loader = f"{so}/{os.path.basename(loader)}"
    binds = [(real, f"{PRIVATE}/bin/python3"), (stdlib, f"{PRIVATE}/lib/python{version}"),
             (os.path.realpath(loader), inside_loader)]  # fmt: skip
    binds += [(host, f"{so}/{name}") for name, host in sorted(libraries.items())]
    command = (inside_loader, "--library-path", so, f"{PRIVATE}/bin/python3")
    return HostPython(tuple(binds), command)


def too_old(version: tuple[int, ...], python: str = PYTHON) -> str | None:
    """Why ``python``, whose version is ``version`` (sys.version_info's first numbers),
    cannot run the confine step and the JobWrapper, in one line with the fix; None
    when it is OLDEST or newer."""
    if tuple(version[:2]) >= OLDEST:
        return None
    shown, oldest = ".".join(map(str, version[:2])), ".".join(map(str, OLDEST))
    return (f"{python} is Python {shown}: the confine step and the JobWrapper run on it "
            f"and need Python {oldest} or later (install python3 {oldest} or later as "
            f"{PYTHON})")  # fmt: skip


@functools.cache
def version(python: str = PYTHON) -> tuple[int, int]:
    """``python``'s (major, minor), read by running it once; NoHostPython when it does
    not run or does not say. For what runs the interpreter in place (the host's
    userland) and so needs no find()."""
    try:
        done = run_tool([python, "-I", "-S", "-c", "import sys; print(*sys.version_info[:2])"],
                        capture_output=True, text=True, timeout=30, check=True, env={})  # fmt: skip
        major, minor = (int(part) for part in done.stdout.split())
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        raise NoHostPython(f"{python} did not say its version: {error}") from None
    return major, minor


def interpreter(path: str) -> str | None:
    """The ELF file's PT_INTERP (its dynamic loader), or None for a static program or
    a file that is not a 64-bit little-endian ELF."""
    try:
        with open(path, "rb") as file:
            head = file.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            (phoff,) = struct.unpack_from("<Q", head, 0x20)
            size, count = struct.unpack_from("<HH", head, 0x36)
            file.seek(phoff)
            table = file.read(size * count)
            for index in range(count):
                (kind,) = struct.unpack_from("<I", table, index * size)
                if kind == _PT_INTERP:
                    (offset,) = struct.unpack_from("<Q", table, index * size + 8)
                    (length,) = struct.unpack_from("<Q", table, index * size + 32)
                    file.seek(offset)
                    return file.read(length).rstrip(b"\x00").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def _needs(loader: str, elf: str) -> list[str]:
    """The shared libraries ``elf`` loads, as the host's loader resolves them."""
    try:
        done = subprocess.run([loader, "--list", elf], capture_output=True, text=True,
                              timeout=30, check=False, env={})  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return _LISTED.findall(done.stdout)
