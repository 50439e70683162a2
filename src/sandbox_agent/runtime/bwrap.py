"""bubblewrap: the native runtime. It holds no policy; this module turns one into its argv.

Every namespace bwrap can make, a fresh root of read-only binds, the job's work
directory as the only writable bind, sized tmpfs, its own /proc and a minimal /dev,
all capabilities dropped, a new session, death with the agent, a cleared environment
with only the allowed variables, nested user namespaces disabled, and the seccomp
program on a file descriptor. Limits are the agent's (cgroup), rlimits and landlock
the wrapper's: the plan says so per requirement.

Nothing of the agent's own paths is bound in: the landlock step and the JobWrapper's
files come on descriptors (``--ro-bind-data``, files in bwrap's own tmpfs), and the
launcher hands bwrap its options on a descriptor too (``--args``, see options_end), so
neither bwrap's ``/proc/1/cmdline`` nor ``/proc/self/mountinfo`` inside names a host
path of the agent's. The host-wide files of the sandbox's own /proc that tell about
the node and its other users rather than the job (MASKED_PROC) are masked.
"""

from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from sandbox_agent.images import hostpython
from sandbox_agent.policy import gate
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.policy.model import within
from sandbox_agent.runtime import confinestep, imageroot
from sandbox_agent.runtime.plan import (
    COMPILED,
    SHIPPED,
    Carried,
    FdWord,
    HostView,
    LaunchPlan,
    RealHost,
    Requirements,
    agent_limits,
    as_argv,
    egress_plan,
    environment,
    from_policy,
    optional_keys,
)

if TYPE_CHECKING:
    from sandbox_agent.images.prepare import ReadyImage

SECCOMP_FD = 10  # the descriptor the seccomp program is passed on
CONFINE_FD = 11  # the descriptor the landlock step's source is passed on
INFO_FD = 12  # where bwrap reports the child's pid and the namespaces it made
CONFIRM_FD = 13  # where the landlock step says it applied landlock, before the payload
BLOCK_FD = 14  # bwrap waits to read a byte here before the payload: egress is plumbed
WRAPPER_FD = 20  # the first of the JobWrapper's files (and their bytecode), one each
WRAPPER_DIR = "/.sandbox-agent/lib"  # where the JobWrapper and its siblings are, read-only
# The JobWrapper as the payload: its status frames on its stdout (the payload's own
# output goes to files), the handoff on its stdin.
WRAPPER_ARGV = ("/usr/bin/python3", "-I", "-S", f"{WRAPPER_DIR}/jobwrapper.py", "--status-fd", "1")
# The JobWrapper and its stdlib siblings, side by side in WRAPPER_DIR, each with its
# bytecode (launch.bytecode) in WRAPPER_DIR/__pycache__ for the agent's Python version.
WRAPPER_FILES = {os.path.basename(kind.module_file): kind for kind in SHIPPED if kind in COMPILED}
# Host-wide files of the sandbox's own /proc that tell about the node, its hardware and
# its other users, not about the job: a read-only, nodev bind of /dev/null over each
# (opening one fails with EACCES), as Docker and Podman mask theirs (the OCI runtime
# spec's maskedPaths). The kernel's boot command line, its build configuration and
# symbols; the node's boot id (the same on every job of a node: it links jobs, and
# pilots, to one machine); every disk's and interrupt's activity counters; the keys of
# the sandbox's host uid, and which users hold keys; and the timer and scheduler lists,
# which name the host's processes and their pids. What programs need (cpuinfo, meminfo,
# stat, loadavg, uptime, version, mounts) stays. Those of the node's kernel only.
MASKED_PROC = (
    "/proc/cmdline", "/proc/config.gz", "/proc/kallsyms", "/proc/kcore",
    "/proc/sys/kernel/random/boot_id", "/proc/diskstats", "/proc/interrupts",
    "/proc/keys", "/proc/key-users", "/proc/timer_list", "/proc/timer_stats",
    "/proc/sched_debug", "/proc/latency_stats",
)  # fmt: skip
# Directories of it that list the node's hardware: an empty read-only tmpfs over each.
MASKED_PROC_DIRS = ("/proc/acpi", "/proc/asound", "/proc/scsi")
CONFINE_PATH = "/.sandbox-agent/confine.py"  # where the sandbox sees it
DEV_SHM_BYTES = 64 * 1024 * 1024


