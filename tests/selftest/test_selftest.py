"""`sandbox-agent selftest` through the console script, with the real sandbox: every
probe blocked under the shipped policy, and each of three defences turned off in turn
(a test-only policy) making its probe say LEAKED and the exit code 1: a probe that
cannot fail would prove nothing."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, SCRIPT, assert_no_traceback, cli_env, run_cli

from sandbox_agent.policy.gate import Answer, Verdict
from sandbox_agent.selftest.probe_in_sandbox import (
    SelftestError,
    _rows,
    attack_table,
    defence_here,
)
from sandbox_agent.selftest.stage import CANARY_PREFIX

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

ALLOW_ALL = {"defaultAction": "SCMP_ACT_ALLOW",
             "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]}  # fmt: skip
CONTROLS = {
    # the host's PID namespace and its /proc (the deny list without /proc/sys, so that
    # /proc may be bound), landlock off (its signal scoping is a defence too)
    "no-pid-namespace": """extends = "default"
[namespaces]
pid = "off"
[filesystem]
proc = "off"
read_only = ["/proc"]
deny = ["/root", "/home", "/etc/shadow", "/sys"]
[process]
landlock = "off"
""",
    "no-seccomp": """extends = "default"
[process]
seccomp = "seccomp/allow-all.json"
""",
    "no-environment-allowlist": """extends = "default"
