"""Every key a site policy may set: its type, its builtin default, and what it means.

The table is the schema: loading validates against it, ``docs/policy-reference.md`` is
checked against it, and a key missing from every file of a policy takes the builtin
default, which is always the restrictive choice (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Kind(Enum):
    CHOICE = "one of the listed words"
    BOOL = "true or false"
    INT = "a whole number"
    SIZE = 'a size such as "2GB" (or a number of bytes)'
    SECONDS = "a number of seconds"
    PATH = "an absolute path"
    PATHS = "a list of absolute paths"
    NAMES = "a list of names"
    MAPPING = 'a table of NAME = "value"'
    TMPFS = 'a list of { path = "/abs", size = "256MB" }'
    STRING = "a string"
    DESTINATIONS = 'a list of "host:port", "address[:port]" or "network/prefix[:port]"'


# Lists that a child policy may extend with `key = { append = [...] }` instead of
# replacing them with a plain array.
LIST_KINDS = (Kind.PATHS, Kind.NAMES, Kind.TMPFS, Kind.DESTINATIONS)

NAMESPACES = ("user", "pid", "ipc", "uts", "net", "mount", "cgroup")
REQUIREMENT = ("required", "optional", "off")
LIMITS = {
    # name: (kind, builtin default, builtin maximum, JDL key that requests it)
    "cpu_cores": (Kind.INT, 1, 1, "CPUCores"),
    "memory": (Kind.SIZE, 2 * 1024**3, 2 * 1024**3, "MemorySize"),
    "swap": (Kind.SIZE, 0, 0, None),
    "pids": (Kind.INT, 256, 256, None),
    "wall_time": (Kind.SECONDS, 3600, 3600, "TTL"),
    "workdir_size": (Kind.SIZE, 1024**3, 1024**3, "WorkDirectorySize"),
}
ENFORCEMENT = ("kernel", "monitored")


@dataclass(frozen=True)
class Field:
    path: str
    kind: Kind
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    def describe_type(self) -> str:
        if self.kind is Kind.CHOICE:
            return "one of " + ", ".join(f'"{c}"' for c in self.choices)
        return str(self.kind.value)


def _fields() -> dict[str, Field]:
    out: list[Field] = [
        Field("description", Kind.STRING, "", "What this policy is for, in a sentence."),
    ]
    for ns in NAMESPACES:
        out.append(
            Field(
                f"namespaces.{ns}",
                Kind.CHOICE,
                "required",
                f"The {ns} namespace: required (fail closed when the host cannot make it), "
                "optional (used when possible; the audit record says when not), or off.",
                REQUIREMENT,
            )
        )
    out += [
        Field(
            "filesystem.image",
            Kind.STRING,
            "host",
            '"host": the host\'s userland (filesystem.host_userland), read-only; the absolute '
            "path of an image (a directory, a squashfs file or a SIF file: docs/images.md), "
            'the site default when a job asks for none; or "docker://REFERENCE", an OCI '
            "image (Apptainer, Docker, Podman).",
        ),
        Field(
            "images.roots",
            Kind.PATHS,
            (),
            'Roots under which a JDL may name its own image (Image = "/cvmfs/..."); with none '
            "a job cannot choose an image by path.",
        ),
        Field(
            "images.platforms",
            Kind.MAPPING,
            (),
            'Platforms a JDL may ask for (Platform = "el9-x86_64"), each with the image it '
            "runs on.",
        ),
        Field(
            "images.require_pin",
            Kind.BOOL,
            False,
            "Run jobs only on pinned images: an image (the site's or a job's) with no pin in "
            "images.pins is refused.",
        ),
        Field(
            "images.pins",
            Kind.MAPPING,
            (),
            'Image paths and the digest each must have ("sha256:..."; `image pin PATH` prints '
            "the line), or docker:// images and their id in the engine's store; a job on an "
            "image whose digest differs does not run.",
        ),
        Field(
            "filesystem.host_userland",
            Kind.PATHS,
            (),
            'Host paths bound read-only when filesystem.image is "host": the userland the '
            "payload runs on. With an image they are left out: the image brings its own.",
        ),
        Field(
            "filesystem.workdir",
            Kind.PATH,
            "/workdir",
            "Where the job's work directory appears inside; the only writable bind.",
        ),
        Field(
            "filesystem.read_only",
            Kind.PATHS,
            (),
            "Host paths bound read-only at the same place inside, whatever the image.",
        ),
        Field(
            "filesystem.writable",
            Kind.PATHS,
            (),
            "Host paths bound writable besides the work directory (lint warns on each).",
        ),
        Field(
            "filesystem.jdl_read_only_roots",
            Kind.PATHS,
            (),
            "Roots under which a JDL may ask for extra read-only binds (ReadOnlyBinds).",
        ),
        Field(
            "filesystem.required",
            Kind.PATHS,
            (),
            "Host paths this node must have (CVMFS repositories, GPU devices): one missing "
            "makes the node unhealthy, and no job starts here until it is back.",
        ),
        Field(
            "filesystem.deny",
            Kind.PATHS,
            (),
            "Paths no bind may reach: none may be at, under or above one of these.",
        ),
        Field("filesystem.tmpfs", Kind.TMPFS, (), "Private tmpfs mounts with their sizes."),
        Field(
            "filesystem.proc",
            Kind.CHOICE,
            "private",
            "private: a new /proc for the sandbox's PID namespace; off: no /proc.",
            ("private", "off"),
        ),
        Field(
            "filesystem.dev",
            Kind.CHOICE,
            "minimal",
            "minimal: null, zero, full, random, urandom, tty, a private pts and shm; off.",
            ("minimal", "off"),
        ),
        Field(
            "devices.gpu",
            Kind.CHOICE,
            "none",
            "none; nvidia: the NVIDIA device nodes and driver libraries (Apptainer --nv, "
            "Docker --gpus all); assigned: only the GPU nodes in devices.paths, as the pilot "
            "sets it under a batch system that assigned the slot's GPUs.",
            ("none", "nvidia", "assigned"),
        ),
        Field(
            "devices.paths",
            Kind.PATHS,
            (),
            "Host device nodes bound into the sandbox (lint warns on each).",
        ),
        Field(
            "process.uid",
            Kind.INT,
            1000,
            "The user id the payload runs as, inside.",
            minimum=1,
            maximum=2**31 - 2,
        ),
        Field(
            "process.gid",
            Kind.INT,
            1000,
            "The group id the payload runs as, inside.",
            minimum=1,
            maximum=2**31 - 2,
        ),
        Field(
            "process.capabilities",
            Kind.NAMES,
            (),
            "Capabilities the payload keeps (none by default; lint errs on each).",
        ),
        Field(
            "process.no_new_privs",
            Kind.BOOL,
            True,
            "PR_SET_NO_NEW_PRIVS: setuid and file capabilities grant nothing.",
        ),
        Field(
            "process.seccomp",
            Kind.STRING,
            "seccomp/default.json",
            "The system-call profile (OCI JSON), relative to the directory of the policy file "
            "that sets it (the builtin: the shipped policies' directory).",
        ),
        Field(
            "process.new_session",
            Kind.BOOL,
            True,
            "A new session: no controlling terminal, so no TIOCSTI into it.",
        ),
        Field(
            "process.die_with_parent", Kind.BOOL, True, "The sandbox is killed when the agent dies."
        ),
        Field(
            "process.landlock",
            Kind.CHOICE,
            "required",
            "Landlock: restrict writes to the work directory and tmpfs, under the mount "
            "namespace as a second layer.",
            REQUIREMENT,
        ),
        Field(
            "process.environment.allow",
            Kind.NAMES,
            (),
            "Variables of the agent's environment passed through (names only).",
        ),
        Field("process.environment.set", Kind.MAPPING, (), "Variables set to fixed values."),
    ]
    rlimits = {"core": 0, "nofile": 1024, "stack": 8 * 1024**2, "fsize": 1024**3}
    for name, value in rlimits.items():
        kind = Kind.INT if name in ("core", "nofile") else Kind.SIZE
        out.append(
            Field(
                f"process.rlimits.{name}",
                kind,
                value,
                f"RLIMIT_{name.upper()} of the payload.",
                minimum=0,
                maximum=1 << 20 if name == "nofile" else 1 << 50,  # nofile: the kernel's nr_open
            )
        )
    for name, (kind, default, maximum, jdl) in LIMITS.items():
        asked = f" A JDL asks with {jdl}." if jdl else ""
        out += [
            Field(
                f"limits.{name}.default",
                kind,
                default,
                f"The {name.replace('_', ' ')} a job gets when it asks for none.{asked}",
                minimum=0,
            ),
            Field(
                f"limits.{name}.max",
                kind,
                maximum,
                f"The most {name.replace('_', ' ')} any job may have; more is refused.",
                minimum=0,
            ),
            Field(
                f"limits.{name}.enforcement",
                Kind.CHOICE,
                "kernel",
                "kernel: the job's cgroup enforces it (workdir_size: the work directory is a "
                "filesystem of that size); monitored: the agent measures and kills.",
                ENFORCEMENT,
            ),
        ]
    out.append(
        Field(
            "limits.memory_per_core",
            Kind.BOOL,
            False,
            "true: limits.memory's default and max are per core, multiplied by the job's "
            "cpu_cores (CPUCores = 8 with 2 GB per core gets 16 GB; a MemorySize asked is "
            "the job's whole).",
        )
    )
    out += [
        Field("outputs.max_file", Kind.SIZE, 1024**3,
              "The most one kept output may hold, counted by its apparent size (a sparse "
              "file counts whole); a larger one is refused.", minimum=1),
        Field("outputs.max_total", Kind.SIZE, 4 * 1024**3,
              "The most all of a job's kept outputs may hold together (apparent sizes), "
              "and never more than the job's workdir_size.", minimum=1),
        Field("outputs.max_log", Kind.SIZE, 16 * 1024**2,
              "The most of each of stdout and stderr that is kept; the rest is cut, and "
              "the cut is recorded as a problem of the job.", minimum=1),
        Field("disk.reserve", Kind.SIZE, 256 * 1024**2,
              "Free space the agent keeps for its own state (queue, outputs, audit records) "
              "on its home's and its work area's filesystems: a job is not started, and "
              "outputs are not kept, where that would eat into it.", minimum=0),
        Field("network.mode", Kind.CHOICE, "none",
              "none: a network namespace with loopback only. egress: a network namespace "
              "of the job's own whose TCP connections and DNS queries go through the "
              "agent, which lets through what network.allow names and never the node "
              "itself (its addresses, loopback among them), link-local or metadata "
              "addresses (docs/network.md). host: the host's network, the node's own "
              "services and the cloud metadata address included (lint warns).",
              ("none", "egress", "host")),
        Field("network.allow", Kind.DESTINATIONS, (),
              "In egress mode, where a job may connect: host names (resolved by the agent "
              "when each job starts), addresses and networks, each with a port or for "
              'every port ("xrootd.example.org:1094", "10.1.0.0/16", "192.0.2.7"); IPv4 '
              "only, for now. Empty: nowhere but DNS. A JDL cannot add to it."),
        Field("network.deny", Kind.DESTINATIONS, (),
              "In egress mode, what stays closed even inside network.allow, in the same "
              "form. The node's own addresses, loopback, link-local and metadata addresses "
              "are closed whatever either list says."),
        Field("network.proxy", Kind.STRING, "",
              'The site\'s HTTP proxy (squid), "http://HOST:PORT": given to the job as '
              "http_proxy, https_proxy, HTTP_PROXY and HTTPS_PROXY, and in egress mode "
              "reachable whatever network.allow says. Empty: none."),
        Field("optional.requirements", Kind.NAMES, (),
              "Requirements allowed to be unenforceable on a host (by key, such as "
              '"process.landlock" or "limits.swap"); anything else fails closed.'),
    ]  # fmt: skip
    return {f.path: f for f in out}


FIELDS = _fields()
TOP_LEVEL = ("extends",)  # keys about the file itself, not the sandbox
