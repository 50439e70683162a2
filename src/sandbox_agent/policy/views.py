"""The effective policy as typed, frozen values: ``view.namespaces.user`` instead of
``effective.word("namespaces.user")``, so mypy sees every key a renderer reads and a
typo fails the type check instead of a job.

The classes mirror the schema's dotted keys (``process.rlimits.nofile`` is
``view.process.rlimits.nofile``; a limit's resolved value is ``view.limits.memory.value``
beside its ``default``, ``max`` and ``enforcement``). They are filled from the schema
table by the same walk (``of``), and a test holds that the leaves are exactly the
schema's keys with types that match their kinds: a key added to the schema and not
here, or here and not in the schema, fails it.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

from sandbox_agent.policy.model import Item
from sandbox_agent.policy.schema import FIELDS, Kind

if TYPE_CHECKING:
    from sandbox_agent.policy.compose import EffectivePolicy

Paths = tuple[str, ...]


@dataclass(frozen=True)
class Namespaces:
    user: str
    pid: str
    ipc: str
    uts: str
    net: str
    mount: str
    cgroup: str

    def levels(self) -> Iterator[tuple[str, str]]:
        """(namespace, required/optional/off) for each, in the schema's order."""
        for name in (f.name for f in dataclasses.fields(self)):
            yield name, getattr(self, name)


@dataclass(frozen=True)
class Filesystem:
    image: str
    host_userland: Paths
    workdir: str
    read_only: Paths
    writable: Paths
    jdl_read_only_roots: Paths
    required: Paths
    deny: Paths
    tmpfs: tuple[tuple[str, int], ...]  # (path, bytes)
    proc: str
    dev: str


@dataclass(frozen=True)
class Images:
    roots: Paths
    platforms: Mapping[str, str]
    require_pin: bool
    pins: Mapping[str, str]


@dataclass(frozen=True)
class Devices:
    gpu: str
    paths: Paths


@dataclass(frozen=True)
class Environment:
    allow: tuple[str, ...]
    set: Mapping[str, str]


@dataclass(frozen=True)
class Rlimits:
    core: int
    nofile: int
    stack: int
    fsize: int

    def items(self) -> Iterator[tuple[str, int]]:
        for name in (f.name for f in dataclasses.fields(self)):
            yield name, getattr(self, name)


@dataclass(frozen=True)
class Process:
    uid: int
    gid: int
    capabilities: tuple[str, ...]
    no_new_privs: bool
    seccomp: str
    new_session: bool
    die_with_parent: bool
    landlock: str
    environment: Environment
    rlimits: Rlimits


@dataclass(frozen=True)
class Limit:
    value: int  # the job's, resolved from its request, the default and the maximum
    default: int
    max: int
    enforcement: str  # kernel or monitored


@dataclass(frozen=True)
class Limits:
    cpu_cores: Limit
    memory: Limit
    swap: Limit
    pids: Limit
    wall_time: Limit
    workdir_size: Limit
    memory_per_core: bool  # memory's default and max scale with the job's cores

    def items(self) -> Iterator[tuple[str, Limit]]:
        """Each limit (the per-core switch is not one)."""
        for name in (f.name for f in dataclasses.fields(self)):
            value = getattr(self, name)
            if isinstance(value, Limit):
                yield name, value


@dataclass(frozen=True)
class Outputs:
    max_file: int
    max_total: int
    max_log: int


@dataclass(frozen=True)
class Disk:
    reserve: int


@dataclass(frozen=True)
class Network:
    mode: str
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    proxy: str


@dataclass(frozen=True)
class Optionals:
    requirements: tuple[str, ...]


@dataclass(frozen=True)
class View:
    description: str
    namespaces: Namespaces
    filesystem: Filesystem
    images: Images
    devices: Devices
    process: Process
    limits: Limits
    outputs: Outputs
    disk: Disk
    network: Network
    optional: Optionals


T = TypeVar("T")


def of(effective: EffectivePolicy) -> View:
    """The typed view of ``effective``."""
    return _build(View, "", effective)


def _build(cls: type[T], prefix: str, effective: EffectivePolicy) -> T:
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for name in (f.name for f in dataclasses.fields(cls)):  # type: ignore[arg-type]
        key = prefix + name
        kind = hints[name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            values[name] = _build(kind, key + ".", effective)
        elif cls is Limit and name == "value":
            values[name] = _plain(effective[prefix.rstrip(".")].value, None)
        else:
            values[name] = _plain(effective[key].value, FIELDS[key].kind)
    return cls(**values)


def _plain(value: Any, kind: Kind | None) -> Any:
    """A setting's value without its origins, as the view's field types say."""
    if kind is Kind.MAPPING:
        return types.MappingProxyType({str(i.value[0]): str(i.value[1]) for i in value})
    if kind is Kind.TMPFS:
        return tuple((str(i.value[0]), int(i.value[1])) for i in value)
    if isinstance(value, tuple) and all(isinstance(i, Item) for i in value):
        return tuple(str(i.value) for i in value)
    return value


def leaves(cls: type = View, prefix: str = "") -> dict[str, Any]:
    """Every key the view holds, with its type: for the test against the schema."""
    out: dict[str, Any] = {}
    hints = get_type_hints(cls)
    for name in (f.name for f in dataclasses.fields(cls)):
        kind = hints[name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            out |= leaves(kind, prefix + name + ".")
        elif cls is Limit and name == "value":
            out[prefix.rstrip(".")] = kind
        else:
            out[prefix + name] = kind
    return out