def render(
    effective: EffectivePolicy,
    argv: Sequence[str],
    *,
    workdir: str,
    host: HostView | None = None,
    environ: Mapping[str, str] | None = None,
    binary: str = "bwrap",
    wrapper: bool = False,
    image: ReadyImage | None = None,
) -> LaunchPlan:
    """The bwrap command that runs ``argv`` under ``effective`` with ``workdir`` writable;
    ``image``: the policy's image, made ready (images.prepare), unless it is "host".

    ``environ`` is the agent's environment, for the allowed variables; without it the
    plan shows a placeholder instead of their values (``policy render``)."""
    host = host or RealHost()
    need = Requirements(optional_keys(effective))
    out: list[str] = [binary]

    # -- namespaces ------------------------------------------------------------------
    network = effective.view.network.mode
    for ns, level in effective.view.namespaces.levels():
        if ns == "mount":  # bwrap always makes one (below)
            continue
        flag = ns
        if ns == "net" and network != "host" and level == "off":
            gate.refuse("network.mode", f"{network} needs the job's own network namespace; "
                        'set namespaces.net = "required"')  # fmt: skip
        if ns == "net" and network == "host" and level == "required":
            gate.refuse(
                "network.mode",
                "host shares the host's network namespace, "
                'which namespaces.net = "required" forbids; set it "off"',
            )
        if level == "off" or (ns == "net" and network == "host"):
            need.met(f"namespaces.{ns}", "off: shares the host's")
            continue
        if level == "optional" and ns in ("user", "cgroup"):
            # not guaranteed by the flag: the launcher confirms it from bwrap's report
            out.append(f"--unshare-{flag}-try")
            need.tried(f"namespaces.{ns}", f"--unshare-{flag}-try (if possible)")
        else:
            out.append(f"--unshare-{flag}")
            need.met(f"namespaces.{ns}", f"--unshare-{flag}")
    need.met("namespaces.mount", "bwrap always makes one")
    if effective.view.namespaces.user != "off":
        # No nested user namespace: closes the kernel's user-namespace attack surface.
        out.append("--disable-userns")
        out += ["--uid", str(effective.view.process.uid)]
        out += ["--gid", str(effective.view.process.gid)]

    # -- process -----------------------------------------------------------------------
    if effective.view.process.die_with_parent:
        out.append("--die-with-parent")
    if effective.view.process.new_session:
        out.append("--new-session")
    out += ["--cap-drop", "ALL"]
    for capability in effective.view.process.capabilities:
        out += ["--cap-add", capability]
    need.met("process.no_new_privs", "bwrap sets PR_SET_NO_NEW_PRIVS")
    out.append("--clearenv")
    inside = effective.view.filesystem.workdir
    variables = [*environment(effective, environ), ("HOME", inside), ("TMPDIR", inside)]

    # -- filesystem --------------------------------------------------------------------
    # Binds and tmpfs mounts in one order, parents before children: a bind inside a
    # tmpfs (/tmp/data under /tmp) must come after it, or the tmpfs would hide it.
    mounts: list[tuple[str, list[str]]] = []
    python = [confinestep.PYTHON]  # how the sandbox starts the wrapper's interpreter
    no_python = ""  # why the sandbox has no interpreter for the confine step, if it has none
    if effective.view.filesystem.image == "host":
        userland = effective.view.filesystem.host_userland
        if host.kind(confinestep.PYTHON) == "missing" or not any(
            within(confinestep.PYTHON, root) for root in userland
        ):
            no_python = f"the sandbox has no {confinestep.PYTHON} to apply landlock with"
        else:  # the host's own, run in place: no hostpython.find() refused an older one
            no_python = _too_old(host, confinestep.PYTHON)
            if no_python and wrapper:  # the JobWrapper runs on it too: never, landlock or not
                gate.refuse("filesystem.image", no_python)
    else:
        userland = ()
        python = imageroot.mounts(effective, image, host, mounts, need)
        if wrapper:  # the agent's interpreter, not one the image may lack
            argv = [*python, *argv[1:]]
    for path in userland + effective.view.filesystem.read_only:
        kind = host.kind(path)
        if kind.startswith("symlink:"):
            mounts.append((path, ["--symlink", kind.split(":", 1)[1], path]))
        elif kind != "missing":
            mounts.append((path, ["--ro-bind", path, path]))
    for path in effective.view.filesystem.writable:
        mounts.append((path, ["--bind", path, path]))
    for path, size in effective.view.filesystem.tmpfs:
        mounts.append((path, ["--perms", "1777", "--size", str(size), "--tmpfs", path]))
    for _path, words in sorted(mounts, key=lambda mount: _depth(mount[0])):
        out += words
    if effective.view.filesystem.dev == "minimal":
        # a private /dev, then read-only: no files planted in it, and /dev/shm a sized
        # tmpfs of its own rather than the unbounded one in /dev
        out += ["--dev", "/dev", "--perms", "1777", "--size", str(DEV_SHM_BYTES),
                "--tmpfs", "/dev/shm"]  # fmt: skip  # noqa: S108 (inside the sandbox)
    for path in effective.view.devices.paths:
        if host.kind(path) != "missing":
            out += ["--dev-bind", path, path]
    if effective.view.filesystem.dev == "minimal":
        out += ["--remount-ro", "/dev"]
    if effective.view.filesystem.proc == "private":
        out += ["--proc", "/proc"]
        out += _masks(host)
    out += ["--bind", workdir, inside]
    writable = [inside, *(path for path, _ in effective.view.filesystem.tmpfs),
                *effective.view.filesystem.writable]  # fmt: skip
    if effective.view.filesystem.dev == "minimal":
        writable.append("/dev")  # read-only mount; its devices (/dev/null) stay usable
    landlock = confinestep.landlock_words(effective, host.landlock_abi(), writable, need,
                                          no_python=no_python)  # fmt: skip
    confine: list[str] = []
    if landlock is not None:
        step = FdWord(
            CONFINE_FD,
            Carried.CONFINE,
            f"the landlock step (sandbox_agent.wrapper.confine) at {CONFINE_PATH}",
        )
        out += ["--perms", "0444", "--ro-bind-data", step, CONFINE_PATH]
        # the JobWrapper runs in the step's interpreter: one Python start, not two
        confirm = FdWord(
            CONFIRM_FD,
            Carried.CONFIRM,
            "the landlock step's word that it applied landlock (read by the agent)",
        )
        confine = confinestep.step(CONFINE_PATH, landlock, variables, confirm=confirm,
                                   in_process=wrapper, python=python)  # fmt: skip
    else:
        for name, value in variables:
            out += ["--setenv", name, value]
    if wrapper:  # the agent's copies, each a read-only file of bwrap's own tmpfs
        out += _wrapper_files()
    # bwrap builds the root on a tmpfs; without this, / and /etc would be writable
    # (in memory) around the binds: only the work directory and the tmpfs mounts may be.
    out += ["--remount-ro", "/", "--chdir", inside]

    # -- seccomp and the rest ------------------------------------------------------------
    egress = egress_plan(effective, host, need)
    if egress is not None:
        block = FdWord(BLOCK_FD, Carried.BLOCK, "the agent's word that the job's network is "
                       "plumbed: the sandbox waits for it (written by the agent)")  # fmt: skip
        out += ["--block-fd", block]
    profile = effective.view.process.seccomp
    out += [
        "--seccomp",
        FdWord(SECCOMP_FD, Carried.SECCOMP, f"the seccomp program compiled from {profile}"),
    ]
    out += [
        "--info-fd",
        FdWord(
            INFO_FD, Carried.INFO, "bwrap's report of the namespaces it made (read by the agent)"
        ),
    ]
    need.met("process.seccomp", f"--seccomp {SECCOMP_FD}: {profile}")
    need.met("process.rlimits", "set before exec", by="launcher")
    agent_limits(effective, need)
    out.append("--")
    out += confine
    own, descriptors, _ = as_argv(out)  # before the payload's words, which nothing replaces
    return LaunchPlan(
        runtime="bwrap",
        argv=(*own, *argv),
        descriptors=descriptors,
        requirements=tuple(need.items),
        seccomp_profile=str(effective.policy.seccomp_path()),
        egress=egress,
        **from_policy(effective),
    )


