"""`sandbox-agent doctor`: the host's posture as this node really has it, each check's
judgement on both sides of its threshold, and exit 3 when the pilot cannot run jobs."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from cli_support import assert_no_traceback, cli_env, run_cli

from sandbox_agent import doctor
from sandbox_agent.doctor import MISSING, OK, SYSCTLS, WEAK


def run_doctor(*args: str, **env: str) -> tuple[int, str, str]:
    with tempfile.TemporaryDirectory(prefix="sandbox-agent-doctor-") as home:
        done = run_cli(cli_env(Path(home), **env), "doctor", *args)
    assert_no_traceback(done)
    return done.returncode, done.stdout, done.stderr


def test_every_check_reports_what_this_host_really_has() -> None:
    code, out, err = run_doctor("--json")
    assert code == 0, err
    answer = json.loads(out)
    checks = {c["name"]: c for c in answer["checks"]}
    assert answer["runs_jobs"] is True
    assert {c["status"] for c in checks.values()} <= {OK, WEAK, MISSING}
    for name in SYSCTLS:  # the value read is the kernel's, as /proc/sys says it now
        path = Path("/proc/sys", *name.split("."))
        expected = path.read_text().strip() if path.exists() else "not present"
        assert checks[name]["found"] == expected
        assert (checks[name]["status"] == OK) == (checks[name]["advice"] == "")
    assert checks["runtime bwrap"]["status"] == OK and "ran a test sandbox" in \
        checks["runtime bwrap"]["found"]  # fmt: skip
    assert checks["seccomp"]["status"] == OK
    assert checks["kernel"]["found"].startswith("Linux ")
    assert "policy default: process.seccomp" in checks


def test_the_text_gives_each_gap_its_fix_and_a_verdict() -> None:
    code, out, _err = run_doctor()
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == [OK, "kernel"]
    weak = [i for i, line in enumerate(lines) if line.startswith(WEAK)]
    for index in weak:  # a WEAK line is followed by what to do
        assert lines[index + 1].lstrip().startswith("-> ")
    assert lines[-1].endswith("the pilot can run jobs here")


def test_without_bwrap_the_pilot_cannot_run_jobs_and_doctor_says_so_with_exit_3() -> None:
    code, out, _err = run_doctor(PATH="/nonexistent")
    assert code == 3
    assert any(line.startswith("MISSING  runtime bwrap") for line in out.splitlines())
    assert out.splitlines()[-1].endswith("the pilot cannot run jobs here: runtime bwrap")


def test_an_unknown_policy_is_one_line_and_exit_2() -> None:
    code, _out, err = run_doctor("--policy", "nope")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope" in err


@pytest.mark.parametrize(
    ("name", "value", "status", "advice"),
    [
        ("kernel.yama.ptrace_scope", "0", WEAK, "kernel.yama.ptrace_scope=1"),
        ("kernel.yama.ptrace_scope", "1", OK, ""),
        ("kernel.yama.ptrace_scope", "3", OK, ""),
        ("kernel.yama.ptrace_scope", None, WEAK, "no Yama"),
        ("kernel.unprivileged_bpf_disabled", "0", WEAK, "unprivileged_bpf_disabled=2"),
        ("kernel.unprivileged_bpf_disabled", "2", OK, ""),
        ("kernel.perf_event_paranoid", "1", WEAK, "perf_event_paranoid=2"),
        ("kernel.perf_event_paranoid", "-1", WEAK, "perf_event_paranoid=2"),
        ("kernel.perf_event_paranoid", "4", OK, ""),
        ("vm.unprivileged_userfaultfd", "1", WEAK, "unprivileged_userfaultfd=0"),
        ("vm.unprivileged_userfaultfd", "0", OK, ""),
        ("dev.tty.legacy_tiocsti", "1", WEAK, "legacy_tiocsti=0"),
        ("dev.tty.legacy_tiocsti", None, WEAK, "before 6.2"),
        ("fs.protected_symlinks", "0", WEAK, "protected_symlinks=1"),
        ("fs.protected_hardlinks", "1", OK, ""),
    ],
)
def test_each_sysctl_is_judged_on_both_sides_of_its_threshold(
    name: str, value: str | None, status: str, advice: str
) -> None:
    values = {name: value}
    got = {c.name: c for c in doctor.sysctls(read=values.get)}[name]
    assert got.status == status
    assert advice in got.advice if advice else got.advice == ""
    assert got.found == (value if value is not None else "not present")


def test_a_kernel_without_landlock_is_weak_and_says_which_kernel_has_it() -> None:
    assert doctor.kernel("5.10.0-28-amd64").status == WEAK
    assert "5.13 or later" in doctor.kernel("5.10.0-28-amd64").advice
    assert doctor.kernel("6.1.0-18-amd64").status == OK


def test_a_user_namespace_switch_that_bwrap_gets_past_is_weak_not_a_refusal() -> None:
    """Ubuntu's AppArmor restriction says no to unprivileged user namespaces, but a
    profile may let bwrap through: when bwrap really made its sandbox, doctor must not
    refuse jobs for that line."""
    said_no = doctor.Check("unprivileged user namespaces", MISSING, "AppArmor restricts",
                           "allow bwrap in a profile", blocking=True)  # fmt: skip
    bwrap_ran = doctor.Check("runtime bwrap", OK, "bwrap 0.8.0 ran a test sandbox")
    bwrap_failed = doctor.Check("runtime bwrap", MISSING, "bwrap: setting up uid map",
                                blocking=True)  # fmt: skip
    overruled = doctor.overruled([said_no, bwrap_ran])
    assert (overruled[0].status, overruled[0].blocking) == (WEAK, False)
    assert "bwrap made its test sandbox all the same" in overruled[0].advice
    assert doctor.overruled([said_no, bwrap_failed])[0] == said_no


def test_the_sandboxs_python_is_checked() -> None:
    found = doctor.python()
    assert (found.status, found.name) == (OK, "python3 in the sandbox")
    assert found.found.startswith("/usr/bin/python3 is Python 3.")


def test_the_policys_images_are_checked_and_a_missing_default_image_stops_jobs(
    tmp_path: Path,
) -> None:
    import shutil

    from image_support import busybox_root, shared_dir

    base = shared_dir()
    try:
        root = busybox_root(base / "busybox")
        pin = "sha256:" + "0" * 64
        home = tmp_path / "home"
        shutil.copytree(Path(__file__).resolve().parents[1] / "policies", home / "policies")
        (home / "policies" / "images.toml").write_text(
            f'extends = "default"\n[images]\nplatforms = {{ bb = "{root}", old = "{base}/old" }}\n'
            f'pins = {{ "{root}" = "{pin}" }}\n'
        )
        (home / "policies" / "gone.toml").write_text(
            f'extends = "default"\n[filesystem]\nimage = "{base}/gone.sif"\n'
        )
        env = cli_env(home)
        done = run_cli(env, "doctor", "--policy", "images", "--json")
        assert_no_traceback(done)
        assert done.returncode == 0, done.stderr
        checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
        from sandbox_agent.images.mount import unusable

        assert checks["single-file images"]["status"] == (OK if unusable() is None else WEAK)
        assert checks["policy images: images.platforms.bb"]["status"] == OK
        assert checks["policy images: images.platforms.bb"]["found"] == f"directory {root}, pinned"
        old = checks["policy images: images.platforms.old"]
        assert (old["status"], old["blocking"]) == (MISSING, False)  # only jobs asking for it
        done = run_cli(env, "doctor", "--policy", "gone")
        assert done.returncode == 3
        assert "MISSING  policy gone: filesystem.image" in done.stdout
        assert done.stdout.splitlines()[-1].endswith("policy gone: filesystem.image")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_cgroup_remedy_is_for_this_hosts_cgroup_version() -> None:
    # a v1 host (Debian 13's kernel booted on v1 has no v1 memory controller) is not
    # told to write cgroup.subtree_control, which v1 does not have
    v1 = doctor._cgroup_remedy("v1", ["memory", "swap"])
    assert "subtree_control" not in v1 and "no memory hierarchy" in v1
    v2 = doctor._cgroup_remedy("v2", ["memory", "swap", "pids"])
    assert "delegate the memory, pids controller(s)" in v2 and "subtree_control" in v2


def test_a_python_older_than_the_wrappers_oldest_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An EL7-like node whose python3 says 3.5: one line naming it and the oldest."""
    old = tmp_path / "python3"
    old.write_text("#!/bin/sh\necho 3 5\n")
    old.chmod(0o755)
    monkeypatch.setattr(doctor, "PYTHON", str(old))
    found = doctor.python()
    assert (found.status, found.blocking) == (MISSING, True)
    assert found.found == f"{old} is Python 3.5"
    assert "need Python 3.6 or later" in found.advice
