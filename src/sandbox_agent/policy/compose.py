"""Composing a site policy with one job's requests and one slot into the effective policy.

What a JDL may change is short and fixed: the CPU cores, memory, wall time and work
directory size it asks for (clamped by nothing: a request above the site's maximum, or
above what the slot has, rejects the job with the reason), extra read-only binds
under the roots the site allows (``ReadOnlyBinds``), and its image, from the site's
roots or platforms (``policy.image``). Nothing else in a JDL reaches the
sandbox's shape: no writable bind, capability, namespace, variable or seccomp change.
"""

from __future__ import annotations

import functools
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sandbox_agent.images.prepare import ImageChoice
from sandbox_agent.jdl.expr import ListExpr, Literal
from sandbox_agent.jdl.spec import JobSpec
from sandbox_agent.jdl.units import MIB, format_size
from sandbox_agent.policy import image, views
from sandbox_agent.policy.model import Item, Policy, PolicyRejection, Setting, within
from sandbox_agent.policy.reach import Deny, PathRefused, check_bind
from sandbox_agent.policy.schema import LIMITS, Kind

# The JDL key a job uses to ask for extra read-only binds (under filesystem.jdl_read_only_roots).
BINDS_KEY = "ReadOnlyBinds"

# Slot attributes that cap a job's request: name -> (limit, factor to the limit's unit).
SLOT_CAPS = {
    "CPUCores": ("cpu_cores", 1),
    "Memory": ("memory", MIB),  # megabytes
    "Disk": ("workdir_size", MIB),  # megabytes free for the work directory
    "TTL": ("wall_time", 1),  # seconds the slot has left
}


@dataclass
class EffectivePolicy:
    """The policy one job gets: the site's settings, each limit resolved to one value
    (``limits.<name>``), the job's extra binds and the agent's own paths denied."""

    policy: Policy
    settings: dict[str, Setting]

    def __getitem__(self, path: str) -> Setting:
        return self.settings[path]

    def image_choice(self) -> ImageChoice:
        """What images/prepare.py makes the image ready by."""
        images = self.view.images
        return ImageChoice(self.view.filesystem.image, self["filesystem.image"].origin,
                           images.pins, images.require_pin)  # fmt: skip

    @functools.cached_property
    def view(self) -> views.View:
        """Every setting as a typed value (policy/views.py): what renderers read."""
        return views.of(self)

    def value(self, path: str) -> object:
        plain = self.settings[path].plain()
        return dict(plain) if path == "process.environment.set" else plain

    # One setting by its key, for tools and tests; src reads ``view``, which mypy checks.
    def word(self, path: str) -> str:
        return str(self.settings[path].value)

    def flag(self, path: str) -> bool:
        return bool(self.settings[path].value)

    def number(self, path: str) -> int:
        value = self.settings[path].value
        assert isinstance(value, int)
        return value

    def strings(self, path: str) -> tuple[str, ...]:
        return tuple(str(i.value) for i in self.settings[path].value)

    def mapping(self, path: str) -> dict[str, str]:
        return {str(i.value[0]): str(i.value[1]) for i in self.settings[path].value}

    def tmpfs(self) -> tuple[tuple[str, int], ...]:
        return tuple(
            (str(i.value[0]), int(i.value[1])) for i in self.settings["filesystem.tmpfs"].value
        )

    def limit(self, name: str) -> int:
        value = self.settings[f"limits.{name}"].value
        assert isinstance(value, int)
        return value


def compose(
    policy: Policy,
    spec: JobSpec | None = None,
    slot: Mapping[str, object] | None = None,
    *,
    credentials: Iterable[str] = (),
) -> EffectivePolicy:
    """The effective policy of ``spec`` on ``slot`` under ``policy``.

    ``credentials`` are the agent's own paths (its token and key directory): they join
    the deny list, so no bind can ever reach them. Raises ``PolicyRejection``."""
    settings = dict(policy.settings)
    for name in LIMITS:  # cpu_cores first: memory may be per core
        cores = settings["limits.cpu_cores"].value if name == "memory" else 1
        settings[f"limits.{name}"] = _limit(policy, name, spec, slot or {}, cores)
    deny = list(settings["filesystem.deny"].value)
    for path in credentials:
        deny.append(Item(os.path.abspath(path), "agent:credentials"))
    settings["filesystem.deny"] = Setting(tuple(deny), settings["filesystem.deny"].origin)
    if spec is not None:
        denied = Deny.of(deny)
        chosen = image.choose(policy, spec, denied)
        if chosen is not None:
            settings["filesystem.image"] = chosen
        extra = _requested_binds(policy, spec, denied)
        if extra:
            binds = list(settings["filesystem.read_only"].value) + extra
            settings["filesystem.read_only"] = Setting(tuple(binds), f"jdl:{BINDS_KEY}")
    return EffectivePolicy(policy, settings)


