"""Which runtime runs the jobs here: each one detected for real, then one chosen.

A runtime counts as available only when it answered: bwrap runs a tiny sandbox (as
the user the launcher will run it as), Apptainer and Singularity print their version,
Docker and Podman report their engine's version. A missing or broken tool is never an
exception here, only a reason: one line a site admin can act on.

Choosing: an explicit ``--runtime X`` wins; with ``auto`` the site's ``USE_CONTAINERS``
(the variable JAliEn sites set) is honoured as an explicit request; otherwise the first
working runtime of ``AUTO_ORDER``. An explicit request that cannot be met is an error,
never a silent fallback to something else. Nothing is cached: each call looks again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sandbox_agent.printable import printable
from sandbox_agent.runtime.containers import client_environment
from sandbox_agent.runtime.launch import SANDBOX_HOST_UID
from sandbox_agent.toolrun import run_tool

RUNTIMES = ("bwrap", "apptainer", "singularity", "docker", "podman")

# ``auto`` without USE_CONTAINERS: Apptainer first, since it is what grid sites provide
# (often from CVMFS) and what JAliEn uses; Singularity next, its predecessor with the
# same command line; then bwrap, which needs only unprivileged user namespaces and works
# on most nodes. Docker and Podman are never chosen on their own: a root daemon is a
# different trust boundary, so a site asks for them (--runtime or USE_CONTAINERS).
AUTO_ORDER = ("apptainer", "singularity", "bwrap")

# Where Apptainer is found on CVMFS when it is not on PATH (OSG's and ALICE's builds).
CVMFS_BIN_DIRS = (
    "/cvmfs/oasis.opensciencegrid.org/mis/apptainer/current/bin",
    "/cvmfs/alice.cern.ch/containers/bin/apptainer/current/bin",
)

BWRAP_MINIMUM = (0, 8, 0)  # --disable-userns
TIMEOUT = 5.0  # seconds, for every probe
_REASON_LIMIT = 300  # characters of a tool's message kept in a reason

_INSTALL = {
    "bwrap": "Debian/Ubuntu: apt-get install bubblewrap; EL: dnf install bubblewrap",
    "apptainer": "install apptainer, or mount CVMFS",
    "singularity": "install singularity or apptainer, or mount CVMFS",
    "docker": "install Docker Engine: https://docs.docker.com/engine/install/",
    "podman": "Debian/Ubuntu: apt-get install podman; EL: dnf install podman",
}
_ENGINE_NAMES = {"docker": "Docker", "podman": "Podman"}
# The words in bwrap's message when it could not make its namespaces.
_USERNS_WORDS = ("namespace", "uid map", "gid map", "setgroups")
_SYSCTL = Path("/proc/sys")


@dataclass(frozen=True)
class Availability:
    runtime: str
    binary: str | None  # the absolute path found, or None
    ok: bool
    reason: str  # one line: why it works ("bwrap 0.8.0 ran a test sandbox") or why not
    version: str = ""


class RuntimeUnavailable(ValueError):
    """The runtime asked for (or, with ``auto``, every one tried) cannot run jobs here."""


class Probe(Protocol):
    def __call__(self, runtime: str, *, environ: Mapping[str, str] = ...) -> Availability: ...


def available(runtime: str, *, environ: Mapping[str, str] = os.environ) -> Availability:
    """Whether ``runtime`` works here, looked up on ``environ``'s PATH. Never raises for a
    missing or broken tool; raises ValueError only for a name not in RUNTIMES."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    path = environ.get("PATH", os.defpath)
    if runtime == "bwrap":
        return _bwrap(path)
    if runtime in ("apptainer", "singularity"):
        return _apptainer(runtime, path)
    env = client_environment(environ) | {"PATH": path}
    return _engine(runtime, env)


def choose(
    requested: str,
    *,
    environ: Mapping[str, str] = os.environ,
    probe: Probe = available,
    order: Sequence[str] = AUTO_ORDER,
) -> Availability:
    """The runtime to use: ``requested`` ("auto" or one of RUNTIMES) if it works, else
    RuntimeUnavailable with one line saying why (every runtime tried, for ``auto``).
    ``order`` is what auto tries: a policy on the host's userland runs on bwrap only."""
    if requested != "auto":
        if requested not in RUNTIMES:
            raise RuntimeUnavailable(
                f"--runtime {printable(requested)}: unknown runtime; choose auto or one of "
                f"{', '.join(RUNTIMES)}"
            )
        return _explicit(requested, f"--runtime {requested}", environ, probe)
    value = environ.get("USE_CONTAINERS", "").strip()
    if value:
        runtime = value.lower()
        if runtime not in RUNTIMES:
            raise RuntimeUnavailable(
                f"USE_CONTAINERS={printable(value)}: unknown container runtime; set it to one of "
                f"{', '.join(name.upper() for name in RUNTIMES)}, or unset it for auto"
            )
        return _explicit(runtime, f"USE_CONTAINERS={value}", environ, probe)
    tried = []
    for runtime in order:
        found = probe(runtime, environ=environ)
        if found.ok:
            return found
        tried.append(f"{runtime}: {printable(found.reason)}")
    raise RuntimeUnavailable(f"--runtime auto: no runtime works here ({'; '.join(tried)})")


