"""Compiling an OCI seccomp profile to a BPF program with libseccomp.

The profile is read by ``profile.py`` (the same reader lint and diff use), then checked
for what libseccomp would silently get wrong, and built one ABI at a time:

* a system call with an unconditional rule may have no other rule (libseccomp keeps
  only one of them), and two rules with different actions for one call must be
  provably disjoint (libseccomp orders overlapping ones by an undocumented rank);
* a MASKED_EQ with a zero mask (unconditional) or a datum outside its mask (never
  matches: the swapped value/valueTwo mistake) is refused;
* every name must be known to libseccomp on some listed ABI; a name absent on one ABI
  (stime on x86_64) is left to the default action there;
* rules with conditions are added exactly (``seccomp_rule_add_exact``), so libseccomp
  cannot drop a condition; where an exact rule is impossible (socket on i386, behind
  socketcall) the rule is left out and the call gets the default action: fail closed;
* a rule whose action is the default is documentation, not handed to libseccomp;
* an ABI the profile does not list kills the process.

Anything refused is a ``CompileError`` naming the rule; the job does not run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyseccomp as sc  # type: ignore[import-untyped]

from sandbox_agent.seccomp.profile import (
    RUNS,
    ArgCondition,
    ProfileError,
    Rule,
    SeccompProfile,
)


class CompileError(ValueError):
    """A profile that cannot be compiled safely: the message names the rule and why."""


_ARCHES: dict[str, int] = {
    "SCMP_ARCH_X86_64": sc.Arch.X86_64,
    "SCMP_ARCH_X86": sc.Arch.X86,
    "SCMP_ARCH_X32": sc.Arch.X32,
    "SCMP_ARCH_AARCH64": sc.Arch.AARCH64,
    "SCMP_ARCH_ARM": sc.Arch.ARM,
}
_ARCH_NAME = {value: key for key, value in _ARCHES.items()}
# The ABIs a kernel of each native architecture runs side by side.
_FAMILY = {
    sc.Arch.X86_64: (sc.Arch.X86_64, sc.Arch.X86, sc.Arch.X32),
    sc.Arch.AARCH64: (sc.Arch.AARCH64, sc.Arch.ARM),
}
_OPS = {
    "SCMP_CMP_NE": sc.NE, "SCMP_CMP_LT": sc.LT, "SCMP_CMP_LE": sc.LE, "SCMP_CMP_EQ": sc.EQ,
    "SCMP_CMP_GE": sc.GE, "SCMP_CMP_GT": sc.GT, "SCMP_CMP_MASKED_EQ": sc.MASKED_EQ,
}  # fmt: skip
_UNKNOWN = -1  # libseccomp: no such name
_ABSENT = -10000  # libseccomp: a known name, absent on this ABI (and below)
U64 = (1 << 64) - 1


@dataclass
class Compiled:
    """A compiled filter: the BPF program and what was left out, for the audit record."""

    bpf: bytes
    architectures: tuple[str, ...]
    absent: dict[str, list[str]] = field(default_factory=dict)  # ABI -> names not there
    fail_closed: dict[str, list[str]] = field(default_factory=dict)  # ABI -> rules left out

    @property
    def instructions(self) -> int:
        return len(self.bpf) // 8

    @property
    def sha256(self) -> str:
        return "sha256:" + hashlib.sha256(self.bpf).hexdigest()


# Compiled programs by (path, sha256 of the bytes compiled): a pilot compiles each
# profile once (tens of ms), and a changed file is compiled again.
_COMPILED: dict[tuple[str, str], Compiled] = {}
_KEEP = 16


def compile_profile(path: Path) -> Compiled:
    """The host's BPF program for the profile at ``path``; raises ``CompileError``."""
    try:
        raw = SeccompProfile.read(path)
        key = (str(path), hashlib.sha256(raw).hexdigest())
        if key in _COMPILED:
            return _COMPILED[key]
        profile = SeccompProfile.from_bytes(raw, str(path))
    except ProfileError as exc:
        raise CompileError(str(exc)) from None
    compiled = compile_loaded(profile)
    if len(_COMPILED) >= _KEEP:
        _COMPILED.clear()
    _COMPILED[key] = compiled
    return compiled


def compile_loaded(profile: SeccompProfile) -> Compiled:
    where = profile.source
    _check_conditions(profile, where)
    _check_overlaps(profile, where)
    native = sc.system_arch()
    listed = [_ARCHES[a] for a in profile.architectures if a in _ARCHES]
    unknown_arch = [a for a in profile.architectures if a not in _ARCHES]
    if unknown_arch:
        raise CompileError(f"{where}: architectures not supported here: {', '.join(unknown_arch)}")
    if native not in listed:
        raise CompileError(
            f"{where}: the host's ABI {_ARCH_NAME.get(native, native)} is not listed"
        )
    family = _FAMILY.get(native, (native,))
    chosen = [native] + [a for a in listed if a in family and a != native]
    names = {name for rule in profile.rules for name in rule.names}
    unknown = sorted(n for n in names if all(sc.resolve_syscall(a, n) == _UNKNOWN for a in listed))
    if unknown:
        raise CompileError(f"{where}: system calls unknown to libseccomp: {', '.join(unknown)}")
    default = _action(profile.default.action, profile.default.errno, where)
    result = Compiled(b"", tuple(_ARCH_NAME[a] for a in chosen))
    filters = []
    for arch in chosen:
        filters.append(_build(profile, default, arch, result))
    base = filters[0]
    for other in filters[1:]:
        base.merge(other)
    result.bpf = _export(base)
    return result


