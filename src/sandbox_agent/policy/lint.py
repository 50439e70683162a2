"""Lint: what in a policy a security reviewer should look at, each finding at file:line.

Errors are things the engine would let through but no site should ship (a bind onto
the deny list, a capability, no_new_privs off), and contradictions a renderer refuses at
run time (the host network with the net namespace required); warnings are widenings a
reviewer must have seen (a writable bind, a device, the host network). A list entry or a
proxy that can never take effect, or that no job could ever reach, is a warning too: the
reviewer should know it does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sandbox_agent.policy.destinations import unreachable
from sandbox_agent.policy.model import BUILTIN, Policy, Setting, within
from sandbox_agent.policy.schema import LIMITS, NAMESPACES
from sandbox_agent.seccomp.profile import (
    REQUIRED_ALLOWED,
    ProfileError,
    SeccompProfile,
    required_denials,
)


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" or "warning"
    rule: str  # a stable name, for suppressing and for tests
    where: str  # file:line, or "builtin"
    message: str

    def format(self) -> str:
        return f"{self.where}: {self.severity}: {self.message} [{self.rule}]"


Rule = Callable[[Policy], list[Finding]]
# The keys whose paths are bound into a sandbox (a JDL's binds lie under the roots).
BOUND_KEYS = (
    "filesystem.host_userland",
    "filesystem.read_only",
    "filesystem.writable",
    "filesystem.jdl_read_only_roots",
    "devices.paths",
)
_RULES: list[Rule] = []


def rule(func: Rule) -> Rule:
    _RULES.append(func)
    return func


def lint(policy: Policy) -> list[Finding]:
    """Every finding of every rule, errors first, in file order."""
    found = [f for check in _RULES for f in check(policy)]
    return sorted(found, key=lambda f: (f.severity != "error", *_place(f.where), f.rule))


def _place(where: str) -> tuple[str, int]:
    """file:line as (file, line number), so line 4 sorts before line 12."""
    file, _, line = where.rpartition(":")
    return (file, int(line)) if line.isdigit() else (where, 0)


@rule
def required_not_bound(policy: Policy) -> list[Finding]:
    """A required path that no bind, device or JDL root reaches guards nothing a job
    sees: probably a typo."""
    bound = [str(i.value) for key in BOUND_KEYS for i in policy[key].value]
    return [
        Finding("warning", "required-not-bound", item.origin,
                f"filesystem.required '{item.value}' is under no bind, device or "
                "jdl_read_only_roots entry: no job would see it")
        for item in policy["filesystem.required"].value
        if not any(within(str(item.value), root) for root in bound)
    ]  # fmt: skip


@rule
def bind_reaches_deny(policy: Policy) -> list[Finding]:
    deny = [i for i in policy["filesystem.deny"].value]
    out = []
    for key in BOUND_KEYS:
        for item in policy[key].value:
            for denied in deny:
                if within(item.value, denied.value) or within(denied.value, item.value):
                    out.append(
                        Finding(
                            "error",
                            "bind-reaches-deny",
                            item.origin,
                            f"{key} '{item.value}' reaches the denied path '{denied.value}' "
                            f"({denied.origin}); remove it or bind a narrower path",
                        )
                    )
    image = policy["filesystem.image"]
    images = [("filesystem.image", image.value, image.origin)]
    images += [(f"images.platforms.{i.value[0]}", i.value[1], i.origin)
               for i in policy["images.platforms"].value]  # fmt: skip
    images += [("images.roots", i.value, i.origin) for i in policy["images.roots"].value]
    for key, path, origin in images:
        if not path.startswith("/"):
            continue
        for denied in deny:
            if within(path, denied.value) or within(denied.value, path):
                out.append(Finding("error", "bind-reaches-deny", origin,
                                   f"{key} '{path}' reaches the denied path "
                                   f"'{denied.value}' ({denied.origin}): an image becomes the "
                                   "sandbox's root"))  # fmt: skip
    workdir = policy["filesystem.workdir"]
    for denied in deny:
        if within(workdir.value, denied.value):
            out.append(Finding("error", "bind-reaches-deny", workdir.origin,
                               f"filesystem.workdir '{workdir.value}' is under the denied "
                               f"path '{denied.value}'"))  # fmt: skip
    return out


@rule
def writable_outside_workdir(policy: Policy) -> list[Finding]:
    return [
        Finding("warning", "writable-bind", item.origin,
                f"filesystem.writable '{item.value}' is writable outside the work directory: "
                "the payload can change it for everyone who shares it")
        for item in policy["filesystem.writable"].value
    ]  # fmt: skip


@rule
def capabilities(policy: Policy) -> list[Finding]:
    return [
        Finding("error", "capability", item.origin,
                f"process.capabilities grants {item.value}; payloads should keep none")
        for item in policy["process.capabilities"].value
    ]  # fmt: skip


@rule
def namespaces_off(policy: Policy) -> list[Finding]:
    out = []
    for ns in NAMESPACES:
        setting = policy[f"namespaces.{ns}"]
        # the net namespace goes with network.mode: off is what host means (host-network),
        # and a contradiction with none or egress (network-namespace)
        if setting.value == "off" and ns != "net":
            severity = "warning" if ns in ("cgroup", "uts") else "error"
            out.append(Finding(severity, "namespace-off", setting.origin,
                               f"namespaces.{ns} is off: the payload shares the host's {ns} "
                               "namespace"))  # fmt: skip
    return out


@rule
def process_flags(policy: Policy) -> list[Finding]:
    out = []
    checks = (
        ("process.no_new_privs", "error", "setuid binaries and file capabilities work again"),
        ("process.new_session", "warning", "the payload keeps a controlling terminal (TIOCSTI)"),
        ("process.die_with_parent", "warning", "the sandbox outlives a killed agent"),
    )
    for key, severity, why in checks:
        setting = policy[key]
        if setting.value is False:
            out.append(Finding(severity, "process-flag-off", setting.origin,
                               f"{key} is false: {why}"))  # fmt: skip
    return out


@rule
def landlock_off(policy: Policy) -> list[Finding]:
    setting = policy["process.landlock"]
    if setting.value == "off":
        return [Finding("warning", "landlock-off", setting.origin,
                        "process.landlock is off: the mount namespace is the only bound on "
                        "where the payload can write")]  # fmt: skip
    return []


# Variables the dynamic loader and the C library act on in every program that starts
# with them: a site passing one changes what runs in the sandbox (LD_PRELOAD loads code
# first), and a payload that needs one can set it itself.
LOADER_VARIABLES = ("LD_", "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH",
                    "HOSTALIASES", "RES_OPTIONS", "MALLOC_")  # fmt: skip


@rule
def loader_variables(policy: Policy) -> list[Finding]:
    out = []
    for key in ("process.environment.allow", "process.environment.set"):
        for item in policy[key].value:
            name = str(item.value[0] if isinstance(item.value, tuple) else item.value)
            if name.startswith(LOADER_VARIABLES):
                out.append(Finding("warning", "loader-variable", item.origin,
                                   f"{key} passes {name}: the loader acts on it in every "
                                   "program of the sandbox; let the job set it"))  # fmt: skip
    return out


@rule
def host_network(policy: Policy) -> list[Finding]:
    setting = policy["network.mode"]
    if setting.value == "host":
        return [Finding("warning", "host-network", setting.origin,
                        "network.mode is host: the payload shares the node's network: every "
                        "service listening on the node, its loopback included, the cloud "
                        "metadata address 169.254.169.254, and anything the node can reach; "
                        'network.mode = "egress" lets jobs reach only what network.allow '
                        "names")]  # fmt: skip
    return []


@rule
def network_namespace(policy: Policy) -> list[Finding]:
    """network.mode and namespaces.net that contradict each other: host shares the node's
    namespace, none and egress need the job's own (the bwrap renderer refuses both)."""
    mode, net = policy["network.mode"], policy["namespaces.net"]
    if mode.value == "host" and net.value == "required":
        why = ("host shares the node's network namespace, a contradiction the bwrap renderer "
               'refuses; set namespaces.net = "off" (or network.mode = "egress")')  # fmt: skip
    elif mode.value in ("none", "egress") and net.value == "off":
        why = (f"{mode.value} needs the job's own network namespace (the bwrap renderer refuses "
               'it without one); set namespaces.net = "required"')  # fmt: skip
    else:
        return []
    where = _latest(policy, mode, net)
    # the finding points at one of the two; the message names the other's origin
    mode_at, net_at = (
        ("", f" ({net.origin})") if where == mode.origin else (f" ({mode.origin})", "")
    )
    return [Finding("error", "network-namespace", where,
                    f"network.mode is {mode.value}{mode_at} but namespaces.net is "
                    f"{net.value}{net_at}: {why}")]  # fmt: skip


