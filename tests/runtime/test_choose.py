"""Runtime detection and choice.

bwrap is checked for real: the real binary, a test sandbox really started (as uid
65534 when the tests run as root, as the launcher does). Docker's client is real too,
with no engine behind it. Apptainer, Singularity and Podman are not on this host: small
shell scripts written here stand in for them. Those check our detection logic (which
path is looked at, how a version is read, which message a failure gives); whether the
real tools run jobs needs the real tools, and the canary self-test in the real sandbox.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from sandbox_agent.runtime import choose as choose_module
from sandbox_agent.runtime.choose import (
    AUTO_ORDER,
    RUNTIMES,
    Availability,
    RuntimeUnavailable,
    available,
    choose,
)
from sandbox_agent.runtime.launch import SANDBOX_HOST_UID

REAL_BWRAP = shutil.which("bwrap")
REAL_DOCKER = shutil.which("docker")
ROOT = os.geteuid() == 0
AS_USER = f" as uid {SANDBOX_HOST_UID}" if ROOT else ""
BWRAP_HINT = "Debian/Ubuntu: apt-get install bubblewrap; EL: dnf install bubblewrap"
GENERIC_USERNS_HINT = (
    "are user namespaces disabled? (sysctl kernel.unprivileged_userns_clone=0 / "
    "user.max_user_namespaces=0 / AppArmor: kernel.apparmor_restrict_unprivileged_userns=1)"
)
needs_bwrap = pytest.mark.skipif(REAL_BWRAP is None, reason="bwrap is not installed")


@pytest.fixture
def bindir() -> Iterator[Path]:
    """An empty directory for PATH that uid 65534 can reach too (pytest's tmp_path is
    under a 0700 directory of root's), since bwrap's test sandbox runs as 65534 as root."""
    directory = Path(tempfile.mkdtemp(prefix="choose-test-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.fixture
def no_cvmfs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[str, str]:
    """CVMFS locations that do not exist, so a host with CVMFS mounted gives the same
    answers."""
    dirs = (str(tmp_path / "cvmfs-a" / "bin"), str(tmp_path / "cvmfs-b" / "bin"))
    monkeypatch.setattr(choose_module, "CVMFS_BIN_DIRS", dirs)
    return dirs


def script(directory: Path, name: str, body: str) -> Path:
    """An executable shell script: a stand-in for a tool this host does not have."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def log_file(directory: Path) -> Path:
    """A file any uid may append to, for a stand-in to record how it was run."""
    path = directory / "calls.log"
    path.touch()
    path.chmod(0o666)
    return path


def fake_bwrap(directory: Path, version: str, then: str) -> Path:
    return script(
        directory,
        "bwrap",
        f'if [ "$1" = "--version" ]; then echo "bubblewrap {version}"; exit 0; fi\n{then}\n',
    )


# -- bwrap, for real -----------------------------------------------------------------------


@needs_bwrap
def test_real_bwrap_works_and_reports_its_version() -> None:
    assert REAL_BWRAP is not None
    found = available("bwrap", environ={"PATH": os.path.dirname(REAL_BWRAP)})
    printed = subprocess.run([REAL_BWRAP, "--version"], capture_output=True, text=True).stdout
    assert found.ok, found.reason
    assert found.version == printed.split()[1]
    assert tuple(int(part) for part in found.version.split(".")) >= (0, 8, 0)
    assert found.binary == REAL_BWRAP
    assert found.reason == f"bwrap {found.version} ran a test sandbox{AS_USER}"


@needs_bwrap
def test_bwrap_found_through_a_path_holding_only_a_symlink(bindir: Path) -> None:
    assert REAL_BWRAP is not None
    (bindir / "bwrap").symlink_to(REAL_BWRAP)
    found = available("bwrap", environ={"PATH": str(bindir)})
    assert found.ok, found.reason
    assert found.binary == str(bindir / "bwrap")


@needs_bwrap
def test_bwrap_test_sandbox_really_runs_as_the_launcher_would(bindir: Path) -> None:
    # a wrapper around the real bwrap that records who ran it and with which arguments
    assert REAL_BWRAP is not None
    log = log_file(bindir)
    script(bindir, "bwrap", f'echo "$(/usr/bin/id -u) $(/usr/bin/id -G) $*" >> {log}\n'
                            f'exec {REAL_BWRAP} "$@"\n')  # fmt: skip
    found = available("bwrap", environ={"PATH": str(bindir), "SECRET": "not for bwrap"})
    assert found.ok, found.reason
    version_call, sandbox_call = log.read_text().splitlines()
    assert version_call.split(" ", 2)[2] == "--version"
    uid, groups, arguments = sandbox_call.split(" ", 2)
    if ROOT:
        assert (uid, groups) == (str(SANDBOX_HOST_UID), str(SANDBOX_HOST_UID))
    else:
        assert uid == str(os.getuid())
    assert arguments.startswith("--unshare-user --unshare-pid")
    assert "--disable-userns" in arguments
    assert arguments.endswith("-- /bin/true")


def test_bwrap_failing_its_test_sandbox_gives_bwraps_message(
    bindir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(choose_module, "_SYSCTL", tmp_path)  # no sysctl names a cause
    fake_bwrap(bindir, "0.8.0", 'echo "bwrap: setting up uid map: Permission denied" >&2; exit 1')
    found = available("bwrap", environ={"PATH": str(bindir)})
    assert found == Availability(
        "bwrap",
        str(bindir / "bwrap"),
        False,
        f"bwrap could not start a test sandbox{AS_USER}: bwrap: setting up uid map: "
        f"Permission denied; {GENERIC_USERNS_HINT}",
        "0.8.0",
    )


def test_bwrap_failure_unrelated_to_namespaces_has_no_userns_hint(bindir: Path) -> None:
    fake_bwrap(bindir, "0.9.0", 'echo "bwrap: Can\'t find source path /: Permission denied" >&2'
                                "; exit 1")  # fmt: skip
    found = available("bwrap", environ={"PATH": str(bindir)})
    assert found.reason == (
        f"bwrap could not start a test sandbox{AS_USER}: "
        "bwrap: Can't find source path /: Permission denied"
    )


@pytest.mark.parametrize(
    ("files", "hint"),
    [
        ({"user/max_user_namespaces": "0\n"},
         "user namespaces are disabled (sysctl user.max_user_namespaces=0; raise it)"),
        ({"user/max_user_namespaces": "63000\n", "kernel/unprivileged_userns_clone": "0\n"},
         "user namespaces are disabled (sysctl kernel.unprivileged_userns_clone=0; set it to 1)"),
        ({"kernel/apparmor_restrict_unprivileged_userns": "1\n"},
         "AppArmor restricts unprivileged user namespaces (kernel."
         "apparmor_restrict_unprivileged_userns=1; give bwrap a profile that allows them)"),
        ({"kernel/unprivileged_userns_clone": "1\n"}, GENERIC_USERNS_HINT),
    ],
)  # fmt: skip
def test_userns_failure_names_the_sysctl_that_causes_it(
    files: dict[str, str], hint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # a made-up /proc/sys: this checks which message each setting gives
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(choose_module, "_SYSCTL", tmp_path)
    assert choose_module._userns_hint() == hint


def test_bwrap_missing_from_path_gives_the_install_hint(bindir: Path) -> None:
    found = available("bwrap", environ={"PATH": str(bindir)})
    assert found == Availability("bwrap", None, False, f"not on PATH ({BWRAP_HINT})")


def test_bwrap_too_old(bindir: Path) -> None:
    fake_bwrap(bindir, "0.4.0", "exit 0")
    found = available("bwrap", environ={"PATH": str(bindir)})
    assert not found.ok
    assert found.version == "0.4.0"
    assert found.reason == "bwrap 0.4.0 is older than 0.8.0 (needs --disable-userns)"


def test_bwrap_with_an_unreadable_version(bindir: Path) -> None:
    script(bindir, "bwrap", 'echo "bwrap, some version"\n')
    found = available("bwrap", environ={"PATH": str(bindir)})
    assert found.reason == ("bwrap --version printed 'bwrap, some version', not 'bubblewrap X.Y.Z'")


def test_bwrap_test_sandbox_that_hangs_times_out(
    bindir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(choose_module, "TIMEOUT", 0.3)
    fake_bwrap(bindir, "0.8.0", "exec /bin/sleep 30")
    found = available("bwrap", environ={"PATH": str(bindir)})
    assert not found.ok
    assert found.reason == f"bwrap's test sandbox{AS_USER} did not finish within 0.3 s"


@pytest.mark.skipif(not ROOT, reason="the test sandbox changes user only when run as root")
def test_bwrap_that_uid_65534_cannot_execute_is_not_available(tmp_path: Path) -> None:
    # pytest's tmp_path is under a 0700 directory: root runs --version, 65534 cannot run it
    fake_bwrap(tmp_path / "bin", "0.8.0", "exit 0")
    found = available("bwrap", environ={"PATH": str(tmp_path / "bin")})
    assert not found.ok
    assert found.reason == (
        f"cannot run {tmp_path}/bin/bwrap as uid {SANDBOX_HOST_UID}: Permission denied"
    )


def test_a_tool_that_is_not_a_program_is_a_reason_not_an_exception(bindir: Path) -> None:
    path = bindir / "bwrap"
    path.write_bytes(b"\x7fELF garbage")
    path.chmod(0o755)
    found = available("bwrap", environ={"PATH": str(bindir)})
    assert not found.ok
    assert found.reason == f"cannot run {path}: Exec format error"


def test_a_tools_message_becomes_one_printable_line(bindir: Path) -> None:
    fake_bwrap(bindir, "0.8.0", r"printf 'bwrap: bad\033[31m thing\nsecond line\n' >&2; exit 1")
    found = available("bwrap", environ={"PATH": str(bindir)})
    said = "bwrap: bad\\x1b[31m thing"  # the ESC shown as its escape; one line
    assert found.reason == f"bwrap could not start a test sandbox{AS_USER}: {said}"


# -- Docker, for real; Podman stood in for -------------------------------------------------


@pytest.mark.skipif(REAL_DOCKER is None, reason="the docker client is not installed")
def test_real_docker_client_without_an_engine() -> None:
    assert REAL_DOCKER is not None
    found = available("docker", environ={"PATH": os.path.dirname(REAL_DOCKER)})
    if found.ok:
        pytest.skip(f"a Docker engine answers here ({found.version})")
    assert found.binary == REAL_DOCKER
    assert found.reason.startswith("the Docker engine is not running (docker version: ")
    assert found.reason.endswith(")")
    assert "\n" not in found.reason


def test_docker_missing_from_path(bindir: Path) -> None:
    assert available("docker", environ={"PATH": str(bindir)}).reason == (
        "not on PATH (install Docker Engine: https://docs.docker.com/engine/install/)"
    )


def test_podman_stand_in_that_answers(bindir: Path) -> None:
    log = log_file(bindir)
    script(bindir, "podman", f'echo "$*" >> {log}; /usr/bin/env | /usr/bin/sort >> {log}\n'
                             'echo 4.9.3\n')  # fmt: skip
    environ = {
        "PATH": str(bindir),
        "HOME": "/home/pilot",
        "XDG_RUNTIME_DIR": "/run/user/7",
        "CONTAINER_HOST": "unix:///run/podman.sock",
        "X509_USER_PROXY": "/tmp/x509up",  # the agent's credentials: not for the probe
    }
    found = available("podman", environ=environ)
    assert found == Availability("podman", str(bindir / "podman"), True, "podman engine 4.9.3",
                                 "4.9.3")  # fmt: skip
    arguments, *variables = log.read_text().splitlines()
    assert arguments == "version --format {{.Server.Version}}"
    names = {line.split("=", 1)[0] for line in variables}
    # the probe's environment is PATH and the engine's own variables, nothing else
    assert {"PATH", "HOME", "XDG_RUNTIME_DIR", "CONTAINER_HOST"} <= names
    assert names - {"PWD", "SHLVL", "_"} == {"PATH", "HOME", "XDG_RUNTIME_DIR", "CONTAINER_HOST"}


@pytest.mark.parametrize(
    ("engine", "message", "reason"),
    [
        ("podman", "Error: cannot set up namespace using \"/usr/bin/newuidmap\": exit status 1",
         "Podman cannot run containers here (podman version: Error: cannot set up namespace using "
         "\"/usr/bin/newuidmap\": exit status 1)"),
        ("docker", "permission denied while trying to connect to the Docker daemon socket",
         "the Docker engine refuses this user (docker version: permission denied while trying to "
         "connect to the Docker daemon socket)"),
        ("docker", "", "the Docker engine is not running (docker version: exit status 1)"),
    ],
)  # fmt: skip
def test_engine_stand_in_that_fails(bindir: Path, engine: str, message: str, reason: str) -> None:
    script(bindir, engine, f"echo '{message}' >&2; exit 1\n" if message else "exit 1\n")
    found = available(engine, environ={"PATH": str(bindir)})
    assert not found.ok
    assert found.reason == reason


def test_engine_answering_with_no_version_is_not_available(bindir: Path) -> None:
    script(bindir, "docker", "echo\n")
    found = available("docker", environ={"PATH": str(bindir)})
    assert found.reason == "the Docker engine is not running (docker version: no server version)"


# -- Apptainer and Singularity, stood in for -----------------------------------------------


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_apptainer_absent_names_the_places_looked_at(runtime: str, bindir: Path) -> None:
    places = [f"{directory}/{runtime}" for directory in choose_module.CVMFS_BIN_DIRS]
    if any(os.path.exists(place) for place in places):
        pytest.skip(f"{runtime} is on CVMFS here")
    found = available(runtime, environ={"PATH": str(bindir)})
    install = {
        "apptainer": "install apptainer, or mount CVMFS",
        "singularity": "install singularity or apptainer, or mount CVMFS",
    }[runtime]
    assert found == Availability(
        runtime,
        None,
        False,
        f"not on PATH nor at /cvmfs/oasis.opensciencegrid.org/mis/apptainer/current/bin/"
        f"{runtime} or /cvmfs/alice.cern.ch/containers/bin/apptainer/current/bin/{runtime} "
        f"({install})",
    )


@pytest.mark.parametrize(
    ("runtime", "printed", "version"),
    [
        ("apptainer", "1.3.4", "1.3.4"),
        ("apptainer", "1.2.5-1.el8", "1.2.5-1.el8"),
        ("singularity", "3.8.7-1.el7", "3.8.7-1.el7"),
        ("singularity", "singularity-ce version 4.1.0", "4.1.0"),
    ],
)
def test_apptainer_stand_in_version_is_read(
    runtime: str, printed: str, version: str, bindir: Path
) -> None:
    log = log_file(bindir)
    script(bindir, runtime, f'echo "$*" >> {log}; echo "{printed}"\n')
    found = available(runtime, environ={"PATH": str(bindir)})
    assert found == Availability(runtime, str(bindir / runtime), True, f"{runtime} {version}",
                                 version)  # fmt: skip
    assert log.read_text() == "version\n"


def test_apptainer_found_on_cvmfs_when_not_on_path(bindir: Path, no_cvmfs: tuple[str, str]) -> None:
    # the second CVMFS location holds it (a made-up one: this checks the lookup order)
    first, second = (Path(directory) for directory in no_cvmfs)
    script(second, "apptainer", "echo 1.3.6\n")
    found = available("apptainer", environ={"PATH": str(bindir)})
    assert found.ok
    assert found.binary == str(second / "apptainer")
    script(first, "apptainer", "echo 1.4.0\n")
    assert available("apptainer", environ={"PATH": str(bindir)}).version == "1.4.0"
    script(bindir, "apptainer", "echo 1.1.9\n")  # PATH first
    assert available("apptainer", environ={"PATH": str(bindir)}).version == "1.1.9"


def test_apptainer_stand_in_that_fails(bindir: Path) -> None:
    script(bindir, "apptainer", "echo 'FATAL:   could not open configuration file' >&2; exit 255\n")
    assert available("apptainer", environ={"PATH": str(bindir)}).reason == (
        "apptainer version failed: FATAL:   could not open configuration file"
    )


def test_apptainer_stand_in_printing_nothing(bindir: Path) -> None:
    script(bindir, "apptainer", "exit 0\n")
    assert available("apptainer", environ={"PATH": str(bindir)}).reason == (
        "apptainer version printed nothing, not a version number"
    )


def test_apptainer_stand_in_that_hangs(bindir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choose_module, "TIMEOUT", 0.3)
    script(bindir, "apptainer", "exec /bin/sleep 30\n")
    assert available("apptainer", environ={"PATH": str(bindir)}).reason == (
        "apptainer version did not finish within 0.3 s"
    )


def test_available_rejects_a_name_that_is_not_a_runtime() -> None:
    with pytest.raises(ValueError, match="unknown runtime 'lxc'"):
        available("lxc", environ={"PATH": "/nonexistent"})


# -- choose --------------------------------------------------------------------------------


class FakeProbe:
    """Availability from a table, recording what was asked: the choice logic alone."""

    def __init__(self, working: set[str]) -> None:
        self.working = working
        self.asked: list[str] = []

    def __call__(self, runtime: str, *, environ: Mapping[str, str] = os.environ) -> Availability:
        self.asked.append(runtime)
        ok = runtime in self.working
        return Availability(runtime, f"/usr/bin/{runtime}" if ok else None, ok,
                            "works" if ok else f"{runtime} is broken")  # fmt: skip


@pytest.mark.parametrize("value", ["SINGULARITY", "APPTAINER", "DOCKER", "PODMAN", "BWRAP",
                                   "singularity", "apptainer", "docker", "podman", "bwrap",
                                   " Docker "])  # fmt: skip
def test_use_containers_picks_the_runtime(value: str) -> None:
    probe = FakeProbe(set(RUNTIMES))
    found = choose("auto", environ={"USE_CONTAINERS": value}, probe=probe)
    assert found.runtime == value.strip().lower()
    assert probe.asked == [value.strip().lower()]


def test_use_containers_unknown_value_is_an_error() -> None:
    probe = FakeProbe(set(RUNTIMES))
    with pytest.raises(RuntimeUnavailable) as error:
        choose("auto", environ={"USE_CONTAINERS": "KUBERNETES"}, probe=probe)
    assert str(error.value) == (
        "USE_CONTAINERS=KUBERNETES: unknown container runtime; set it to one of BWRAP, "
        "APPTAINER, SINGULARITY, DOCKER, PODMAN, or unset it for auto"
    )
    assert probe.asked == []


def test_use_containers_that_does_not_work_is_an_error_not_a_fallback() -> None:
    probe = FakeProbe({"bwrap"})
    with pytest.raises(RuntimeUnavailable) as error:
        choose("auto", environ={"USE_CONTAINERS": "PODMAN"}, probe=probe)
    assert str(error.value) == "USE_CONTAINERS=PODMAN: podman is broken"


@pytest.mark.parametrize("value", ["", "  "])
def test_empty_use_containers_means_auto(value: str) -> None:
    found = choose("auto", environ={"USE_CONTAINERS": value}, probe=FakeProbe({"bwrap"}))
    assert found.runtime == "bwrap"


@pytest.mark.parametrize("value", ["DOCKER", "KUBERNETES"])
def test_explicit_runtime_wins_over_use_containers(value: str) -> None:
    probe = FakeProbe({"bwrap", "docker"})
    found = choose("bwrap", environ={"USE_CONTAINERS": value}, probe=probe)
    assert found.runtime == "bwrap"
    assert probe.asked == ["bwrap"]


def test_explicit_runtime_that_does_not_work() -> None:
    with pytest.raises(RuntimeUnavailable) as error:
        choose("singularity", environ={}, probe=FakeProbe({"bwrap", "apptainer"}))
    assert str(error.value) == "--runtime singularity: singularity is broken"


def test_unknown_runtime_requested() -> None:
    with pytest.raises(RuntimeUnavailable) as error:
        choose("lxc", environ={}, probe=FakeProbe(set(RUNTIMES)))
    assert str(error.value) == (
        "--runtime lxc: unknown runtime; choose auto or one of bwrap, apptainer, singularity, "
        "docker, podman"
    )


@pytest.mark.parametrize(
    ("working", "chosen", "asked"),
    [
        ({"apptainer", "singularity", "bwrap"}, "apptainer", ["apptainer"]),
        ({"singularity", "bwrap"}, "singularity", ["apptainer", "singularity"]),
        ({"bwrap", "docker", "podman"}, "bwrap", ["apptainer", "singularity", "bwrap"]),
    ],
)
def test_auto_order(working: set[str], chosen: str, asked: list[str]) -> None:
    probe = FakeProbe(working)
    assert choose("auto", environ={}, probe=probe).runtime == chosen
    assert probe.asked == asked


def test_auto_never_picks_an_engine_and_says_what_it_tried() -> None:
    probe = FakeProbe({"docker", "podman"})
    with pytest.raises(RuntimeUnavailable) as error:
        choose("auto", environ={}, probe=probe)
    assert str(error.value) == (
        "--runtime auto: no runtime works here (apptainer: apptainer is broken; "
        "singularity: singularity is broken; bwrap: bwrap is broken)"
    )
    assert tuple(probe.asked) == AUTO_ORDER


# -- choose with the real probes -----------------------------------------------------------


@needs_bwrap
def test_auto_prefers_a_working_apptainer_then_falls_back_to_bwrap(
    bindir: Path, no_cvmfs: tuple[str, str]
) -> None:
    assert REAL_BWRAP is not None
    (bindir / "bwrap").symlink_to(REAL_BWRAP)
    environ = {"PATH": str(bindir)}
    assert choose("auto", environ=environ).runtime == "bwrap"
    script(bindir, "apptainer", "echo 1.3.4\n")  # a stand-in: checks the order only
    found = choose("auto", environ=environ)
    assert (found.runtime, found.binary) == ("apptainer", str(bindir / "apptainer"))
    (bindir / "apptainer").write_text("#!/bin/sh\necho 'FATAL: broken' >&2; exit 1\n")
    assert choose("auto", environ=environ).runtime == "bwrap"
    assert choose("bwrap", environ=environ | {"USE_CONTAINERS": "APPTAINER"}).runtime == "bwrap"


def test_auto_with_nothing_installed(bindir: Path, no_cvmfs: tuple[str, str]) -> None:
    a, b = no_cvmfs
    with pytest.raises(RuntimeUnavailable) as error:
        choose("auto", environ={"PATH": str(bindir)})
    assert str(error.value) == (
        f"--runtime auto: no runtime works here (apptainer: not on PATH nor at {a}/apptainer "
        f"or {b}/apptainer (install apptainer, or mount CVMFS); singularity: not on PATH nor "
        f"at {a}/singularity or {b}/singularity (install singularity or apptainer, or mount "
        f"CVMFS); bwrap: not on PATH ({BWRAP_HINT}))"
    )


@pytest.mark.skipif(REAL_DOCKER is None, reason="the docker client is not installed")
def test_use_containers_docker_without_an_engine() -> None:
    assert REAL_DOCKER is not None
    environ = {"PATH": os.path.dirname(REAL_DOCKER), "USE_CONTAINERS": "DOCKER"}
    if available("docker", environ=environ).ok:
        pytest.skip("a Docker engine answers here")
    with pytest.raises(RuntimeUnavailable) as error:
        choose("auto", environ=environ)
    message = str(error.value)
    assert message.startswith("USE_CONTAINERS=DOCKER: the Docker engine is not running (docker "
                              "version: ")  # fmt: skip
    assert "\n" not in message
    with pytest.raises(RuntimeUnavailable) as explicit:
        choose("docker", environ=environ)
    assert str(explicit.value) == message.replace("USE_CONTAINERS=DOCKER", "--runtime docker")