def _limit(
    policy: Policy, name: str, spec: JobSpec | None, slot: Mapping[str, object], cores: int = 1
) -> Setting:
    """One limit's value for the job: what it asked (at most the maximum and the slot),
    else the default. ``cores``: the job's, by which memory's default and maximum are
    multiplied when limits.memory_per_core is true."""
    kind, _default, _maximum, jdl_key = LIMITS[name]
    default, maximum = policy["limits." + name + ".default"], policy["limits." + name + ".max"]
    if name == "memory" and policy.value("limits.memory_per_core") and cores > 1:
        per_core = policy["limits.memory_per_core"].origin
        default, maximum = (
            Setting(s.value * cores, f"{s.origin} x {cores} cores (memory_per_core, {per_core})")
            for s in (default, maximum)
        )
    asked = _requested(name, spec)
    slot_cap = _slot_cap(name, slot)
    show = _shower(kind)
    if asked is not None:
        if asked > maximum.value:
            raise PolicyRejection(
                f"{jdl_key} {show(asked)} is above the site maximum {show(maximum.value)} "
                f"(limits.{name}.max, {maximum.origin}); ask for at most that"
            )
        if slot_cap is not None and asked > slot_cap[0]:
            raise PolicyRejection(
                f"{jdl_key} {show(asked)} is more than this slot has ({slot_cap[1]} = "
                f"{show(slot_cap[0])})"
            )
        return Setting(asked, f"jdl:{jdl_key}")
    value = min(default.value, maximum.value)
    origin = default.origin if default.value <= maximum.value else maximum.origin
    if slot_cap is not None and slot_cap[0] < value:
        return Setting(slot_cap[0], f"slot:{slot_cap[1]}")
    return Setting(value, origin)


def _requested(name: str, spec: JobSpec | None) -> int | None:
    if spec is None:
        return None
    # TTL and CPUCores have defaults in the spec: only what the JDL wrote is a request.
    if name == "cpu_cores":
        return spec.cpu_cores if "CPUCores" in spec.explicit else None
    if name == "memory":
        return spec.memory_bytes
    if name == "workdir_size":
        return spec.workdir_bytes
    if name == "wall_time":
        return spec.ttl if "TTL" in spec.explicit else None
    return None


def _slot_cap(name: str, slot: Mapping[str, object]) -> tuple[int, str] | None:
    for attribute, (limit, factor) in SLOT_CAPS.items():
        if limit != name:
            continue
        for key, value in slot.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if key.casefold() == attribute.casefold() and numeric:
                if not 0 <= value < 2**53:  # type: ignore[operator]
                    raise PolicyRejection(f"slot {attribute} = {value} is not a usable amount")
                return int(value * factor), attribute  # type: ignore[operator]
    return None


def _shower(kind: Kind):  # type: ignore[no-untyped-def]
    if kind is Kind.SIZE:
        return format_size
    if kind is Kind.SECONDS:
        return lambda v: f"{v} s"
    return str


def _requested_binds(policy: Policy, spec: JobSpec, deny: Deny) -> list[Item]:
    """The job's ReadOnlyBinds, each checked: absolute, no '..', under an allowed root,
    reaching nothing denied."""
    value = next((v for k, v in spec.extra if k.casefold() == BINDS_KEY.casefold()), None)
    if value is None:
        return []
    nodes = value.items if isinstance(value, ListExpr) else (value,)
    roots = [i.value for i in policy["filesystem.jdl_read_only_roots"].value]
    out: list[Item] = []
    for node in nodes:
        if not (isinstance(node, Literal) and isinstance(node.value, str)):
            raise PolicyRejection(f"{BINDS_KEY} must list paths as strings")
        path = node.value
        if not path.startswith("/") or ".." in path.split("/") or "\x00" in path:
            raise PolicyRejection(
                f"{BINDS_KEY}: '{path:.60}' must be an absolute path without '..'"
            )
        if any(c in path for c in ",:") or not path.isprintable():
            # runtimes split bind specs on ',' and ':' (Apptainer, Docker)
            raise PolicyRejection(f"{BINDS_KEY}: '{path:.60}' may not hold ',' ':' or controls")
        path = posixpath.normpath(path)
        if not any(within(path, root) for root in roots):
            allowed = ", ".join(roots) if roots else "none (this policy allows no extra binds)"
            raise PolicyRejection(
                f"{BINDS_KEY}: '{path:.60}' is not under a root the site allows ({allowed})"
            )
        try:
            real = check_bind(path, deny=deny, key=BINDS_KEY)
        except PathRefused as exc:
            raise PolicyRejection(str(exc)) from None
        out.append(Item(real, f"jdl:{BINDS_KEY}"))
    return out
