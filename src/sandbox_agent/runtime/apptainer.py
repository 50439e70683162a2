"""Apptainer (and Singularity): the effective policy as ``apptainer exec`` flags.

Apptainer brings the image (a directory, a SIF or squashfs file, or a docker://
reference), contains the filesystem, PID and IPC namespaces and the environment, and
drops every privilege. What it cannot do for an unprivileged user is said per
requirement: it applies seccomp only as root (then the wrapper applies the same
profile before the payload starts). Limits are the job's cgroup, which Apptainer runs in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sandbox_agent.images import hostpython
from sandbox_agent.images.hostpython import NoHostPython
from sandbox_agent.policy import gate
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.runtime import confinestep
from sandbox_agent.runtime.plan import (
    AGENT_FILES,
    WRAPPER_STDIN_FILES,
    Carried,
    HostView,
    LaunchPlan,
    RealHost,
    Requirements,
    SourceWord,
    agent_limits,
    as_argv,
    environment,
    from_policy,
    optional_keys,
    sources_in,
)

STEP_DIR = "/.sandbox-agent"  # where the container sees the agent's files
LIB = "/.sandbox-agent/lib"  # the JobWrapper's files: a scratch directory the step fills


def render(
    effective: EffectivePolicy,
    argv: Sequence[str],
    *,
    workdir: str,
    environ: Mapping[str, str] | None = None,
    binary: str = "apptainer",
    host: HostView | None = None,
    wrapper: bool = False,
) -> LaunchPlan:
    """``apptainer exec`` for ``argv``, as the launcher starts it: never as root (a root
    agent starts it as uid 65534, as for bwrap), so Apptainer runs unprivileged.

    With ``wrapper``, the JobWrapper (``argv`` is not used), as on Podman: on the host's
    python3 carried in read-only, the confine step given as its source, and the
    wrapper's files and the compiled seccomp program read from stdin into a scratch
    directory of the container's before the handoff: nothing of the agent's is bound."""
    host = host or RealHost()
    need = Requirements(optional_keys(effective))
    image = effective.view.filesystem.image
    if image == "host":
        gate.refuse(
            "filesystem.image",
            "Apptainer needs an image (a directory, a SIF file "
            "or a docker:// reference); the host's userland is what bwrap runs on",
        )
    out = [binary, "exec", "--containall", "--no-privs", "--no-home", "--cleanenv"]
    out += ["--pid", "--ipc"]
    need.met("process.capabilities", "--no-privs drops every capability")
    need.met("process.no_new_privs", "--no-privs sets no_new_privs")
    for ns, flag in (("pid", "--pid"), ("ipc", "--ipc"), ("mount", "--containall")):
        need.met(f"namespaces.{ns}", flag)
    if effective.view.namespaces.uts != "off":
        out.append("--uts")
        need.met("namespaces.uts", "--uts")
    if effective.view.namespaces.user != "off":
        # as root too: Apptainer's setuid mode would otherwise make no user namespace
        out.append("--userns")
        need.met("namespaces.user", "--userns")
    if effective.view.namespaces.cgroup != "off":
        need.unmet("namespaces.cgroup", "Apptainer has no flag for a cgroup namespace")
    if effective.view.process.capabilities:
        need.unmet("process.capabilities", "--no-privs cannot keep a capability")
    network = effective.view.network.mode
    if network != "host":
        out += ["--net", "--network", "none"]
        need.met("namespaces.net", "--net --network none")
    if network == "egress":  # the relay plumbs a namespace bwrap made; not Apptainer's yet
        need.unmet("network.mode", "egress: the agent's relay runs with bwrap only for now; "
                   "here the job gets --network none", by="agent")  # fmt: skip
    profile = str(effective.policy.seccomp_path())
    # Apptainer applies a seccomp profile only when run as root, and root Apptainer gives a
    # root agent's payload host uid 0: the confine step loads the agent's compiled program.
    need.met("process.seccomp", "Apptainer applies seccomp only as root: the confine step "
             f"loads the agent's compiled program ({STEP_DIR}/seccomp.bpf) before the payload",
             by="wrapper")  # fmt: skip
    if effective.view.process.new_session:
        need.met("process.new_session", "started in a new session, no terminal", by="launcher")
    need.met("process.die_with_parent", "PR_SET_PDEATHSIG on apptainer; the job's cgroup is "
             "killed at teardown", by="launcher")  # fmt: skip
    inside = effective.view.filesystem.workdir
    variables = [*environment(effective, environ), ("HOME", inside), ("TMPDIR", inside)]

    # -- filesystem ----------------------------------------------------------------------
    for path in effective.view.filesystem.read_only:
        out += ["--bind", f"{path}:{path}:ro"]
    for path in effective.view.filesystem.writable:
        out += ["--bind", f"{path}:{path}"]
    for path in effective.view.devices.paths:
        out += ["--bind", f"{path}:{path}"]
    if effective.view.devices.gpu == "nvidia":
        out.append("--nv")
    out += ["--bind", f"{workdir}:{inside}", "--pwd", inside]
    python = [confinestep.PYTHON]
    if wrapper:  # the JobWrapper on the agent's own interpreter, its files from stdin
        try:
            carried = host.python()
        except NoHostPython as error:
            gate.refuse("filesystem.image", f"the JobWrapper's interpreter: {error}")
        for source, target in carried.binds:
            out += ["--bind", f"{source}:{target}:ro"]
        out += ["--scratch", LIB]
        python = list(carried.command)
    else:
        old = _too_old(host, image)
        if old:  # the image's own runs the step, which loads the seccomp program: no run
            gate.refuse("filesystem.image", old)
        out += ["--bind", f"{AGENT_FILES}:{STEP_DIR}:ro"]
    for path, _size in effective.view.filesystem.tmpfs:
        # Apptainer cannot size a tmpfs: a scratch directory on the work area instead,
        # counted in the work directory's monitored size.
        out += ["--scratch", path]

    # -- limits ----------------------------------------------------------------------------
    # Apptainer runs as the agent's child, inside the job's cgroup: the agent holds the
    # limits there, as for bwrap. Apptainer's own flags (--apply-cgroups, --memory) would
    # move the container to a cgroup of Apptainer's, out of the agent's sight, and need
    # a delegated cgroup v2 for a user.
    agent_limits(effective, need)
    need.met("process.rlimits", "set before exec, inherited", by="launcher")
    # The image's own Python runs the step; an image without /usr/bin/python3 makes the
    # run fail before the payload (not known here: the image is not opened to render;
    # only a directory's is read, for its version: _too_old).
    writable = [inside, *(path for path, _ in effective.view.filesystem.tmpfs),
                *effective.view.filesystem.writable, "/dev"]  # fmt: skip
    landlock = confinestep.landlock_words(effective, host.landlock_abi(), writable, need) or []
    out.append(image)  # Apptainer takes directories, files and docker:// references as they are
    if wrapper:
        words = ["--files-from-stdin", LIB, *landlock, "--seccomp", f"{LIB}/seccomp.bpf"]
        out += confinestep.step(SourceWord(Carried.CONFINE), words, variables, confirm="2",
                                in_process=True, python=python)  # fmt: skip
        argv = [*python, "-I", "-S", f"{LIB}/jobwrapper.py", "--status-fd", "1"]
        own, _, files_at = as_argv(out)
        return LaunchPlan(
            "apptainer", (*own, *argv), requirements=tuple(need.items),
            seccomp_profile=profile, files_at=files_at, sources_at=sources_in(out),
            stdin_files=(*WRAPPER_STDIN_FILES, ("seccomp.bpf", Carried.SECCOMP)),
            confirm_on_stderr=True, **from_policy(effective),
        )  # fmt: skip
    words = [*landlock, "--seccomp", f"{STEP_DIR}/seccomp.bpf"]
    out += confinestep.step(f"{STEP_DIR}/confine.py", words, variables)
    own, _, files_at = as_argv(out)  # before the payload's words, which nothing replaces
    return LaunchPlan(
        "apptainer", (*own, *argv), requirements=tuple(need.items), seccomp_profile=profile,
        agent_files={"confine.py": Carried.CONFINE, "seccomp.bpf": Carried.SECCOMP},
        files_at=files_at, **from_policy(effective),
    )  # fmt: skip


def _too_old(host: HostView, image: str) -> str:
    """hostpython.too_old's line when the image's own /usr/bin/python3, which runs the
    confine step without the JobWrapper, is older than OLDEST, as far as the host can
    tell without running it: in a directory image, from the name it leads to; "" when
    it is not, or that cannot be told (a SIF file or a docker:// image is not opened to
    render; a python3 that names no version)."""
    if host.kind(image) != "dir":
        return ""
    version = host.python_version(confinestep.PYTHON, root=image)
    if version is None:
        return ""
    return hostpython.too_old(version, f"the image's {confinestep.PYTHON}") or ""