def _action(action: str, code: int | None, where: str) -> Any:
    plain = {
        "SCMP_ACT_ALLOW": sc.ALLOW, "SCMP_ACT_LOG": sc.LOG, "SCMP_ACT_TRAP": sc.TRAP,
        "SCMP_ACT_KILL": sc.KILL_THREAD, "SCMP_ACT_KILL_THREAD": sc.KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS": sc.KILL_PROCESS,
    }  # fmt: skip
    if action in plain:
        return plain[action]
    if action == "SCMP_ACT_ERRNO":
        return sc.ERRNO(code if code is not None else errno.EPERM)
    raise CompileError(f"{where}: action {action} is not supported by the compiler")


def _check_conditions(profile: SeccompProfile, where: str) -> None:
    for number, rule in enumerate(profile.rules):
        for cond in rule.args:
            if cond.op != "SCMP_CMP_MASKED_EQ":
                continue
            if cond.value == 0:
                raise CompileError(
                    f"{where}: syscalls[{number}]: MASKED_EQ with mask (value) 0 always matches; "
                    "libseccomp would make the rule unconditional"
                )
            if cond.value_two & ~cond.value:
                raise CompileError(
                    f"{where}: syscalls[{number}]: MASKED_EQ never matches: valueTwo "
                    f"{cond.value_two:#x} has bits outside the mask {cond.value:#x} (value is the "
                    "mask, valueTwo the datum)"
                )


def _cube(cond: ArgCondition) -> tuple[int, int] | None:
    """(mask, datum) of an equality condition, else None."""
    if cond.op == "SCMP_CMP_EQ":
        return (U64, cond.value)
    if cond.op == "SCMP_CMP_MASKED_EQ":
        return (cond.value, cond.value_two)
    return None


def _disjoint(a: Rule, b: Rule) -> bool:
    """Whether no argument vector satisfies both (proved on equalities only)."""
    mine = {c.index: c for c in a.args}
    for cond in b.args:
        other = mine.get(cond.index)
        if other is None:
            continue
        x, y = _cube(other), _cube(cond)
        if x and y and (x[1] ^ y[1]) & x[0] & y[0]:
            return True
    return False


def _check_overlaps(profile: SeccompProfile, where: str) -> None:
    per_call: dict[str, list[Rule]] = {}
    for rule in profile.rules:
        for name in rule.names:
            per_call.setdefault(name, []).append(rule)
    problems = []
    for name, rules in per_call.items():
        if any(not r.args for r in rules) and len(rules) > 1:
            problems.append(f"{name}: an unconditional rule shares the call with other rules")
            continue
        for i, a in enumerate(rules):
            for b in rules[i + 1 :]:
                if (a.action, a.errno) != (b.action, b.errno) and not _disjoint(a, b):
                    problems.append(f"{name}: rules with different actions may both match")
    if problems:
        raise CompileError(f"{where}: unsafe rule overlap (libseccomp would keep one silently): "
                           + "; ".join(problems))  # fmt: skip


def _build(profile: SeccompProfile, default: Any, arch: int, result: Compiled) -> Any:
    name_of = _ARCH_NAME[arch]
    built = sc.SyscallFilter(default)
    if arch != sc.system_arch():
        built.add_arch(arch)
        built.remove_arch(sc.Arch.NATIVE)
    built.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)  # an unlisted ABI kills
    built.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # binary-tree dispatch
    for rule in profile.rules:
        action = _action(rule.action, rule.errno, profile.source)
        if (rule.action, rule.errno) == (profile.default.action, profile.default.errno):
            continue  # documentation: libseccomp refuses a rule equal to the default
        args = [
            sc.Arg(c.index, _OPS[c.op], c.value, c.value_two)
            if c.op == "SCMP_CMP_MASKED_EQ"
            else sc.Arg(c.index, _OPS[c.op], c.value)
            for c in rule.args
        ]
        for name in rule.names:
            number = sc.resolve_syscall(arch, name)
            if number == _UNKNOWN or number <= _ABSENT:
                result.absent.setdefault(name_of, []).append(name)
                continue
            try:
                if args:
                    built.add_rule_exactly(action, name, *args)
                else:
                    built.add_rule(action, name)
            except OSError as exc:
                if args and number < 0 and exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    # multiplexed (socketcall on i386): the conditions cannot be kept.
                    # Leaving an ALLOW out is fail-closed only under a denying default;
                    # leaving a deny out under an allowing default would open the call.
                    if rule.action not in RUNS or profile.default.action in RUNS:
                        raise CompileError(
                            f"{profile.source}: {name} on {name_of} cannot be filtered by its "
                            "arguments (multiplexed call); with this default action leaving the "
                            "rule out would let it through"
                        ) from None
                    result.fail_closed.setdefault(name_of, []).append(name)
                    continue
                raise CompileError(
                    f"{profile.source}: libseccomp refused {name} on {name_of}: {exc.strerror}"
                ) from None
    return built


def _export(built: Any) -> bytes:
    with tempfile.TemporaryFile() as handle:
        built.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def bpf_fd(program: bytes) -> int:
    """A file descriptor holding ``program``, readable from the start, for bwrap's
    ``--seccomp FD``; the caller passes it to the child and closes it."""
    return data_fd("sandbox-agent-seccomp", program)


def data_fd(name: str, data: bytes) -> int:
    """An in-memory file holding ``data``, positioned at its start (close-on-exec until
    passed on)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