def for_wrapper(
    requested: str, *, environ: Mapping[str, str] = os.environ, probe: Probe = available
) -> Availability:
    """The runtime the pilot runs the JobWrapper in, as choose picks it: ``--runtime``
    wins, then USE_CONTAINERS (as JAliEn's JobAgent reads it: APPTAINER, SINGULARITY,
    DOCKER, PODMAN), else bwrap (not Apptainer first, as ``sandbox exec`` does: the
    pilot's own sandbox stays bwrap unless the site asks). RuntimeUnavailable for one
    that does not work here."""
    return choose(requested, environ=environ, probe=probe, order=("bwrap",))


def _explicit(runtime: str, asked: str, environ: Mapping[str, str], probe: Probe) -> Availability:
    found = probe(runtime, environ=environ)
    if not found.ok:
        raise RuntimeUnavailable(f"{printable(asked)}: {printable(found.reason)}")
    return found


# -- bwrap ---------------------------------------------------------------------------------


def _bwrap(path: str) -> Availability:
    binary = shutil.which("bwrap", path=path)
    if binary is None:
        return Availability("bwrap", None, False, f"not on PATH ({_INSTALL['bwrap']})")
    binary = os.path.abspath(binary)
    env = {"PATH": path}
    done = _run([binary, "--version"], env, "bwrap --version")
    if isinstance(done, str):
        return Availability("bwrap", binary, False, done)
    if done.returncode != 0:
        return Availability("bwrap", binary, False, f"bwrap --version failed: {_said(done)}")
    match = re.match(r"bubblewrap (\d+)\.(\d+)\.(\d+)", done.stdout.strip())
    if match is None:
        printed = _printed(done.stdout)
        return Availability(
            "bwrap", binary, False, f"bwrap --version printed {printed}, not 'bubblewrap X.Y.Z'"
        )
    version = ".".join(match.groups())
    numbers = tuple(int(part) for part in match.groups())
    if numbers < BWRAP_MINIMUM:
        minimum = ".".join(str(part) for part in BWRAP_MINIMUM)
        return Availability(
            "bwrap",
            binary,
            False,
            f"bwrap {version} is older than {minimum} (needs --disable-userns)",
            version,
        )
    # The namespaces and mounts the launcher's sandboxes use, as the user it runs bwrap as.
    argv = [binary, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-net", "--disable-userns", "--ro-bind", "/", "/", "--proc", "/proc",
            "--dev", "/dev", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--clearenv", "--", "/bin/true"]  # fmt: skip
    root = os.geteuid() == 0
    as_user = f" as uid {SANDBOX_HOST_UID}" if root else ""
    done = _run(argv, env, f"bwrap's test sandbox{as_user}", drop=root)
    if isinstance(done, str):
        return Availability("bwrap", binary, False, done, version)
    if done.returncode != 0:
        said = _said(done)
        reason = f"bwrap could not start a test sandbox{as_user}: {said}"
        if any(word in said.lower() for word in _USERNS_WORDS):
            reason += f"; {_userns_hint()}"
        return Availability("bwrap", binary, False, reason, version)
    return Availability("bwrap", binary, True, f"bwrap {version} ran a test sandbox{as_user}",
                        version)  # fmt: skip


def _userns_hint() -> str:
    """Which setting keeps unprivileged users from making user namespaces, if one does."""

    def read(name: str) -> str | None:
        try:
            return (_SYSCTL / name).read_text().strip()
        except OSError:
            return None

    if read("user/max_user_namespaces") == "0":
        return "user namespaces are disabled (sysctl user.max_user_namespaces=0; raise it)"
    if read("kernel/unprivileged_userns_clone") == "0":
        return (
            "user namespaces are disabled (sysctl kernel.unprivileged_userns_clone=0; set it to 1)"
        )
    if read("kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            "AppArmor restricts unprivileged user namespaces (kernel."
            "apparmor_restrict_unprivileged_userns=1; give bwrap a profile that allows them)"
        )
    return (
        "are user namespaces disabled? (sysctl kernel.unprivileged_userns_clone=0 / "
        "user.max_user_namespaces=0 / AppArmor: kernel.apparmor_restrict_unprivileged_userns=1)"
    )


# -- apptainer and singularity -------------------------------------------------------------


def _apptainer(runtime: str, path: str) -> Availability:
    binary = shutil.which(runtime, path=path)
    if binary is None:
        places = [f"{directory}/{runtime}" for directory in CVMFS_BIN_DIRS]
        binary = next((place for place in places if _executable(place)), None)
        if binary is None:
            return Availability(
                runtime,
                None,
                False,
                f"not on PATH nor at {' or '.join(places)} ({_INSTALL[runtime]})",
            )
    binary = os.path.abspath(binary)
    done = _run([binary, "version"], {"PATH": path}, f"{runtime} version")
    if isinstance(done, str):
        return Availability(runtime, binary, False, done)
    if done.returncode != 0:
        return Availability(runtime, binary, False, f"{runtime} version failed: {_said(done)}")
    match = re.search(r"\d+\.\d+(?:\.\d+)?\S*", _first_line(done.stdout))
    if match is None:
        printed = _printed(done.stdout)
        return Availability(
            runtime, binary, False, f"{runtime} version printed {printed}, not a version number"
        )
    return Availability(runtime, binary, True, f"{runtime} {match.group()}", match.group())


def _executable(place: str) -> bool:
    try:
        return os.path.isfile(place) and os.access(place, os.X_OK)
    except OSError:  # an automounter that does not answer
        return False


# -- docker and podman ---------------------------------------------------------------------


def _engine(runtime: str, env: dict[str, str]) -> Availability:
    binary = shutil.which(runtime, path=env["PATH"])
    if binary is None:
        return Availability(runtime, None, False, f"not on PATH ({_INSTALL[runtime]})")
    binary = os.path.abspath(binary)
    # both engines answer this (Podman's info has no ServerVersion); Docker's only with
    # its daemon up, and Podman's only when it can read its storage as this user
    done = _run([binary, "version", "--format", "{{.Server.Version}}"], env,
                f"{runtime} version")  # fmt: skip
    if isinstance(done, str):
        return Availability(runtime, binary, False, done)
    version = _first_line(done.stdout)
    if done.returncode == 0 and version:
        return Availability(runtime, binary, True, f"{runtime} engine {version}", version)
    said = _said(done) if done.returncode else _first_line(done.stderr) or "no server version"
    name = _ENGINE_NAMES[runtime]
    if "permission denied" in said.lower():
        what = f"the {name} engine refuses this user"
    elif runtime == "docker":
        what = "the Docker engine is not running"
    else:
        what = "Podman cannot run containers here"
    return Availability(runtime, binary, False, f"{what} ({runtime} version: {said})")


# -- running the probes --------------------------------------------------------------------


def _run(
    argv: Sequence[str], env: dict[str, str], what: str, *, drop: bool = False
) -> subprocess.CompletedProcess[str] | str:
    """Run a probe: argv only, the given environment, nothing on stdin, a timeout. A
    string instead of a result says why ``what`` could not run. ``drop``: as
    SANDBOX_HOST_UID with no supplementary groups, as the launcher starts bwrap when the
    agent is root."""
    uid = SANDBOX_HOST_UID if drop else None
    try:
        return run_tool(
            argv,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TIMEOUT,
            close_fds=True,
            user=uid,
            group=uid,
            extra_groups=[] if drop else None,
        )
    except subprocess.TimeoutExpired:
        return f"{what} did not finish within {TIMEOUT:g} s"
    except (OSError, subprocess.SubprocessError) as error:
        detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        who = f" as uid {SANDBOX_HOST_UID}" if drop else ""
        return f"cannot run {_clean(argv[0])}{who}: {_clean(detail)}"


def _said(done: subprocess.CompletedProcess[str]) -> str:
    """The first line of a failed probe's message, or its exit status."""
    line = _first_line(done.stderr) or _first_line(done.stdout)
    if line:
        return line
    if done.returncode < 0:
        return f"killed by signal {-done.returncode}"
    return f"exit status {done.returncode}"


def _printed(text: str) -> str:
    line = _first_line(text)
    return repr(line) if line else "nothing"


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return _clean(line.strip())
    return ""


def _clean(text: str) -> str:
    """One printable line of bounded length, from a tool's message."""
    out = printable(text)
    if len(out) > _REASON_LIMIT:
        out = out[: _REASON_LIMIT - 3] + "..."
    return out
