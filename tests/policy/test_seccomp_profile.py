"""The seccomp profile reader: OCI JSON parsed strictly, and questions answered without a
kernel (what a call gets, which denials hold, which ABIs are left out, what one profile
allows beyond another).

The profiles here are written inline, shaped for each test; ``fixtures/seccomp_good.json``
is an allowlist profile that denies everything ``required_denials()`` lists and is
correct under libseccomp's own rule semantics as well (see its comment).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from sandbox_agent.seccomp.profile import (
    ALLOW,
    Denial,
    Outcome,
    ProfileError,
    SeccompProfile,
    required_denials,
)

FIXTURES = Path(__file__).parent / "fixtures"
GOOD: dict[str, Any] = json.loads((FIXTURES / "seccomp_good.json").read_text())
X86 = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
ERRNO = "SCMP_ACT_ERRNO"
TIOCSTI, TIOCLINUX, TCGETS = 0x5412, 0x541C, 0x5401
HIGH = 0x1_0000_0000


def profile(*syscalls: dict[str, Any], default: str = ERRNO, **top: Any) -> SeccompProfile:
    data: dict[str, Any] = {"defaultAction": default, "architectures": X86, **top}
    data["syscalls"] = list(syscalls)
    return SeccompProfile.parse(data, "test.json")


def good(*extra: dict[str, Any], replacing: str = "") -> SeccompProfile:
    """The good profile plus ``extra`` rules; ``replacing`` drops its rules for that call
    first (two rules for one call would make the test about precedence)."""
    data = copy.deepcopy(GOOD)
    data["syscalls"] = [r for r in data["syscalls"] if replacing not in r["names"]]
    data["syscalls"] += list(extra)
    return SeccompProfile.parse(data, "good.json")


def allow(name: str, *args: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": [name], "action": ALLOW}
    if args:
        rule["args"] = list(args)
    return rule


def arg(index: int, op: str, value: int, value_two: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "op": f"SCMP_CMP_{op}", "value": value}
    if value_two is not None:
        out["valueTwo"] = value_two
    return out


# -- parse: malformed profiles are refused with the problem named ---------------------------

MALFORMED = [
    ("not an object", ["SCMP_ACT_ERRNO"], "a profile is a JSON object"),
    ("a string", "SCMP_ACT_ERRNO", "a profile is a JSON object"),
    ("unknown top-level field",
     {"defaultAction": ERRNO, "defautlAction": ERRNO}, "unknown field(s) defautlAction"),
    ("no default action", {"architectures": X86}, "action None is not one of"),
    ("bad default action", {"defaultAction": "SCMP_ACT_DENY"}, "'SCMP_ACT_DENY' is not one of"),
    ("bad rule action",
     {"defaultAction": ERRNO, "syscalls": [{"names": ["read"], "action": "ALLOW"}]},
     "action 'ALLOW' is not one of"),
    ("bad op",
     {"defaultAction": ERRNO, "syscalls": [
         {"names": ["read"], "action": ALLOW, "args": [arg(0, "ISH", 1)]}]},
     "syscalls[0].args: op 'SCMP_CMP_ISH'"),
    ("arg index out of range",
     {"defaultAction": ERRNO, "syscalls": [
         {"names": ["read"], "action": ALLOW, "args": [arg(6, "EQ", 1)]}]},
     "index 6 invalid"),
    ("arg without op",
     {"defaultAction": ERRNO, "syscalls": [
         {"names": ["read"], "action": ALLOW, "args": [{"index": 0, "value": 1}]}]},
     "syscalls[0].args: each needs index, value and op"),
    ("arg value not a number",
     {"defaultAction": ERRNO, "syscalls": [
         {"names": ["read"], "action": ALLOW,
          "args": [{"index": 0, "value": "lots", "op": "SCMP_CMP_EQ"}]}]},
     "must be integers in 0..2^64-1"),
    ("missing names",
     {"defaultAction": ERRNO, "syscalls": [{"action": ALLOW}]},
     "syscalls[0].names must list system call names"),
    ("empty names",
     {"defaultAction": ERRNO, "syscalls": [
         {"names": ["read"], "action": ALLOW}, {"names": [], "action": ALLOW}]},
     "syscalls[1].names must list system call names"),
    ("empty name in names",
     {"defaultAction": ERRNO, "syscalls": [{"names": ["read", ""], "action": ALLOW}]},
     "syscalls[0].names must list"),
    ("rule not an object",
     {"defaultAction": ERRNO, "syscalls": ["read"]}, "syscalls[0] must be an object"),
    ("errnoRet zero",
     {"defaultAction": ERRNO, "syscalls": [{"names": ["read"], "action": ERRNO, "errnoRet": 0}]},
     "errnoRet must be an errno number"),
    ("errnoRet 4096",
     {"defaultAction": ERRNO, "syscalls": [
         {"names": ["read"], "action": ERRNO, "errnoRet": 4096}]},
     "errnoRet must be an errno number"),
    ("errnoRet negative",
     {"defaultAction": ERRNO, "syscalls": [{"names": ["read"], "action": ERRNO, "errnoRet": -1}]},
     "errnoRet must be an errno number"),
    ("errnoRet a string",
     {"defaultAction": ERRNO, "syscalls": [
         {"names": ["read"], "action": ERRNO, "errnoRet": "38"}]},
     "errnoRet must be an errno number"),
    ("defaultErrnoRet out of range",
     {"defaultAction": ERRNO, "defaultErrnoRet": 5000}, "defaultErrnoRet must be an errno number"),
    ("architecture not SCMP_ARCH_",
     {"defaultAction": ERRNO, "architectures": ["x86_64"]},
     "architecture 'x86_64' is not an SCMP_ARCH_ name"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "problem"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_parse_refuses_malformed(data: Any, problem: str) -> None:
    with pytest.raises(ProfileError) as info:
        SeccompProfile.parse(data, "site/seccomp/x.json")
    message = str(info.value)
    assert message.startswith("site/seccomp/x.json: ")
    assert problem in message


# Malformed shapes the parser lets escape as TypeError/AttributeError (so `policy lint`
# ends in a traceback) or accepts with a wrong meaning.
HOSTILE_SHAPES = [
    ("architectures null", {"defaultAction": ERRNO, "architectures": None}),
    ("syscalls a number", {"defaultAction": ERRNO, "syscalls": 5}),
    ("archMap entry a number", {"defaultAction": ERRNO, "archMap": [5]}),
    ("subArchitectures null", {"defaultAction": ERRNO, "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": None}]}),
    ("names a string", {"defaultAction": ERRNO, "syscalls": [
        {"names": "mount", "action": ALLOW}]}),
]  # fmt: skip


@pytest.mark.parametrize("data", [h[1] for h in HOSTILE_SHAPES], ids=[h[0] for h in HOSTILE_SHAPES])
def test_parse_refuses_wrong_json_types(data: dict[str, Any]) -> None:
    with pytest.raises(ProfileError):
        SeccompProfile.parse(data, "x.json")


def test_parse_refuses_unknown_rule_field() -> None:
    data = {
        "defaultAction": ERRNO,
        "architectures": X86,
        "syscalls": [{"names": ["clone"], "action": ALLOW, "arg": [arg(0, "MASKED_EQ", 0, 0)]}],
    }
    with pytest.raises(ProfileError, match="arg"):
        SeccompProfile.parse(data, "x.json")


def test_parse_accepts_the_oci_fields() -> None:
    parsed = SeccompProfile.parse(
        {
            "comment": "all the fields",
            "defaultAction": ERRNO,
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64"],
            "archMap": [
                {
                    "architecture": "SCMP_ARCH_X86_64",
                    "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                }
            ],
            "flags": [],
            "listenerPath": "",
            "syscalls": [{"name": "read", "action": ALLOW}, {"names": ["write"], "action": ALLOW}],
        },
        "x.json",
    )
    assert parsed.default == Outcome(ERRNO, 38)
    assert parsed.architectures == tuple(X86)
    assert parsed.names() == {"read", "write"}
    assert parsed.outcome("read").allowed and parsed.outcome("write").allowed


def test_load_reports_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read the seccomp profile"):
        SeccompProfile.load(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"defaultAction": "SCMP_ACT_ERRNO",')
    with pytest.raises(ProfileError, match=r"broken\.json: not valid JSON"):
        SeccompProfile.load(broken)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ProfileError, match="not valid JSON"):
        SeccompProfile.load(binary)
    huge = tmp_path / "huge.json"
    huge.write_text(" " * (1024 * 1024 + 1))
    with pytest.raises(ProfileError, match="larger than"):
        SeccompProfile.load(huge)


def test_load_reads_the_fixture(tmp_path: Path) -> None:
    path = tmp_path / "default.json"
    path.write_text(json.dumps(GOOD))
    loaded = SeccompProfile.load(path)
    assert loaded.source == str(path)
    assert loaded.default == Outcome(ERRNO, 1)
    assert loaded.architectures == tuple(X86)


# -- outcome(): each comparison ------------------------------------------------------------

COMPARISONS = [
    # op, value, valueTwo, {argument: allowed?}
    ("EQ", 8, None, {8: True, 7: False, 9: False, 8 + HIGH: False}),
    ("NE", 8, None, {8: False, 7: True, 9: True, 8 + HIGH: True}),
    ("LT", 8, None, {7: True, 8: False, 9: False, 0: True}),
    ("LE", 8, None, {7: True, 8: True, 9: False}),
    ("GT", 8, None, {9: True, 8: False, 7: False, HIGH: True}),
    ("GE", 8, None, {9: True, 8: True, 7: False}),
    # MASKED_EQ: `value` is the mask, `valueTwo` the datum: (arg & 0xff00) == 0x1200
    ("MASKED_EQ", 0xFF00, 0x1200, {0x1200: True, 0x12FF: True, 0x1234: True, 0x1334: False,
                                   0xFF00: False, 0x0012: False, 0x1_0000_1200: True}),
    # a zero datum: "none of the masked bits set" (how clone is allowed without CLONE_NEW*)
    ("MASKED_EQ", 0x7E020000, 0, {17: True, 0x10000000 | 17: False, 0x00020000: False}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("op", "value", "value_two", "cases"),
    COMPARISONS,
    ids=[f"{c[0]}-{c[1]:#x}" for c in COMPARISONS],
)
def test_outcome_comparisons(
    op: str, value: int, value_two: int | None, cases: dict[int, bool]
) -> None:
    filtered = profile(allow("personality", arg(0, op, value, value_two)))
    for argument, allowed in cases.items():
        got = filtered.outcome("personality", (argument,))
        assert got.allowed is allowed, f"{op} {value:#x}: personality({argument:#x}) -> {got}"
        if not allowed:
            assert got == Outcome(ERRNO, 1)  # the default action


def test_masked_eq_mask_and_datum_are_not_swapped() -> None:
    """With the mask and the datum the other way round, the same numbers mean another rule."""
    right = profile(allow("ioctl", arg(1, "MASKED_EQ", 0xFFFFFFFF, TIOCSTI)))
    swapped = profile(allow("ioctl", arg(1, "MASKED_EQ", TIOCSTI, 0xFFFFFFFF)))
    assert right.outcome("ioctl", (0, TIOCSTI)).allowed
    assert right.outcome("ioctl", (0, HIGH | TIOCSTI)).allowed
    assert not right.outcome("ioctl", (0, TCGETS)).allowed
    # (x & 0x5412) can never equal 0xffffffff
    assert not any(swapped.outcome("ioctl", (0, x)).allowed for x in (TIOCSTI, 0xFFFFFFFF, 0))


def test_conditions_of_one_rule_all_hold() -> None:
    filtered = profile(allow("socket", arg(0, "EQ", 2), arg(1, "EQ", 1)))
    assert filtered.outcome("socket", (2, 1, 0)).allowed
    assert not filtered.outcome("socket", (2, 2, 0)).allowed
    assert not filtered.outcome("socket", (10, 1, 0)).allowed


def test_missing_arguments_read_as_zero() -> None:
    filtered = profile(allow("personality", arg(0, "EQ", 0)))
    assert filtered.outcome("personality").allowed
    assert filtered.outcome("personality", ()).allowed
    other = profile(allow("mmap", arg(5, "EQ", 7)))
    assert not other.outcome("mmap", (0, 0, 0)).allowed


def test_rules_of_several_names_and_the_default() -> None:
    filtered = profile(
        {"names": ["read", "write"], "action": ALLOW},
        {"names": ["mount"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["clone3"], "action": ERRNO, "errnoRet": 38},
        default=ERRNO,
        defaultErrnoRet=13,
    )
    assert filtered.outcome("read") == Outcome(ALLOW, None)
    assert filtered.outcome("write") == Outcome(ALLOW, None)
    assert filtered.outcome("mount") == Outcome("SCMP_ACT_KILL_PROCESS", None)
    assert filtered.outcome("clone3") == Outcome(ERRNO, 38)
    assert filtered.outcome("unshare") == Outcome(ERRNO, 13)
    assert filtered.names() == {"read", "write", "mount", "clone3"}


def test_errno_rule_without_errnoret_is_eperm() -> None:
    filtered = profile({"names": ["clone3"], "action": ERRNO}, default=ALLOW)
    assert filtered.outcome("clone3") == Outcome(ERRNO, 1)
    assert filtered.outcome("read") == Outcome(ALLOW, None)


def test_conditional_rules_for_one_call() -> None:
    """Several conditional rules for one call: the one whose conditions hold decides."""
    filtered = profile(
        allow("personality", arg(0, "LT", 10)),
        {"names": ["personality"], "action": ERRNO, "errnoRet": 22, "args": [arg(0, "GT", 100)]},
        default=ALLOW,
    )
    assert filtered.outcome("personality", (5,)) == Outcome(ALLOW, None)
    assert filtered.outcome("personality", (50,)) == Outcome(ALLOW, None)  # the default
    assert filtered.outcome("personality", (500,)) == Outcome(ERRNO, 22)


# libseccomp 2.5.4 (the library the BPF compiler uses), checked by loading filters:
# an unconditional rule for a call makes libseccomp drop every conditional rule for it,
# whichever comes first; of two unconditional rules the first one added stays.
LIBSECCOMP_PRECEDENCE = [
    ("unconditional allow, conditional deny",
     [allow("ioctl"),
      {"names": ["ioctl"], "action": ERRNO, "args": [arg(1, "MASKED_EQ", 0xFFFFFFFF, TIOCSTI)]}],
     ("ioctl", (0, TIOCSTI))),
    ("conditional deny, then unconditional allow",
     [{"names": ["ioctl"], "action": ERRNO, "args": [arg(1, "MASKED_EQ", 0xFFFFFFFF, TIOCSTI)]},
      allow("ioctl")],
     ("ioctl", (0, TIOCSTI))),
    ("allow, then deny, both unconditional",
     [allow("mount"), {"names": ["mount"], "action": ERRNO}],
     ("mount", ())),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rules", "call"),
    [c[1:] for c in LIBSECCOMP_PRECEDENCE],
    ids=[c[0] for c in LIBSECCOMP_PRECEDENCE],
)
def test_precedence_follows_libseccomp(
    rules: list[dict[str, Any]], call: tuple[str, tuple[int, ...]]
) -> None:
    assert profile(*rules).outcome(*call).allowed


def test_log_action_lets_the_call_through() -> None:
    logged = good({"names": ["mount"], "action": "SCMP_ACT_LOG"})
    assert not logged.enforces(Denial("mount"))


# -- required_denials() ----------------------------------------------------------------------

PLAIN_DENIALS = {
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsmount", "move_mount", "open_tree", "fsconfig", "fspick",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_getfd", "kcmp", "swapon", "swapoff", "reboot", "acct", "quotactl",
    "settimeofday", "clock_settime", "adjtimex", "sethostname", "setdomainname",
    "syslog", "iopl", "ioperm",
}  # fmt: skip
CLONE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}  # fmt: skip


def test_required_denials_cover_the_list() -> None:
    denials = required_denials()
    labels = [d.describe() for d in denials]
    assert len(labels) == len(set(labels)), "each denial is named once"
    assert {d.syscall for d in denials if not d.args} == PLAIN_DENIALS
    clones = {d.describe(): d for d in denials if d.syscall == "clone"}
    assert set(clones) == {f"clone with {name}" for name in CLONE_FLAGS}
    for name, bit in CLONE_FLAGS.items():
        flags = clones[f"clone with {name}"].args[0]
        assert flags & bit and flags & 0xFF == 17  # the flag, with SIGCHLD as a real clone
    (clone3,) = [d for d in denials if d.syscall == "clone3"]
    assert clone3.errno == 38
    ioctls = {d.args[1] for d in denials if d.syscall == "ioctl"}
    assert ioctls == {TIOCSTI, TIOCLINUX, HIGH | TIOCSTI, HIGH | TIOCLINUX}
    sockets = {d.args[0] for d in denials if d.syscall == "socket"}
    assert sockets == {38, 40}  # AF_ALG, AF_VSOCK
    (persona,) = [d for d in denials if d.syscall == "personality"]
    assert persona.args == (0x0400000,)  # READ_IMPLIES_EXEC
    expected = len(PLAIN_DENIALS) + len(CLONE_FLAGS) + 1 + 4 + 2 + 1
    assert len(denials) == expected


def test_the_good_profile_enforces_every_denial() -> None:
    assert [d.describe() for d in required_denials() if not good().enforces(d)] == []


@pytest.mark.parametrize("denial", required_denials(), ids=lambda d: d.describe())
def test_each_denial_fails_when_its_call_is_allowed(denial: Denial) -> None:
    opened = good(allow(denial.syscall), replacing=denial.syscall)
    assert not opened.enforces(denial)
    assert opened.outcome(denial.syscall, denial.args).allowed


def test_denials_hold_under_an_allow_default_with_explicit_denies() -> None:
    """A denylist profile (allow by default) that names each call enforces them too."""
    denylist = profile(
        {"names": sorted(PLAIN_DENIALS), "action": ERRNO},
        {"names": ["clone3"], "action": ERRNO, "errnoRet": 38},
        {
            "names": ["clone"],
            "action": ERRNO,
            "args": [arg(0, "MASKED_EQ", 0x7E020000, 0x10000000)],
        },
        default=ALLOW,
    )
    held = {d.describe() for d in required_denials() if denylist.enforces(d)}
    assert held >= PLAIN_DENIALS
    assert "clone3 (flags unreadable: must fail with ENOSYS)" in held
    assert "clone with CLONE_NEWUSER" in held
    assert "clone with CLONE_NEWNET" not in held  # only NEWUSER's bit was denied


def test_clone3_must_fail_with_enosys() -> None:
    (clone3,) = [d for d in required_denials() if d.syscall == "clone3"]
    eperm = good({"names": ["clone3"], "action": ERRNO, "errnoRet": 1}, replacing="clone3")
    assert eperm.outcome("clone3", clone3.args) == Outcome(ERRNO, 1)
    killed = profile({"names": ["clone3"], "action": "SCMP_ACT_KILL"})
    by_default = profile(default=ERRNO, defaultErrnoRet=38)
    assert good().enforces(clone3)
    assert not eperm.enforces(clone3)
    assert not killed.enforces(clone3)
    assert by_default.enforces(clone3)


def test_ioctl_high_bits_variant() -> None:
    """Comparing the full 64-bit value misses TIOCSTI with the upper half set (the kernel
    reads the command as a 32-bit int)."""
    unmasked = profile(
        allow("ioctl", arg(1, "LT", TIOCSTI)),
        allow("ioctl", arg(1, "GT", TIOCLINUX)),
        *(allow("ioctl", arg(1, "EQ", x)) for x in range(TIOCSTI + 1, TIOCLINUX)),
    )
    missed = {d.describe() for d in required_denials() if d.syscall == "ioctl"}
    missed -= {d.describe() for d in required_denials() if unmasked.enforces(d)}
    assert missed == {"ioctl TIOCSTI with high bits set", "ioctl TIOCLINUX with high bits set"}
    assert unmasked.outcome("ioctl", (0, TCGETS)).allowed


# -- missing_architectures() -----------------------------------------------------------------

ARCHITECTURES = [
    ([], ["every architecture (the list is empty)"]),
    (["SCMP_ARCH_X86_64"], ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
    (["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"], ["SCMP_ARCH_X32"]),
    (["SCMP_ARCH_X86"], ["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]),
    (X86, []),
    (["SCMP_ARCH_AARCH64"], ["SCMP_ARCH_ARM"]),
    (["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"], []),
    ([*X86, "SCMP_ARCH_AARCH64"], ["SCMP_ARCH_ARM"]),
    (["SCMP_ARCH_PPC64LE"], []),
]


@pytest.mark.parametrize(("architectures", "missing"), ARCHITECTURES)
def test_missing_architectures(architectures: list[str], missing: list[str]) -> None:
    parsed = SeccompProfile.parse(
        {"defaultAction": ERRNO, "architectures": architectures}, "x.json"
    )
    assert parsed.missing_architectures() == missing


def test_arch_map_counts_as_architectures() -> None:
    parsed = SeccompProfile.parse(
        {
            "defaultAction": ERRNO,
            "archMap": [
                {
                    "architecture": "SCMP_ARCH_X86_64",
                    "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                },
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
            ],
        },
        "x.json",
    )
    assert parsed.missing_architectures() == []
    partial = SeccompProfile.parse(
        {"defaultAction": ERRNO, "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}, "x.json"
    )
    assert partial.missing_architectures() == ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]


# -- allows_beyond() ---------------------------------------------------------------------------


def test_allows_beyond_nothing_for_the_same_profile() -> None:
    assert list(good().allows_beyond(good())) == []


def test_allows_beyond_names_the_widening_in_one_direction() -> None:
    wider = good(allow("mount"), allow("fchownat"))
    beyond = set(wider.allows_beyond(good()))
    assert beyond == {"mount", "fchownat"}
    assert list(good().allows_beyond(wider)) == []


def test_allows_beyond_with_arguments() -> None:
    """A call opened for some arguments only shows as the required denial it breaks."""
    wider = good(allow("clone", arg(0, "MASKED_EQ", 0x10000000, 0x10000000)))
    assert list(wider.allows_beyond(good())) == ["clone with CLONE_NEWUSER"]
    tty = good(allow("ioctl", arg(1, "EQ", TIOCSTI)))
    assert list(tty.allows_beyond(good())) == ["ioctl TIOCSTI"]


def test_allows_beyond_ignores_errno_changes() -> None:
    """clone3 answering EPERM instead of ENOSYS still denies it: not a widening."""
    eperm = good({"names": ["clone3"], "action": ERRNO, "errnoRet": 1}, replacing="clone3")
    (clone3,) = [d for d in required_denials() if d.syscall == "clone3"]
    assert not eperm.enforces(clone3)  # lint refuses it, but it is no widening
    assert list(eperm.allows_beyond(good())) == []


def test_allows_beyond_names_each_call_once() -> None:
    assert list(good(allow("mount")).allows_beyond(good())) == ["mount"]


def test_an_allow_on_a_plain_denial_is_caught_whatever_its_conditions() -> None:
    # found in review: "allow keyctl when arg0 != 0" passed the one-vector check
    sneaky = profile(
        {"names": ["keyctl"], "action": ALLOW,
         "args": [{"index": 0, "op": "SCMP_CMP_NE", "value": 0}]},
        default=ERRNO,
    )  # fmt: skip
    assert not sneaky.enforces(Denial("keyctl"))


@pytest.mark.parametrize("value", [1 << 64, -1, 1.5, "1", True])
def test_argument_values_are_64_bit_integers(value: object) -> None:
    # libseccomp truncates to 64 bits: the reader must not judge another value
    with pytest.raises(ProfileError, match=r"integers in 0\.\.2"):
        SeccompProfile.parse(
            {"defaultAction": ERRNO, "syscalls": [
                {"names": ["keyctl"], "action": ALLOW,
                 "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": value}]}]},
            "x.json",
        )  # fmt: skip


def test_a_device_or_deep_nesting_is_refused_not_read(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not a regular file"):
        SeccompProfile.load(Path("/dev/zero"))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ProfileError):
        SeccompProfile.load(deep)