@rule
def egress_dns_only(policy: Policy) -> list[Finding]:
    mode, allow = policy["network.mode"], policy["network.allow"]
    if mode.value != "egress" or allow.value or policy["network.proxy"].value:
        return []
    where = allow.origin if allow.origin != BUILTIN else mode.origin
    return [Finding("warning", "egress-dns-only", where,
                    "network.mode is egress but network.allow is empty and there is no "
                    "network.proxy: jobs reach DNS only; name what they need in "
                    "network.allow")]  # fmt: skip


@rule
def allow_never_reachable(policy: Policy) -> list[Finding]:
    return [
        Finding("warning", "allow-never-reachable", item.origin,
                f"network.allow '{item.value}' can never be reached, whatever the lists say "
                f"({why}): remove it")
        for item in policy["network.allow"].value
        if (why := unreachable(item.value))
    ]  # fmt: skip


@rule
def network_unused(policy: Policy) -> list[Finding]:
    """allow and deny are read in egress mode alone."""
    mode = policy["network.mode"].value
    if mode == "egress":
        return []
    reach = ("jobs reach the node's whole network whatever it says" if mode == "host"
             else "jobs reach no network whatever it says")  # fmt: skip
    return [
        Finding("warning", "network-unused", policy[key].origin,
                f"{key} is set but network.mode is {mode}: only egress mode reads it, so it "
                f"has no effect ({reach})")
        for key in ("network.allow", "network.deny")
        if policy[key].value
    ]  # fmt: skip


