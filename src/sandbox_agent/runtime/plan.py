"""What a runtime is given to run a job: the argv, the files beside it, and why.

A launch plan is data: rendering it needs no root and changes nothing, so reviewers
can read it (``policy render``) and tests can compare it exactly (an image is made
ready first, by images.prepare: hashed, and a single file mounted to list its top
level). Each requirement of the policy is listed with how this runtime meets it, or
why it cannot (then the job fails closed unless the site marked the requirement
optional).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import ModuleType
from typing import Any, Protocol

from sandbox_agent.images import hostpython, tree
from sandbox_agent.images.hostpython import HostPython
from sandbox_agent.limits import enforcement
from sandbox_agent.policy import gate
from sandbox_agent.policy.compose import EffectivePolicy

# the gate's words, where renderers (and older callers) import them
from sandbox_agent.policy.gate import Requirement as Requirement
from sandbox_agent.policy.gate import Requirements as Requirements
from sandbox_agent.policy.gate import Unenforceable as Unenforceable
from sandbox_agent.policy.gate import optional_keys as optional_keys
from sandbox_agent.policy.schema import LIMITS
from sandbox_agent.runtime import egressns
from sandbox_agent.wrapper import confine, handoff, jobwrapper, packaging


class HostView(Protocol):
    """The few facts about the host a renderer needs."""

    def kind(self, path: str) -> str:
        """'dir', 'file', 'missing', or 'symlink:<target>' (the link's own text)."""
        ...

    def landlock_abi(self) -> int:
        """The kernel's landlock ABI version; 0 without landlock."""
        ...

    def entries(self, directory: str) -> list[tuple[str, str]]:
        """(name, kind) of each entry of ``directory`` (an image's root), kinds as kind()."""
        ...

    def python(self) -> HostPython:
        """The host interpreter the wrapper runs on inside an image; NoHostPython."""
        ...

    def python_version(self, path: str, root: str | None = None) -> tuple[int, int] | None:
        """The (major, minor) of the interpreter the sandbox runs in place, without
        hostpython.find(): the host's own at ``path`` (its userland), read by running it
        once; or, with ``root``, the one at ``path`` inside the directory image at
        ``root``, read from the name it leads to (python3.6), never run (no program of
        an image runs on the host). None when that cannot be told."""
        ...

    def resolve(self, root: str, path: str) -> str | None:
        """The host path of ``path`` inside the image at ``root``, its symlinks followed
        inside the image; None when it leads nowhere."""
        ...

    def egress_unmet(self, user_namespace: bool) -> str | None:
        """Why the agent cannot plumb a job's network namespace for egress here (its
        tools are missing; an unprivileged agent needs the job's user namespace), or
        None. ``user_namespace``: whether the policy makes one."""
        ...

    def uid_ranges_unmet(self) -> str | None:
        """Why Podman as root cannot give a container its own host uids here
        (``--userns auto`` takes them from the user ``containers`` in /etc/subuid and
        /etc/subgid), or None."""
        ...


# An interpreter's file named for its version, as distributions name the one python3
# leads to (python3.6 on EL8, through /etc/alternatives; python3.9 on EL9 and Debian 11).
_VERSIONED = re.compile(r"python(\d+)\.(\d+)")

# What Podman's --userns auto needs (and make adds): the user and a range of 2^31 ids.
SUBORDINATE_USER = "containers"
SUBORDINATE_RANGE = "containers:2147483647:2147483648"


class RealHost:
    def entries(self, directory: str) -> list[tuple[str, str]]:
        return sorted((name, self.kind(os.path.join(directory, name)))
                      for name in os.listdir(directory))  # fmt: skip

    def python(self) -> HostPython:
        return hostpython.find()

    def python_version(self, path: str, root: str | None = None) -> tuple[int, int] | None:
        if root is not None:
            found = tree.resolve(root, path)
            named = _VERSIONED.fullmatch(os.path.basename(found)) if found else None
            return (int(named[1]), int(named[2])) if named else None
        try:
            return hostpython.version(path)
        except hostpython.NoHostPython:  # does not run: what runs on it fails, as without one
            return None

    def resolve(self, root: str, path: str) -> str | None:
        return tree.resolve(root, path)

    def landlock_abi(self) -> int:
        return confine.abi()

    def egress_unmet(self, user_namespace: bool) -> str | None:
        lacking = egressns.lacking()
        if lacking is not None:
            return lacking
        if not user_namespace and os.geteuid() != 0:
            return ("an unprivileged agent plumbs the job's network from the job's own user "
                    "namespace: namespaces.user must not be off")  # fmt: skip
        return None

    def uid_ranges_unmet(self) -> str | None:
        for name in ("/etc/subuid", "/etc/subgid"):
            try:
                with open(name) as file:
                    lines = file.read(1 << 20).splitlines()
            except OSError:
                lines = []
            mine = [line for line in lines if line.startswith(f"{SUBORDINATE_USER}:")]
            sizes = [line.split(":")[2] for line in mine if line.count(":") == 2]
            if not any(size.isdigit() and int(size) >= 65536 for size in sizes):
                return (f"{name} gives the user {SUBORDINATE_USER} no range of ids, from which "
                        f"Podman's --userns auto takes each container's: add "
                        f"{SUBORDINATE_RANGE} to /etc/subuid and /etc/subgid")  # fmt: skip
        return None

    def kind(self, path: str) -> str:
        try:
            if os.path.islink(path):
                return "symlink:" + os.readlink(path)
            if os.path.isdir(path):
                return "dir"
            return "file" if os.path.exists(path) else "missing"
        except OSError:
            return "missing"


@dataclass(frozen=True)
class FixedHost:
    """A host described by a table, for exact rendering tests."""

    table: dict[str, str]
    landlock: int = 6
    interpreter: HostPython | None = None
    egress: str | None = None  # why egress cannot be had here, or None
    uid_ranges: str | None = None  # why Podman's --userns auto cannot work here, or None
    # python_version's answers: by the interpreter's host path, or its image's root and
    # its path inside joined (root + path); unknown (None) for any other
    versions: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def egress_unmet(self, user_namespace: bool) -> str | None:
        return self.egress

    def uid_ranges_unmet(self) -> str | None:
        return self.uid_ranges

    def landlock_abi(self) -> int:
        return self.landlock

    def entries(self, directory: str) -> list[tuple[str, str]]:
        prefix = directory.rstrip("/") + "/"
        return sorted((path[len(prefix):], kind) for path, kind in self.table.items()
                      if path.startswith(prefix) and "/" not in path[len(prefix):])  # fmt: skip

    def resolve(self, root: str, path: str) -> str | None:
        inside = root.rstrip("/") + path
        return inside if inside in self.table else None

    def python(self) -> HostPython:
        if self.interpreter is None:
            raise hostpython.NoHostPython("this fixed host has no python3")
        return self.interpreter

    def python_version(self, path: str, root: str | None = None) -> tuple[int, int] | None:
        return self.versions.get(path if root is None else root.rstrip("/") + path)

    def kind(self, path: str) -> str:
        return self.table.get(path, "missing")


# Where argv names the launcher's private directory of agent files, until it exists.
AGENT_FILES = "<agent files>"

# Placeholder shown for a value taken from the agent's environment at launch, so a
# rendered plan never carries one of the agent's values.
FROM_AGENT = "<from the agent's environment>"


class Carried(StrEnum):
    """What the launcher gives the sandbox, on a descriptor or in the directory of agent
    files: the compiled seccomp program, a pipe the agent reads, or one of the modules
    that run inside (SHIPPED: their source, or their bytecode for the agent's Python)."""

    SECCOMP = "seccomp"  # the program compiled from the plan's profile
    INFO = "info"  # a pipe: bwrap's report of the namespaces it made
    CONFIRM = "confirm"  # a pipe: the confine step's word that landlock holds
    BLOCK = "block"  # a pipe the agent writes once the job's network is plumbed (egress)
    CONFINE = "confine"
    WRAPPER = "wrapper"
    HANDOFF = "handoff"
    PACKAGING = "packaging"
    WRAPPER_PYC = "wrapper.pyc"
    HANDOFF_PYC = "handoff.pyc"
    PACKAGING_PYC = "packaging.pyc"

    @property
    def is_pipe(self) -> bool:
        return self in (Carried.INFO, Carried.CONFIRM, Carried.BLOCK)

    @property
    def is_bytecode(self) -> bool:
        return self.value.endswith(".pyc")

    @property
    def source(self) -> Carried:
        """The module whose source this is, or whose bytecode."""
        return Carried(self.value.removesuffix(".pyc"))

    @property
    def module_file(self) -> str:
        """The file of the module this carries (SHIPPED)."""
        return str(SHIPPED[self.source].__file__)


# Every module the sandbox runs, written once: the confine step, the JobWrapper, the
# frames it speaks and its output packaging (all standard library only).
SHIPPED: Mapping[Carried, ModuleType] = {
    Carried.CONFINE: confine,
    Carried.WRAPPER: jobwrapper,
    Carried.HANDOFF: handoff,
    Carried.PACKAGING: packaging,
}
# Those the sandbox imports, or runs in the confine step's interpreter: they get a
# ready .pyc. The step itself runs as a script, which Python never caches.
COMPILED = frozenset({Carried.WRAPPER, Carried.HANDOFF, Carried.PACKAGING})
# The JobWrapper's files as the confine step receives them on its stdin, for runtimes
# that take no descriptors (--files-from-stdin): each module, and its bytecode for the
# agent's Python (the interpreter carried in).
WRAPPER_STDIN_FILES: tuple[tuple[str, Carried], ...] = tuple(
    (name, kind)
    for source in (Carried.WRAPPER, Carried.HANDOFF, Carried.PACKAGING)
    for name, kind in (
        (os.path.basename(source.module_file), source),
        (f"__pycache__/{os.path.basename(source.module_file)[:-3]}."
         f"{sys.implementation.cache_tag}.pyc", Carried(f"{source}.pyc")),
    )
    if kind is source or sys.implementation.cache_tag
)  # fmt: skip


class FdWord(str):
    """A descriptor number as a renderer writes it into argv: the word, and what the
    launcher puts on it. The launcher replaces exactly these words."""

    carries: Carried
    what: str

    def __new__(cls, number: int, carries: Carried, what: str) -> FdWord:
        word = super().__new__(cls, str(number))
        word.carries, word.what = carries, what
        return word


class SourceWord(str):
    """A placeholder in argv for the source text of a shipped module, which the launcher
    writes there (``python3 -c SOURCE``: an engine takes no descriptors, and a bind of
    the agent's files would name their host path in the sandbox's mount table)."""

    carries: Carried

    def __new__(cls, carries: Carried) -> SourceWord:
        word = super().__new__(cls, f"<the source of {os.path.basename(carries.module_file)}>")
        word.carries = carries
        return word


@dataclass(frozen=True)
class Descriptor:
    number: int  # as the plan's argv names it
    carries: Carried
    what: str  # for a reader of the plan
    at: int  # the index in argv of the word that names it


@dataclass(frozen=True)
class Limit:
    name: str  # as in limits.NAME
    value: int
    enforcement: str  # kernel (the job's cgroup) or monitored (the agent)


@dataclass(frozen=True)
class EgressPlan:
    """What the agent lets a job reach in egress mode (runtime/egress.rules_for makes
    the rules of it when the job starts: names are resolved then)."""

    allow: tuple[str, ...]
    deny: tuple[str, ...]
    proxy: str = ""


RLIMITS = ("core", "nofile", "stack", "fsize")


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the launcher, the session and the monitor need to run one sandbox,
    taken from one effective policy when the plan is rendered: nothing is read from a
    policy again afterwards."""

    runtime: str
    argv: tuple[str, ...]
    descriptors: tuple[Descriptor, ...] = ()
    # file name -> what the launcher writes there, in a private directory that argv
    # names as AGENT_FILES (runtimes that take no descriptors); ``files_at``: where
    agent_files: Mapping[str, Carried] = field(default_factory=dict)
    files_at: tuple[int, ...] = ()
    requirements: tuple[Requirement, ...] = ()
    seccomp_profile: str = ""  # the OCI JSON profile the plan enforces
    rlimits: tuple[tuple[str, int], ...] = ()  # set before exec (RLIMITS)
    new_session: bool = True  # no controlling terminal
    optional: frozenset[str] = frozenset()  # what may go unmet (gate.optional_keys)
    limits: tuple[Limit, ...] = ()
    needs_host: frozenset[str] = frozenset()  # what the policy asks of the kernel
    # egress: the session plumbs the job's network and runs its relay (the plan carries
    # a BLOCK pipe the sandbox waits on until then); None: no network to plumb
    egress: EgressPlan | None = None
    # Docker and Podman: the container's name (the session finds it by it, and removes
    # it at teardown); "" for runtimes the agent's process tree holds
    container: str = ""
    # the JobWrapper gets its handoff only once the session has found the container,
    # read its limits back and plumbed its network: until then nothing of the job runs
    waits_for_agent: bool = False
    # argv index -> the module whose source the launcher writes there (SourceWord)
    sources_at: tuple[tuple[int, Carried], ...] = ()
    # files the runtime's first process reads from its stdin before the handoff (the
    # confine step's --files-from-stdin), by name (__pycache__/NAME for bytecode)
    stdin_files: tuple[tuple[str, Carried], ...] = ()
    # the confine step says what it applied on the runtime's stderr, before the
    # JobWrapper runs (a runtime that passes no descriptor for it)
    confirm_on_stderr: bool = False

    def __post_init__(self) -> None:
        # every field the launcher reads comes from one policy (from_policy): a plan
        # made without it would run with no rlimits and no limits
        if len(self.rlimits) != len(RLIMITS) or len(self.limits) != len(LIMITS):
            raise ValueError("a launch plan needs its policy's rlimits and limits (from_policy)")

    @property
    def fds(self) -> dict[int, str]:
        """fd in argv -> what it carries, for a reader."""
        return {d.number: d.what for d in self.descriptors}

    @property
    def fd_contents(self) -> dict[int, Carried]:
        return {d.number: d.carries for d in self.descriptors}

    @property
    def carried(self) -> frozenset[str]:
        """Everything the plan gives the sandbox (the gate asks for the confine step),
        and "container" and "waits" where the agent holds a container (plan.container,
        plan.waits_for_agent)."""
        held = {"container"} if self.container else set()
        held |= {"waits"} if self.waits_for_agent else set()
        given = {*(kind for _, kind in self.sources_at), *(kind for _, kind in self.stdin_files)}
        return frozenset({*self.fd_contents.values(), *self.agent_files.values(), *held,
                          *given})  # fmt: skip

    def answers(
        self, found: Mapping[str, gate.Found] | None = None, *,
        held: frozenset[str] = frozenset(), where: str = "",
    ) -> list[gate.Answer]:  # fmt: skip
        """The gate's answer for each requirement: as rendered, or as a launch on this
        host would give it: ``found``, what its kernel provides (hostfacts.facts);
        ``held``, the limits a job's cgroup (and work disk) would hold here, and
        ``where`` that cgroup (hostfacts.held_limits, hostfacts.cgroup_where)."""
        if found is None:
            return gate.answers(self.requirements, self.carried, self.optional)
        limits = {a.key: a for a in enforcement.assign(self, held, where).answers}
        rest = [r for r in self.requirements if r.key not in limits]
        others = iter(gate.on_host(rest, self.carried, self.optional, found, self.needs_host))
        return [limits[r.key] if r.key in limits else next(others) for r in self.requirements]

    def limit(self, name: str) -> int:
        return self.limit_values[name]

    @property
    def limit_values(self) -> dict[str, int]:
        return {limit.name: limit.value for limit in self.limits}

    def enforcement(self, name: str) -> str:
        return next(limit.enforcement for limit in self.limits if limit.name == name)


# The keys a policy may ask of the host (hostfacts.facts answers each).
HOST_KEYS = (*gate.LEVELLED, "process.seccomp", "network.mode", *(f"limits.{n}" for n in LIMITS))


def from_policy(effective: EffectivePolicy) -> dict[str, Any]:
    """The plan's fields that come from the policy whatever the runtime."""
    return {
        "rlimits": tuple(effective.view.process.rlimits.items()),
        "new_session": effective.view.process.new_session,
        "optional": optional_keys(effective),
        "needs_host": frozenset(key for key in HOST_KEYS if gate.needs_host(effective, key)),
        "limits": tuple(
            Limit(name, limit.value, limit.enforcement)
            for name, limit in effective.view.limits.items()
        ),
    }


def agent_limits(effective: EffectivePolicy, need: Requirements, skip: Sequence[str] = ()) -> None:
    """The limits the agent holds around a runtime that has none of its own (bwrap,
    Apptainer): the job's cgroup, the work directory's own filesystem, or the monitor.
    ``skip``: those the runtime holds itself (a container engine's cgroup)."""
    for name, limit in effective.view.limits.items():
        if name in skip:
            continue
        how = limit.enforcement
        if how == "monitored":
            where = "the agent's monitor"
        elif name == "workdir_size":
            where = "the work directory's own filesystem"
        else:
            where = "the job's cgroup"
        need.met(f"limits.{name}", f"{how}: {where}", by="agent")


def egress_plan(
    effective: EffectivePolicy, host: HostView, need: Requirements
) -> EgressPlan | None:
    """What the agent plumbs for an egress job, or None (another mode, or this host
    cannot: then the namespace has its loopback only, if the site made it optional).
    The runtime must hold the payload until the agent has plumbed it (bwrap's
    --block-fd; the JobWrapper waiting for its handoff in a container)."""
    network = effective.view.network
    if network.mode != "egress":
        return None
    why = host.egress_unmet(effective.view.namespaces.user != "off")
    if why is not None:
        need.unmet("network.mode", f"egress: {why}", by="agent")
        return None
    count = len(network.allow)
    reach = f"{count} network.allow entr{'y' if count == 1 else 'ies'}"
    reach += ", the proxy" if network.proxy else ""
    need.met("network.mode", f"egress: the job's own network namespace, its TCP and DNS "
             f"through the agent's relay ({reach}; never the node)", by="agent")  # fmt: skip
    return EgressPlan(network.allow, network.deny, network.proxy)


def sources_in(argv: Sequence[str]) -> tuple[tuple[int, Carried], ...]:
    """Where ``argv`` holds SourceWords, and what each carries."""
    return tuple((at, word.carries) for at, word in enumerate(argv) if isinstance(word, SourceWord))


def as_argv(out: Sequence[str]) -> tuple[tuple[str, ...], tuple[Descriptor, ...], tuple[int, ...]]:
    """A renderer's own words (never the payload's, which follow them) as the start of a
    plan's argv, with the descriptors its FdWords name and the indices of the words that
    name the directory of agent files: the launcher changes those words and no other."""
    descriptors = tuple(Descriptor(int(word), word.carries, word.what, at)
                        for at, word in enumerate(out) if isinstance(word, FdWord))  # fmt: skip
    files_at = tuple(at for at, word in enumerate(out) if AGENT_FILES in word)
    return tuple(str(word) for word in out), descriptors, files_at


# The variables HTTP clients (curl, wget, Python, xrootd's HTTP plugin) read a proxy from.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")


def environment(
    effective: EffectivePolicy, environ: Mapping[str, str] | None
) -> list[tuple[str, str]]:
    """The payload's variables: the fixed ones, then the allowed ones the agent has (or a
    placeholder for each when rendering without the agent's environment)."""
    fixed = dict(effective.view.process.environment.set)
    network = effective.view.network
    if network.proxy and network.mode != "none":  # the site's squid, as every client reads it
        fixed |= dict.fromkeys(PROXY_VARIABLES, network.proxy)
    out = sorted(fixed.items())
    for name in effective.view.process.environment.allow:
        if name in fixed:
            continue
        if environ is None:
            out.append((name, FROM_AGENT))
        elif name in environ:
            out.append((name, environ[name]))
    return out