def _too_old(host: HostView, python: str) -> str:
    """hostpython.too_old's line when the host's ``python``, which the sandbox runs in
    place, is older than OLDEST; "" when it is not, or its version cannot be read (then
    what runs on it fails in the sandbox, as where there is none)."""
    version = host.python_version(python)
    return (hostpython.too_old(version, python) or "") if version is not None else ""


def _masks(host: HostView) -> list[str]:
    """The words that mask MASKED_PROC and MASKED_PROC_DIRS in the sandbox's /proc: those
    this kernel has (the host's /proc is the same kernel's; bwrap cannot mount over a
    path that is not there)."""
    words: list[str] = []
    for path in MASKED_PROC:
        if host.kind(path) == "file":
            words += ["--ro-bind", "/dev/null", path]
    for path in MASKED_PROC_DIRS:
        if host.kind(path) == "dir":
            words += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
    return words


def _wrapper_files() -> list[str]:
    """The JobWrapper's files, each from a descriptor the launcher fills: the source,
    and its bytecode named for the agent's Python (another Python compiles the source)."""
    out: list[str] = []
    number = WRAPPER_FD
    tag = sys.implementation.cache_tag
    for name, kind in WRAPPER_FILES.items():
        files = [(f"{WRAPPER_DIR}/{name}", kind, f"the JobWrapper's {name}")]
        if tag:
            compiled = f"{WRAPPER_DIR}/__pycache__/{name[:-3]}.{tag}.pyc"
            what = f"{name} compiled by the agent's Python"
            files.append((compiled, Carried(f"{kind}.pyc"), what))
        for inside, content, what in files:
            word = FdWord(number, content, f"{what}, at {inside}")
            out += ["--perms", "0444", "--ro-bind-data", word, inside]
            number += 1
    return out


