"""Apptainer (and Singularity): the effective policy as ``apptainer exec`` flags.

Apptainer brings the image (a directory, a SIF or squashfs file, or a docker://
reference), contains the filesystem, PID and IPC namespaces and the environment, and
drops every privilege. What it cannot do for an unprivileged user is said per
requirement: it applies seccomp only as root (then the wrapper applies the same
profile before the payload starts), and its resource flags need a delegated cgroup v2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.policy.schema import LIMITS
from sandbox_agent.runtime.plan import LaunchPlan, Requirements, Unenforceable, environment

CGROUP_FILE = "cgroup.toml"
CPU_PERIOD = 100_000  # microseconds: quota = cores x period


def render(
    effective: EffectivePolicy,
    argv: Sequence[str],
    *,
    workdir: str,
    environ: Mapping[str, str] | None = None,
    privileged: bool = False,
    binary: str = "apptainer",
) -> LaunchPlan:
    """``apptainer exec`` for ``argv``. ``privileged``: the agent runs as root (setuid or
    root mode), which lets Apptainer apply seccomp and a cgroup file itself."""
    need = Requirements({i.value for i in effective["optional.requirements"].value})
    image = effective.word("filesystem.image")
    if image == "host":
        raise Unenforceable(
            "filesystem.image: Apptainer needs an image (a directory, a SIF file or a "
            "docker:// reference); the host's userland is what bwrap runs on"
        )
    out = [binary, "exec", "--containall", "--no-privs", "--no-home", "--cleanenv"]
    out += ["--pid", "--ipc"]
    need.met("process.capabilities", "--no-privs drops every capability")
    need.met("process.no_new_privs", "--no-privs sets no_new_privs")
    for ns, flag in (("pid", "--pid"), ("ipc", "--ipc"), ("mount", "--containall")):
        need.met(f"namespaces.{ns}", flag)
    if effective.word("namespaces.uts") != "off":
        out.append("--uts")
        need.met("namespaces.uts", "--uts")
    if effective.word("namespaces.user") != "off":
        # as root too: Apptainer's setuid mode would otherwise make no user namespace
        out.append("--userns")
        need.met("namespaces.user", "--userns")
    if effective.word("namespaces.cgroup") != "off":
        need.unmet("namespaces.cgroup", "Apptainer has no flag for a cgroup namespace")
    if effective.strings("process.capabilities"):
        need.unmet("process.capabilities", "--no-privs cannot keep a capability")
    network = effective.word("network.mode")
    if network == "none":
        out += ["--net", "--network", "none"]
        need.met("namespaces.net", "--net --network none")
    profile = str(effective.policy.directory / effective.word("process.seccomp"))
    if privileged:
        out += ["--security", f"seccomp:{profile}"]
        need.met("process.seccomp", f"--security seccomp:{profile}")
    else:
        need.met("process.seccomp", "Apptainer applies seccomp only as root: the wrapper applies "
                 "the same profile before the payload starts", by="wrapper")  # fmt: skip
    need.met("process.new_session", "started in a new session, no terminal", by="launcher")
    need.met("process.die_with_parent", "PR_SET_PDEATHSIG on apptainer; the job's cgroup is "
             "killed at teardown", by="launcher")  # fmt: skip
    variables = environment(effective, environ)
    for name, value in variables:
        out += ["--env", f"{name}={value}"]

    # -- filesystem ----------------------------------------------------------------------
    for path in effective.strings("filesystem.read_only"):
        out += ["--bind", f"{path}:{path}:ro"]
    for path in effective.strings("filesystem.writable"):
        out += ["--bind", f"{path}:{path}"]
    for path in effective.strings("devices.paths"):
        out += ["--bind", f"{path}:{path}"]
    if effective.word("devices.gpu") == "nvidia":
        out.append("--nv")
    inside = effective.word("filesystem.workdir")
    out += ["--bind", f"{workdir}:{inside}", "--pwd", inside]
    for path, _size in effective.tmpfs():
        # Apptainer cannot size a tmpfs: a scratch directory on the work area instead,
        # counted in the work directory's monitored size.
        out += ["--scratch", path]
    out += ["--env", f"HOME={inside}", "--env", f"TMPDIR={inside}"]

    # -- limits ----------------------------------------------------------------------------
    files: dict[str, str] = {}
    if privileged:
        files[CGROUP_FILE] = _cgroup_toml(effective)
        out += ["--apply-cgroups", CGROUP_FILE]
        how = f"--apply-cgroups {CGROUP_FILE}"
    else:
        memory = effective.limit("memory")
        out += ["--memory", str(memory), "--memory-swap", str(memory + effective.limit("swap"))]
        out += ["--cpus", str(effective.limit("cpu_cores")), "--pids-limit",
                str(effective.limit("pids"))]  # fmt: skip
        how = "--memory/--cpus/--pids-limit (needs a delegated cgroup v2 for a user)"
    for name in LIMITS:
        if effective.word(f"limits.{name}.enforcement") == "kernel" and name in (
            "memory", "swap", "cpu_cores", "pids"
        ):  # fmt: skip
            need.met(f"limits.{name}", how)
        else:
            need.met(f"limits.{name}", "monitored", by="agent")
    need.met("process.rlimits", "set before exec, inherited", by="launcher")
    if effective.word("process.landlock") != "off":
        need.met("process.landlock", "landlock, inside", by="wrapper")
    out.append(image)  # Apptainer takes directories, files and docker:// references as they are
    out += list(argv)
    return LaunchPlan(
        "apptainer", tuple(out), files, requirements=tuple(need.items), seccomp_profile=profile
    )


def _cgroup_toml(effective: EffectivePolicy) -> str:
    """The job's limits as OCI LinuxResources in TOML, the form --apply-cgroups reads."""
    memory = effective.limit("memory")
    cores = effective.limit("cpu_cores")
    return (
        "[memory]\n"
        f"  limit = {memory}\n"
        f"  swap = {memory + effective.limit('swap')}\n"
        "[cpu]\n"
        f"  quota = {cores * CPU_PERIOD}\n"
        f"  period = {CPU_PERIOD}\n"
        "[pids]\n"
        f"  limit = {effective.limit('pids')}\n"
    )
