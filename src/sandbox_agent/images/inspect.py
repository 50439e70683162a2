"""What an image is, for a site deciding whether to offer it (``image inspect``): its
kind, size and digest, the OS release and architecture found inside. Whether the
pilot could run jobs on it here is runtime.imagecheck's, which renders its sandbox.

Paths inside the image are resolved inside it: an image's /etc/os-release is often a
symlink to ../usr/lib/os-release, and an absolute link must lead into the image, not
to the host's file of the same name.
"""

from __future__ import annotations

import os
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

from sandbox_agent.images.tree import resolve

# ELF e_machine -> the name `uname -m` gives
MACHINES = {3: "i686", 62: "x86_64", 40: "arm", 183: "aarch64", 21: "ppc64le", 243: "riscv64",
            22: "s390x"}  # fmt: skip
PROGRAMS = ("bin/sh", "usr/bin/env", "bin/busybox", "bin/bash")  # whose ELF says the arch
_RELEASE_FILES = ("etc/os-release", "usr/lib/os-release")
_OLD_RELEASE_FILES = ("etc/redhat-release", "etc/system-release", "etc/debian_version")


@dataclass
class Inspection:
    path: str
    kind: str = ""
    size: int = 0
    digest: str = ""
    entries: int = 0
    os_release: str = ""  # PRETTY_NAME, or an older release file's first line
    architecture: str = ""
    usable: bool = False
    policy: str = "default"  # the policy it was tried with
    problems: list[str] = field(default_factory=list)  # why the pilot could not use it

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def release(root: str) -> str:
    for name in _RELEASE_FILES:
        text = _read(root, name)
        if text is not None:
            fields = dict(_assignment(line) for line in text.splitlines() if "=" in line)
            return fields.get("PRETTY_NAME") or fields.get("NAME") or "an os-release without a name"
    for name in _OLD_RELEASE_FILES:
        text = _read(root, name)
        if text is not None and text.strip():
            return text.strip().splitlines()[0][:120]
    return ""


def _assignment(line: str) -> tuple[str, str]:
    key, _, value = line.partition("=")
    return key.strip(), value.strip().strip("\"'")[:120]


def _read(root: str, name: str) -> str | None:
    where = resolve(root, name)
    if where is None or not os.path.isfile(where):
        return None
    try:
        with open(where, "rb") as file:
            return file.read(8192).decode(errors="replace")
    except OSError:
        return None


def architecture(root: str) -> str:
    for name in PROGRAMS:
        where = resolve(root, name)
        if where is None or not os.path.isfile(where):
            continue
        try:
            with open(where, "rb") as file:
                head = file.read(20)
        except OSError:
            continue
        if len(head) == 20 and head[:4] == b"\x7fELF":
            order = "<" if head[5] == 1 else ">"
            machine = struct.unpack_from(order + "H", head, 18)[0]
            return MACHINES.get(machine, f"ELF machine {machine}")
    return ""
