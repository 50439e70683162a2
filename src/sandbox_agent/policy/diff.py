"""What one policy allows that another does not, by capability rather than by text.

``diff(a, b)`` answers two questions: what does B let a payload do that A does not
(a new readable or writable path, a namespace dropped, a higher memory cap, a system
call no longer denied, a destination the job may now connect to...), and the reverse.
Each answer is one line a reviewer can act on, with the origin of B's (or A's) value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox_agent.policy import destinations
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.policy.destinations import unreachable
from sandbox_agent.policy.explain import show_value
from sandbox_agent.policy.model import within
from sandbox_agent.policy.schema import FIELDS, LIMITS, NAMESPACES
from sandbox_agent.seccomp.profile import ProfileError, SeccompProfile

# How much each word allows, least first.
_STRENGTH = {"required": 0, "optional": 1, "off": 2}
_ENFORCEMENT = {"kernel": 0, "monitored": 1}


@dataclass(frozen=True)
class Widening:
    key: str
    message: str
    origin: str

    def format(self) -> str:
        return f"{self.message}  [{self.key}, {self.origin}]"


def diff(a: EffectivePolicy, b: EffectivePolicy) -> tuple[list[Widening], list[Widening]]:
    """(what B allows that A does not, what A allows that B does not)."""
    return _wider(a, b), _wider(b, a)


def _wider(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
    """Everything ``other`` allows beyond ``base``."""
    out: list[Widening] = []
    for check in _CHECKS:
        out.extend(check(base, other))
    return out


def _items(policy: EffectivePolicy, key: str) -> list[tuple[Any, str]]:
    return [(i.value, i.origin) for i in policy[key].value]


def _paths(verb: str, key: str) -> Callable[[EffectivePolicy, EffectivePolicy], list[Widening]]:
    def check(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
        known = [p for p, _ in _items(base, key)]
        return [
            Widening(key, f"{verb} {path}", origin)
            for path, origin in _items(other, key)
            if not any(within(path, k) for k in known)
        ]

    return check


def _readable(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
    """New host paths readable inside: the userland and the read-only binds together, so
    /usr/share/doc is nothing new where /usr was already bound."""
    keys = ("filesystem.host_userland", "filesystem.read_only")
    known = [p for key in keys for p, _ in _items(base, key)]
    return [
        Widening(key, f"reads the host path {path}", origin)
        for key in keys
        for path, origin in _items(other, key)
        if not any(within(path, k) for k in known)
    ]


def _image(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
    was, now = base["filesystem.image"].value, other["filesystem.image"].value
    if was == now:
        return []
    return [Widening("filesystem.image", f"runs on the image {now} instead of {was}",
                     other["filesystem.image"].origin)]  # fmt: skip


def _deny(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
    kept = [p for p, _ in _items(other, "filesystem.deny")]
    return [
        Widening("filesystem.deny", f"no longer keeps binds away from {path}",
                 other["filesystem.deny"].origin)
        for path, _ in _items(base, "filesystem.deny")
        if not any(within(path, k) for k in kept)
    ]  # fmt: skip


def _names(key: str, what: str) -> Callable[[EffectivePolicy, EffectivePolicy], list[Widening]]:
    def check(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
        known = {v for v, _ in _items(base, key)}
        return [
            Widening(key, f"{what} {value}", origin)
            for value, origin in _items(other, key)
            if value not in known
        ]

    return check


def _words(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
    out = []
    for ns in NAMESPACES:
        key = f"namespaces.{ns}"
        was, now = base[key].value, other[key].value
        if _STRENGTH[now] > _STRENGTH[was]:
            what = "shares the host's" if now == "off" else "may run without its own"
            out.append(Widening(key, f"{what} {ns} namespace ({was} -> {now})", other[key].origin))
    landlock = "process.landlock"
    if _STRENGTH[other[landlock].value] > _STRENGTH[base[landlock].value]:
        out.append(Widening(landlock, f"landlock {base[landlock].value} -> "
                            f"{other[landlock].value}", other[landlock].origin))  # fmt: skip
    for key, allowed in (("filesystem.proc", "private"), ("filesystem.dev", "minimal")):
        if other[key].value == allowed and base[key].value != allowed:
            out.append(Widening(key, f"mounts {key.split('.')[1]} ({allowed})", other[key].origin))
    if (
        other["devices.gpu"].value != base["devices.gpu"].value
        and other["devices.gpu"].value != "none"
    ):
        out.append(Widening("devices.gpu", f"gets {other['devices.gpu'].value} GPUs",
                            other["devices.gpu"].origin))  # fmt: skip
    for key, what in (
        ("process.no_new_privs", "lets setuid binaries and file capabilities work"),
        ("process.new_session", "keeps a controlling terminal"),
        ("process.die_with_parent", "outlives the agent"),
    ):
        if base[key].value and not other[key].value:
            out.append(Widening(key, what, other[key].origin))
    return out


def _network(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
    """Where a job of ``other`` may connect that one of ``base`` may not: none < egress
    (DNS, network.allow but network.deny, the proxy) < host (everything)."""
    was, now = base.view.network, other.view.network
    mode = other["network.mode"].origin
    out = []
    if now.mode == "host":
        if was.mode != "host":
            out.append(Widening("network.mode", "reaches the host's network", mode))
    elif now.mode == "egress" and was.mode != "host":
        if was.mode == "none":
            out.append(Widening("network.mode", "connects out through the agent's relay "
                                "(none -> egress): DNS, and what network.allow names",
                                mode))  # fmt: skip
        known = was.allow if was.mode == "egress" else ()
        out += [
            Widening("network.allow", f"may connect to {item.value}", item.origin)
            for item in other["network.allow"].value
            if unreachable(item.value) is None and not _covered(item.value, known)
        ]
        if was.mode == "egress":  # a deny entry dropped opens what the allowlist named
            out += [
                Widening("network.deny", f"no longer keeps {entry} closed",
                         other["network.deny"].origin)
                for entry in was.deny
                if not _covered(entry, now.deny)
            ]  # fmt: skip
    if now.proxy and now.proxy != was.proxy and now.mode != "none":
        reachable = now.mode == "egress" and unreachable(now.proxy.removeprefix("http://")) is None
        reach = ", reachable whatever network.allow says" if reachable else ""
        out.append(Widening("network.proxy", f"gives the job the proxy {now.proxy}{reach}",
                            other["network.proxy"].origin))  # fmt: skip
    return out


def _covered(entry: str, entries: tuple[str, ...]) -> bool:
    """Whether one of ``entries`` already names every address and port ``entry`` does: a
    network inside one of theirs, a name the same name (names are not resolved here)."""
    try:
        host, port, network = destinations.split(entry)
    except ValueError:
        return False
    for other in entries:
        try:
            other_host, other_port, other_network = destinations.split(other)
        except ValueError:
            continue
        if other_port is not None and other_port != port:
            continue
        if network is None or other_network is None:
            if network is None and other_network is None and host.lower() == other_host.lower():
                return True
        elif network.version == other_network.version and network.subnet_of(other_network):  # type: ignore[arg-type]
            return True
    return False


def _numbers(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
    out = []
    keys = [k for k in FIELDS if k.startswith("process.rlimits.")]
    for name in LIMITS:
        keys += [f"limits.{name}.max", f"limits.{name}.default"]
    for key in keys:
        was, now = base[key].value, other[key].value
        if now > was:
            out.append(Widening(key, f"{key} {show_value(key, was)} -> {show_value(key, now)}",
                                other[key].origin))  # fmt: skip
    if other["limits.memory_per_core"].value and not base["limits.memory_per_core"].value:
        cores = other["limits.cpu_cores.max"].value
        most = other["limits.memory.max"].value * cores
        out.append(Widening("limits.memory_per_core", "memory's default and max become per "
                            f"core: a job of {cores} cores may have "
                            f"{show_value('limits.memory.max', most)}",
                            other["limits.memory_per_core"].origin))  # fmt: skip
    for name in LIMITS:
        key = f"limits.{name}.enforcement"
        if _ENFORCEMENT[other[key].value] > _ENFORCEMENT[base[key].value]:
            out.append(Widening(key, f"{name} only monitored, no longer kernel-enforced",
                                other[key].origin))  # fmt: skip
    for path, size in (i.value for i in other["filesystem.tmpfs"].value):
        before = [s for p, s in (i.value for i in base["filesystem.tmpfs"].value) if p == path]
        if not before or size > max(before):
            was = show_value("limits.memory", max(before)) if before else "none"
            out.append(Widening("filesystem.tmpfs", f"tmpfs {path} {was} -> "
                                f"{show_value('limits.memory', size)}",
                                other["filesystem.tmpfs"].origin))  # fmt: skip
    return out


def _environment(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
    was = dict(i.value for i in base["process.environment.set"].value)
    out = []
    for item in other["process.environment.set"].value:
        name, value = item.value
        if was.get(name) != value:
            out.append(Widening("process.environment.set", f"sets {name}={value}", item.origin))
    return out


def _images(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
    """A platform on a new image, or a pin dropped or changed: jobs run on images the
    base policy would not have given them."""
    out = []
    platforms = base.view.images.platforms
    for item in other["images.platforms"].value:
        name, path = item.value
        if platforms.get(name) != path:
            out.append(Widening("images.platforms", f"runs platform {name} on {path}",
                                item.origin))  # fmt: skip
    pins = other.view.images.pins
    for item in base["images.pins"].value:
        path, digest = item.value
        if pins.get(path) != digest:
            now = f"pins it to {pins[path]}" if path in pins else "no longer pins it"
            origin = other["images.pins"].origin
            out.append(Widening("images.pins", f"image {path}: {now}", origin))
    return out


def _seccomp(base: EffectivePolicy, other: EffectivePolicy) -> list[Widening]:
    before_path = base.policy.seccomp_path()
    after_path = other.policy.seccomp_path()
    if before_path.resolve() == after_path.resolve():
        return []  # one profile: nothing to compare
    try:
        before = SeccompProfile.load(before_path)
        after = SeccompProfile.load(after_path)
    except ProfileError as exc:
        return [Widening("process.seccomp", f"cannot compare profiles: {exc}",
                         other["process.seccomp"].origin)]  # fmt: skip
    return [
        Widening("process.seccomp", f"system call no longer denied: {what}",
                 other["process.seccomp"].origin)
        for what in after.allows_beyond(before)
    ]  # fmt: skip


_CHECKS: list[Callable[[EffectivePolicy, EffectivePolicy], list[Widening]]] = [
    _words,
    _image,
    _readable,
    _paths("writes the host path", "filesystem.writable"),
    _paths("lets a JDL bind paths under", "filesystem.jdl_read_only_roots"),
    _paths("lets a JDL name images under", "images.roots"),
    _images,
    _paths("binds the device", "devices.paths"),
    _deny,
    _names("process.capabilities", "keeps the capability"),
    _names("process.environment.allow", "passes the agent's variable"),
    _names("optional.requirements", "tolerates unenforced"),
    _environment,
    _network,
    _numbers,
    _seccomp,
]