@rule
def proxy_unreachable(policy: Policy) -> list[Finding]:
    mode, proxy = policy["network.mode"], policy["network.proxy"]
    if not proxy.value:
        return []
    if mode.value == "none":
        return [Finding("warning", "proxy-unreachable", proxy.origin,
                        f"network.proxy {proxy.value} is set but network.mode is none: jobs "
                        "get it as http_proxy and https_proxy but cannot reach it")]  # fmt: skip
    why = unreachable(proxy.value.removeprefix("http://").removesuffix("/"))
    if mode.value == "egress" and why:
        return [Finding("warning", "proxy-unreachable", proxy.origin,
                        f"network.proxy {proxy.value} cannot be reached in egress mode, "
                        f"whatever the lists say ({why}): give the proxy's IPv4 address or "
                        "name, off this node")]  # fmt: skip
    return []


def _latest(policy: Policy, *settings: Setting) -> str:
    """Of settings that contradict each other, the origin of the one the chain set last:
    the line that made the contradiction (a builtin value comes first)."""
    names = [path.name for path in policy.files]

    def rank(setting: Setting) -> tuple[int, int]:
        file, _, line = setting.origin.rpartition(":")
        name = file.rpartition("/")[2]
        if not line.isdigit() or name not in names:
            return (-1, 0)  # builtin
        return (names.index(name), int(line))

    return max(settings, key=rank).origin


@rule
def devices(policy: Policy) -> list[Finding]:
    out = [
        Finding("warning", "device", item.origin, f"devices.paths binds the device {item.value}")
        for item in policy["devices.paths"].value
    ]
    gpu = policy["devices.gpu"]
    if gpu.value != "none":
        out.append(Finding("warning", "device", gpu.origin,
                           f"devices.gpu is {gpu.value}: GPU devices and driver libraries "
                           "enter the sandbox"))  # fmt: skip
    return out


@rule
def limits(policy: Policy) -> list[Finding]:
    out = []
    for name in LIMITS:
        default, maximum = policy[f"limits.{name}.default"], policy[f"limits.{name}.max"]
        if maximum.origin == BUILTIN and default.origin != BUILTIN:
            out.append(Finding("warning", "limit-without-max", default.origin,
                               f"limits.{name} sets a default but no max: the builtin "
                               f"maximum ({maximum.value}) applies"))  # fmt: skip
        if default.value > maximum.value:
            out.append(Finding("error", "default-above-max", default.origin,
                               f"limits.{name}.default ({default.value}) is above "
                               f"limits.{name}.max ({maximum.value})"))  # fmt: skip
    return out


@rule
def seccomp(policy: Policy) -> list[Finding]:
    setting = policy["process.seccomp"]
    path = policy.seccomp_path()
    try:
        profile = SeccompProfile.load(path)
    except ProfileError as exc:
        return [Finding("error", "seccomp-profile", setting.origin, str(exc))]
    out = []
    for denial in required_denials():
        if not profile.enforces(denial):
            out.append(Finding("error", "seccomp-allows", setting.origin,
                               f"{path.name} does not deny {denial.describe()}, which every "
                               "sandbox must deny"))  # fmt: skip
    for missing in profile.missing_architectures():
        out.append(Finding("error", "seccomp-architecture", setting.origin,
                           f"{path.name} leaves out {missing}: every call through that ABI "
                           "is killed instead of filtered by the same rules"))  # fmt: skip
    for name, args in REQUIRED_ALLOWED:
        if not profile.outcome(name, args).allowed:
            out.append(Finding("error", "seccomp-denies-basics", setting.origin,
                               f"{path.name} denies {name}, which every program needs: "
                               "nothing would run"))  # fmt: skip
    return out
