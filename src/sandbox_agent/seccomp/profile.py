"""System-call profiles in the OCI / Docker JSON format, read and reasoned about.

This module reads a profile and answers questions about it without the kernel: what
action a given call (with given arguments) gets, whether a required denial holds,
which architectures are covered, what one profile allows that another does not. The
compiler to BPF (through libseccomp) is a separate module; both read the same file.

Rule semantics follow libseccomp 2.5 as observed by loading real filters: when a rule
without argument conditions names a call, the first such rule decides and every
conditional rule for that call is dropped; otherwise a conditional rule whose
conditions all hold decides (where several hold, this module assumes the one that lets
the call through, the conservative reading for a reviewer); when no rule names the
call, the default action applies. SCMP_ACT_LOG lets the call run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_agent.readfile import read_capped

ALLOW = "SCMP_ACT_ALLOW"
RUNS = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")  # actions under which the call goes through
ACTIONS = (
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
)
OPS = (
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)
# ABIs a kernel runs side by side: a profile naming one of a family must name them all,
# or a payload switches ABI (int 0x80, x32) to get past it.
FAMILIES = {
    "x86": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "arm": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}
MAX_PROFILE_BYTES = 1024 * 1024


class ProfileError(ValueError):
    """A profile that cannot be read or does not follow the format."""


@dataclass(frozen=True)
class ArgCondition:
    index: int
    op: str
    value: int
    value_two: int = 0

    def holds(self, args: tuple[int, ...]) -> bool:
        arg = args[self.index] if self.index < len(args) else 0
        if self.op == "SCMP_CMP_MASKED_EQ":
            # libseccomp: (arg & mask) == datum, the mask being `value`, the datum `valueTwo`
            return (arg & self.value) == self.value_two
        compare = {
            "SCMP_CMP_NE": arg != self.value,
            "SCMP_CMP_LT": arg < self.value,
            "SCMP_CMP_LE": arg <= self.value,
            "SCMP_CMP_EQ": arg == self.value,
            "SCMP_CMP_GE": arg >= self.value,
            "SCMP_CMP_GT": arg > self.value,
        }
        return compare[self.op]


@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    action: str
    errno: int | None
    args: tuple[ArgCondition, ...]


@dataclass(frozen=True)
class Outcome:
    action: str
    errno: int | None

    @property
    def allowed(self) -> bool:
        return self.action in RUNS


@dataclass(frozen=True)
class Denial:
    """A call every profile must refuse: the system call and the arguments that show it."""

    syscall: str
    args: tuple[int, ...] = ()
    label: str = ""
    errno: int | None = None  # the errno it must get, when that matters (clone3: ENOSYS)

    def describe(self) -> str:
        return self.label or self.syscall


def required_denials() -> list[Denial]:
    """What every sandbox must deny (issue: the policy engine), as concrete calls."""
    plain = [
        "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
        "fsopen", "fsmount", "move_mount", "open_tree", "fsconfig", "fspick",
        "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
        "io_uring_setup", "io_uring_enter", "io_uring_register",
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
        "open_by_handle_at", "ptrace", "process_vm_readv", "process_vm_writev",
        "pidfd_getfd", "kcmp", "swapon", "swapoff", "reboot", "acct", "quotactl",
        "settimeofday", "clock_settime", "adjtimex", "sethostname", "setdomainname",
        "syslog", "iopl", "ioperm",
    ]  # fmt: skip
    out = [Denial(name) for name in plain]
    flags = {
        "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
        "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
        "CLONE_NEWNET": 0x40000000,
    }  # fmt: skip
    sigchld = 17
    out += [Denial("clone", (bit | sigchld,), f"clone with {name}") for name, bit in flags.items()]
    out.append(Denial("clone3", (0, 0), "clone3 (flags unreadable: must fail with ENOSYS)", 38))
    tiocsti, tioclinux = 0x5412, 0x541C
    out += [
        Denial("ioctl", (0, tiocsti), "ioctl TIOCSTI"),
        Denial("ioctl", (0, 0x1_0000_0000 | tiocsti), "ioctl TIOCSTI with high bits set"),
        Denial("ioctl", (0, tioclinux), "ioctl TIOCLINUX"),
        Denial("ioctl", (0, 0x1_0000_0000 | tioclinux), "ioctl TIOCLINUX with high bits set"),
        Denial("socket", (38, 5, 0), "socket(AF_ALG)"),
        Denial("socket", (40, 1, 0), "socket(AF_VSOCK)"),
        Denial("personality", (0x0400000,), "personality(READ_IMPLIES_EXEC)"),
    ]
    return out


# Calls a profile must leave working, or nothing runs: checked by lint as a sanity test.
REQUIRED_ALLOWED = [
    ("read", ()), ("write", ()), ("openat", ()), ("close", ()), ("mmap", ()), ("execve", ()),
    ("exit_group", ()), ("clone", (17,)), ("wait4", ()), ("ioctl", (0, 0x5401)),
    ("personality", (0xFFFFFFFF,)), ("socket", (1, 1, 0)),
]  # fmt: skip


class SeccompProfile:
    def __init__(
        self,
        default: Outcome,
        architectures: tuple[str, ...],
        rules: tuple[Rule, ...],
        source: str = "<profile>",
    ) -> None:
        self.default = default
        self.architectures = architectures
        self.rules = rules
        self.source = source
        self._by_name: dict[str, list[Rule]] = {}
        for rule in rules:
            for name in rule.names:
                self._by_name.setdefault(name, []).append(rule)

    @classmethod
    def load(cls, path: Path) -> SeccompProfile:
        return cls.from_bytes(cls.read(path), str(path))

    @staticmethod
    def read(path: Path) -> bytes:
        """The profile file's bytes: a regular file, up to the size cap."""
        try:
            raw = read_capped(path, MAX_PROFILE_BYTES)
        except OSError as exc:
            raise ProfileError(
                f"{path}: cannot read the seccomp profile ({exc.strerror})"
            ) from None
        if len(raw) > MAX_PROFILE_BYTES:
            raise ProfileError(f"{path}: larger than {MAX_PROFILE_BYTES} bytes")
        return raw

    @classmethod
    def from_bytes(cls, raw: bytes, source: str) -> SeccompProfile:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProfileError(f"{source}: not valid JSON ({exc})") from None
        except RecursionError:
            raise ProfileError(f"{source}: nested too deeply to be a profile") from None
        return cls.parse(data, source)

    @classmethod
    def parse(cls, data: Any, source: str) -> SeccompProfile:
        def fail(message: str) -> ProfileError:
            return ProfileError(f"{source}: {message}")

        if not isinstance(data, dict):
            raise fail("a profile is a JSON object")
        unknown = set(data) - _TOP_FIELDS
        if unknown:
            raise fail(f"unknown field(s) {', '.join(sorted(unknown))}")
        default = Outcome(
            _action(data.get("defaultAction"), fail), _errno(data, "defaultErrnoRet", fail)
        )
        architectures: list[str] = []
        for arch in _list(data, "architectures", fail):
            if not isinstance(arch, str) or not arch.startswith("SCMP_ARCH_"):
                raise fail(f"architecture {arch!r} is not an SCMP_ARCH_ name")
            architectures.append(arch)
        for entry in _list(data, "archMap", fail):
            if not isinstance(entry, dict):
                raise fail("archMap entries must be objects")
            subs = entry.get("subArchitectures", [])
            if not isinstance(subs, list):
                raise fail("archMap subArchitectures must be a list")
            for arch in [entry.get("architecture"), *subs]:
                if not isinstance(arch, str) or not arch.startswith("SCMP_ARCH_"):
                    raise fail(f"architecture {arch!r} is not an SCMP_ARCH_ name")
                if arch not in architectures:
                    architectures.append(arch)
        rules: list[Rule] = []
        for number, entry in enumerate(_list(data, "syscalls", fail)):
            rules.append(_rule(entry, f"syscalls[{number}]", fail))
        return cls(default, tuple(architectures), tuple(rules), source)

    def outcome(self, syscall: str, args: tuple[int, ...] = ()) -> Outcome:
        """What the filter does with ``syscall(args...)``."""
        rules = self._by_name.get(syscall, [])
        plain = [r for r in rules if not r.args]
        if plain:
            return Outcome(plain[0].action, plain[0].errno)
        matching = [r for r in rules if all(c.holds(args) for c in r.args)]
        if matching:
            chosen = next((r for r in matching if r.action in RUNS), matching[0])
            return Outcome(chosen.action, chosen.errno)
        return self.default

    def enforces(self, denial: Denial) -> bool:
        """Whether the call is refused. A call denied whatever its arguments (no args in
        the denial) must have no rule letting it run under any condition; a call denied
        for some arguments is judged on them, with the other arguments varied."""
        rules = self._by_name.get(denial.syscall, [])
        if not denial.args and any(r.action in RUNS for r in rules):
            return False
        for variant in _variants(denial.args):
            got = self.outcome(denial.syscall, variant)
            if got.allowed:
                return False
        got = self.outcome(denial.syscall, denial.args)
        if denial.errno is not None:
            return got.action == "SCMP_ACT_ERRNO" and got.errno == denial.errno
        return True

    def missing_architectures(self) -> list[str]:
        missing: list[str] = []
        for members in FAMILIES.values():
            if any(a in self.architectures for a in members):
                missing += [a for a in members if a not in self.architectures]
        if not self.architectures:
            missing.append("every architecture (the list is empty)")
        return missing

    def names(self) -> set[str]:
        return set(self._by_name)

    def allows_beyond(self, other: SeccompProfile) -> Iterator[str]:
        """Calls this profile lets through that ``other`` refuses, from the required denials
        and every system call either profile names; each once."""
        seen: set[str] = set()
        for denial in required_denials():
            call = (denial.syscall, denial.args)
            if self.outcome(*call).allowed and not other.outcome(*call).allowed:
                seen.add(denial.syscall if not denial.args else denial.describe())
                yield denial.describe()
        for name in sorted(self.names() | other.names()):
            if name in seen:
                continue
            if self.outcome(name).allowed and not other.outcome(name).allowed:
                yield name