[process.environment]
allow = { append = ["SANDBOX_AGENT_SELFTEST_SECRET"] }
""",
}


@pytest.fixture
def home() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="sandbox-agent-selftest-"))
    base.chmod(0o711)  # the sandbox's uid (as root) reaches the work area under it
    policies = base / "home" / "policies"  # beside the shipped ones they extend
    shutil.copytree(ROOT / "policies", policies)
    (policies / "seccomp" / "allow-all.json").write_text(json.dumps(ALLOW_ALL))
    for name, text in CONTROLS.items():
        (policies / f"{name}.toml").write_text(text)
    yield base / "home"
    shutil.rmtree(base)


def selftest(home: Path, *args: str) -> tuple[int, dict[str, object] | str]:
    done = run_cli(cli_env(home), "selftest", *args)
    assert_no_traceback(done)
    if "--json" in args and done.returncode in (0, 1):
        return done.returncode, json.loads(done.stdout)
    return done.returncode, done.stdout + done.stderr


def verdicts(answer: dict[str, object] | str) -> dict[str, str]:
    assert isinstance(answer, dict)
    rows = answer["attacks"]
    assert isinstance(rows, list)
    return {row["attack"]: row["result"] for row in rows}


def test_under_the_shipped_policy_every_attack_is_blocked_or_not_applicable(home: Path) -> None:
    code, answer = selftest(home, "--json")
    assert code == 0, answer
    got = verdicts(answer)
    assert list(got) == list(attack_table())  # every attack, in the table's order
    assert "LEAKED" not in got.values()
    assert isinstance(answer, dict) and answer["leaked"] == [] and answer["host_saw"] == []
    # the canaries were planted where the pilot's credentials are, and all taken away
    assert got["key_file"] == "blocked" and got["env_self"] == "blocked"
    assert list((home / "certs").iterdir()) == []
    assert list((home / "work").iterdir()) == []
    assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith("sandbox-agent-probe")]


def test_the_table_names_each_attack_its_defence_and_the_tally(home: Path) -> None:
    code, text = selftest(home, "key_file", "keyctl", "tiocsti")
    assert code == 0, text
    assert isinstance(text, str)
    lines = text.splitlines()
    assert lines[0].split() == ["ATTACK", "RESULT", "MS", "EXPECTED", "DEFENCE"]
    assert lines[1].startswith("key_file           blocked")
    assert "mount namespace: the credential directory is on the deny list" in lines[1]
    assert lines[2].split()[:2] == ["tiocsti", "n/a"]  # in the table's order
    assert lines[3].split()[:2] == ["keyctl", "blocked"] and "seccomp profile" in lines[3]
    assert "tiocsti: no terminal" in text  # not applicable, and why
    assert lines[-1].startswith("3 attacks: 2 blocked, 0 LEAKED, 1 not applicable here")


@pytest.mark.parametrize(
    ("policy", "leaks"),
    [
        ("no-pid-namespace", ["signal_host", "pidfd_host"]),
        ("no-seccomp", ["keyctl"]),
        ("no-environment-allowlist", ["env_self"]),
    ],
)
def test_each_defence_turned_off_makes_its_probe_say_leaked_and_the_exit_code_1(
    home: Path, policy: str, leaks: list[str]
) -> None:
    code, answer = selftest(home, "--policy", policy, "--json")
    assert code == 1, answer
    got = verdicts(answer)
    assert {name: got[name] for name in leaks} == dict.fromkeys(leaks, "LEAKED")
    assert isinstance(answer, dict)
    assert [line.split(":")[0] for line in answer["leaked"]][: len(leaks)] == leaks
    # and only what that defence guards: the credential directory stays out of reach
    assert got["key_file"] == "blocked"


def test_a_leak_is_shown_in_the_table_with_what_got_out(home: Path) -> None:
    code, text = selftest(home, "--policy", "no-environment-allowlist", "env_self")
    assert code == 1
    assert isinstance(text, str)
    assert "env_self           LEAKED" in text
    assert "LEAKED:\n  env_self: " in text and "SANDBOX_AGENT_SELFTEST_SECRET" in text
    assert text.splitlines()[-1].startswith("1 attacks: 0 blocked, 1 LEAKED")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--runtime", "no-such-runtime"), 3, "--runtime no-such-runtime: unknown runtime"),
        (("no_such_attack",), 3, "selftest: no such attack: no_such_attack"),
        (("--policy", "missing"), 2, "missing"),
    ],
)
def test_what_the_selftest_cannot_do_is_one_line(
    home: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    got, text = selftest(home, *args)
    assert got == code and message in str(text)
    assert len(str(text).strip().splitlines()) == 1


def test_the_list_names_every_attack_with_its_threat(home: Path) -> None:
    code, text = selftest(home, "--list")
    assert code == 0
    assert [line.split()[0] for line in str(text).splitlines()] == list(attack_table())


def test_a_pilot_whose_sandbox_leaks_takes_no_work_and_exits_3(home: Path) -> None:
    """The preflight: the canary part of the selftest runs before the first match."""
    env = cli_env(home)
    submitted = run_cli(env, "submit", "samples/hello.jdl")
    assert submitted.returncode == 0, submitted.stderr
    ran = run_cli(env, "run", "--once", "--policy", "no-environment-allowlist")
    assert_no_traceback(ran)
    assert ran.returncode == 3, ran.stderr
    assert ran.stderr.startswith("sandbox-agent: preflight: the sandbox leaked (env_self: ")
    assert "expected defence: bwrap --clearenv and an allowlist of variables" in ran.stderr
    assert len(ran.stderr.splitlines()) == 1
    assert "matched" not in ran.stdout
    listed = json.loads(run_cli(env, "jobs", "--json").stdout)
    assert [job["state"] for job in listed] == ["WAITING"]  # untouched, for a sound pilot
    fine = run_cli(env, "run", "--once", "--json")
    assert fine.returncode == 0, fine.stderr
    events = [json.loads(line) for line in fine.stdout.splitlines()]
    assert [e["event"] for e in events][:3] == ["agent", "preflight", "matched"]
    assert events[1]["leaked"] == [] and events[1]["attacks"] >= 20


def test_a_selftest_stopped_by_sigterm_takes_every_canary_away(home: Path) -> None:
    """Batch systems stop jobs with SIGTERM: the canary key must not stay in HOME/certs,
    nor the decoy process, the SysV segment or the /dev/shm file on the node."""
    process = subprocess.Popen([str(SCRIPT), "selftest"], env=cli_env(home), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    certs = home / "certs"
    deadline = time.monotonic() + 30
    while not (certs.is_dir() and any(p.name.startswith(CANARY_PREFIX) for p in certs.iterdir())):
        assert time.monotonic() < deadline, "the canaries were never planted"
        time.sleep(0.02)
    segments_before = _segments()
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert err.startswith("sandbox-agent: stopped by SIGTERM; the canaries were taken away")
    assert [p for p in certs.iterdir() if p.name.startswith(CANARY_PREFIX)] == []
    assert not [p for p in Path("/dev/shm").iterdir() if p.name.startswith("sandbox-agent-probe")]
    assert len(_segments()) < len(segments_before)  # its segment is gone
    assert list((home / "work").iterdir()) == []
    assert not any(b"sandbox-agent-decoy-" in _cmdline(p) for p in Path("/proc").iterdir())


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes() if process.name.isdigit() else b""
    except OSError:
        return b""


def _segments() -> list[str]:
    return [line for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:] if line]


def test_an_answer_that_does_not_cover_what_was_asked_is_no_proof() -> None:
    """The probe's answer comes from the payload's stdout: a missing attack, an unknown
    result or a row that is not a row fails the selftest, never passes it."""
    table = attack_table()
    blocked = {"result": "blocked", "detail": "EPERM"}
    with pytest.raises(SelftestError, match="missing: keyctl"):
        _rows({"bpf": blocked}, table, ["bpf", "keyctl"])
    with pytest.raises(SelftestError, match="not asked: bpf"):
        _rows({"bpf": blocked, "keyctl": blocked}, table, ["keyctl"])
    for bad in ({"result": "fine"}, "blocked", None):
        with pytest.raises(SelftestError, match="not blocked, LEAKED or n/a"):
            _rows({"keyctl": bad}, table, ["keyctl"])
    rows = _rows({"keyctl": blocked, "bpf": {**blocked, "ms": "x"}}, table, ["bpf", "keyctl"])
    assert [(r.attack, r.result) for r in rows] == [("keyctl", "blocked"), ("bpf", "blocked")]


def test_a_work_area_the_preflight_cannot_use_is_one_line_and_exit_3(home: Path) -> None:
    (home.parent / "real").mkdir()
    (home.parent / "link").symlink_to(home.parent / "real")
    ran = run_cli(cli_env(home), "run", "--once", "--work-area", home.parent / "link" / "work")
    assert_no_traceback(ran)
    assert ran.returncode == 3 and len(ran.stderr.splitlines()) == 1, ran.stderr


def test_the_expected_defence_is_what_this_host_holds() -> None:
    # the probe's table is the same everywhere; the column says what the gate's answer
    # for the plan that ran, and this kernel's landlock ABI, really hold
    text = "network namespace; landlock: no TCP connect"
    held = Answer("process.landlock", Verdict.ENFORCED, "landlock ABI 7: ...", "wrapper")
    assert defence_here(text, held, 7) == text
    assert defence_here(text, held, 3) == (
        "network namespace; (landlock: no TCP connect: not here, this kernel's landlock ABI is 3)"
    )
    missing = Answer("process.landlock", Verdict.OPTIONAL, "this kernel has no landlock", "wrapper")
    assert defence_here(text, missing, 0) == (
        "network namespace; (landlock: not here, this kernel has no landlock)"
    )
    assert defence_here(text, None, 7) == "network namespace; (landlock: off in this policy)"
    assert defence_here("pid namespace; landlock ABI 6 signal scoping", held, 5).endswith(
        "not here, this kernel's landlock ABI is 5)"
    )