# bwrap's options and how many values each takes (bwrap 0.8), those the renderer writes
# among them: enough to find where they end without mistaking a value for "--".
_ARITY = {
    **dict.fromkeys(("--unshare-user", "--unshare-user-try", "--unshare-ipc", "--unshare-pid",
                     "--unshare-net", "--unshare-uts", "--unshare-cgroup", "--unshare-cgroup-try",
                     "--unshare-all", "--share-net", "--disable-userns",
                     "--assert-userns-disabled", "--die-with-parent", "--new-session",
                     "--as-pid-1", "--clearenv"), 0),
    **dict.fromkeys(("--uid", "--gid", "--hostname", "--chdir", "--unsetenv", "--cap-add",
                     "--cap-drop", "--perms", "--size", "--tmpfs", "--dev", "--proc", "--mqueue",
                     "--dir", "--remount-ro", "--seccomp", "--add-seccomp-fd", "--info-fd",
                     "--json-status-fd", "--block-fd", "--userns-block-fd", "--sync-fd",
                     "--lock-file", "--userns", "--userns2", "--pidns"), 1),
    **dict.fromkeys(("--setenv", "--bind", "--bind-try", "--dev-bind", "--dev-bind-try",
                     "--ro-bind", "--ro-bind-try", "--bind-fd", "--ro-bind-fd", "--symlink",
                     "--file", "--bind-data", "--ro-bind-data", "--chmod"), 2),
}  # fmt: skip


def options_end(argv: Sequence[str]) -> int:
    """The index of the "--" that ends bwrap's options in ``argv`` (argv[0] is bwrap):
    the launcher passes what lies before it on a descriptor (``--args``), so that
    bwrap's /proc/<pid>/cmdline, which the sandbox sees as its pid 1's, holds only
    ``bwrap --args N -- <the command>``. ValueError for an option bwrap does not have
    or the renderer never writes, or options with no "--" after them."""
    at = 1
    while at < len(argv):
        word = argv[at]
        if word == "--":
            return at
        if word not in _ARITY:
            raise ValueError(f"bwrap option {word[:40]!r} is not one the launcher knows")
        at += 1 + _ARITY[word]
    raise ValueError("bwrap's options are not followed by '--'")


def _depth(path: str) -> tuple[int, str]:
    """Parents before children, so a bind inside a bind lands on top of it."""
    return (posixpath.normpath(path).count("/"), path)