def _variants(args: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The denial's arguments, with the ones it leaves open set to a few telling values."""
    fillers = (0, 1, 0xFFFFFFFF, (1 << 64) - 1)
    width = 6
    out = []
    for filler in fillers:
        out.append(tuple(args) + (filler,) * (width - len(args)))
    return out


def _action(value: Any, fail: Any) -> str:
    if value not in ACTIONS:
        raise fail(f"action {value!r} is not one of {', '.join(ACTIONS)}")
    return str(value)


def _errno(entry: dict[str, Any], key: str, fail: Any) -> int | None:
    value = entry.get(key)
    if value is None:
        return 1 if entry.get("action", entry.get("defaultAction")) == "SCMP_ACT_ERRNO" else None
    if not isinstance(value, int) or not 0 < value < 4096:
        raise fail(f"{key} must be an errno number")
    return value


_TOP_FIELDS = {"comment", "defaultAction", "defaultErrnoRet", "architectures", "archMap",
               "syscalls", "flags", "listenerPath"}  # fmt: skip
_RULE_FIELDS = {"names", "name", "action", "errnoRet", "args", "comment"}


def _list(data: dict[str, Any], key: str, fail: Any) -> list[Any]:
    if key not in data:
        return []
    value = data[key]
    if not isinstance(value, list):
        raise fail(f"{key} must be a list")
    return value


def _rule(entry: Any, where: str, fail: Any) -> Rule:
    if not isinstance(entry, dict):
        raise fail(f"{where} must be an object")
    unknown = set(entry) - _RULE_FIELDS
    if unknown:
        # A misspelt "args" would make a conditional rule unconditional: refuse it.
        raise fail(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    names = entry.get("names") if "names" in entry else [entry.get("name")]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise fail(f"{where}.names must list system call names")
    args: list[ArgCondition] = []
    for arg in entry.get("args") or []:
        if not isinstance(arg, dict) or not {"index", "value", "op"} <= set(arg):
            raise fail(f"{where}.args: each needs index, value and op")
        numbers = (arg["index"], arg["value"], arg.get("valueTwo", 0))
        # JSON integers only, within 64 bits: libseccomp truncates anything wider, and
        # the reader must judge the same value the kernel will compare.
        if not all(type(n) is int and 0 <= n < 1 << 64 for n in numbers):
            raise fail(f"{where}.args: index, value and valueTwo must be integers in 0..2^64-1")
        condition = ArgCondition(numbers[0], arg["op"], numbers[1], numbers[2])
        if condition.op not in OPS or not 0 <= condition.index <= 5:
            raise fail(f"{where}.args: op {condition.op!r} or index {condition.index} invalid")
        if any(c.index == condition.index for c in args):
            # libseccomp refuses two comparisons of one argument in one rule
            raise fail(f"{where}.args: argument {condition.index} is compared twice")
        args.append(condition)
    if entry.get("args") is not None and not isinstance(entry.get("args"), list):
        raise fail(f"{where}.args must be a list")
    return Rule(tuple(names), _action(entry.get("action"), fail),
                _errno(entry, "errnoRet", fail), tuple(args))  # fmt: skip
