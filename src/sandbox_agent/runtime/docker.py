"""Docker and Podman: the effective policy as ``run`` flags (the two share them).

The engine brings the image, the PID, IPC, UTS, mount and network namespaces, the
capability set, no_new_privs, the seccomp profile (the same OCI JSON file), the
cgroup limits and the rlimits. Docker gives a container no user namespace of its own
(that is the daemon's userns-remap), so a policy that requires one fails closed there;
Podman makes one per container with ``--userns auto``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sandbox_agent.policy import gate
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.policy.schema import LIMITS
from sandbox_agent.runtime.plan import (
    LaunchPlan,
    Requirements,
    environment,
    from_policy,
    optional_keys,
)

ENGINES = ("docker", "podman")


def render(
    effective: EffectivePolicy,
    argv: Sequence[str],
    *,
    workdir: str,
    environ: Mapping[str, str] | None = None,
    engine: str = "docker",
) -> LaunchPlan:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
    need = Requirements(optional_keys(effective))
    image_words = _image(effective.view.filesystem.image, engine)
    out = [engine, "run", "--rm", "-i", "--init"]
    for ns in ("pid", "ipc", "uts", "mount"):
        need.met(f"namespaces.{ns}", f"{engine} makes one per container")
    out += ["--ipc", "private", "--cgroupns", "private"]
    need.met("namespaces.cgroup", "--cgroupns private")
    if effective.view.namespaces.user != "off":
        if engine == "podman":
            out += ["--userns", "auto"]
            need.met("namespaces.user", "--userns auto")
        else:
            need.unmet(
                "namespaces.user",
                "Docker gives no container its own user namespace (only the daemon's "
                "userns-remap); use Podman or Apptainer, or mark it optional",
            )
    network = effective.view.network.mode
    if network == "host":
        out += ["--network", "host"]
        need.met("namespaces.net", "off: --network host shares the host's")
    else:
        out += ["--network", "none"]
        need.met("namespaces.net", "--network none")
    if network == "egress":  # the relay plumbs a namespace bwrap made; not an engine's yet
        need.unmet("network.mode", "egress: the agent's relay runs with bwrap only for now; "
                   "here the job gets --network none", by="agent")  # fmt: skip
    out += ["--cap-drop", "ALL"]
    for capability in effective.view.process.capabilities:
        out += ["--cap-add", capability.removeprefix("CAP_")]
    need.met("process.capabilities", "--cap-drop ALL")
    if effective.view.process.no_new_privs:
        out += ["--security-opt", "no-new-privileges"]
        need.met("process.no_new_privs", "--security-opt no-new-privileges")
    profile = str(effective.policy.directory / effective.view.process.seccomp)
    out += ["--security-opt", f"seccomp={profile}"]
    need.met("process.seccomp", f"--security-opt seccomp={profile}")
    if effective.view.process.new_session:
        need.met("process.new_session", "no terminal (-i without -t), in a new session",
                 by="launcher")  # fmt: skip
    # the container belongs to the engine, not to the agent's process tree or cgroup
    need.met("process.die_with_parent", "the agent removes the container at teardown",
             by="agent")  # fmt: skip
    out += ["--user", f"{effective.view.process.uid}:{effective.view.process.gid}"]
    variables = environment(effective, environ)
    for name, value in variables:
        out += ["--env", f"{name}={value}"]

    # -- filesystem ----------------------------------------------------------------------
    out.append("--read-only")
    for path, size in effective.view.filesystem.tmpfs:
        out += ["--tmpfs", f"{path}:rw,nosuid,nodev,size={size},mode=1777"]
    for path in effective.view.filesystem.read_only:
        out += ["--volume", f"{path}:{path}:ro"]
    for path in effective.view.filesystem.writable:
        out += ["--volume", f"{path}:{path}:rw"]
    for path in effective.view.devices.paths:
        out += ["--device", path]
    if effective.view.devices.gpu == "nvidia":
        out += ["--gpus", "all"] if engine == "docker" else ["--device", "nvidia.com/gpu=all"]
    inside = effective.view.filesystem.workdir
    out += ["--volume", f"{workdir}:{inside}:rw", "--workdir", inside]
    out += ["--env", f"HOME={inside}", "--env", f"TMPDIR={inside}"]

    # -- limits ----------------------------------------------------------------------------
    limits = effective.view.limits
    memory = limits.memory.value
    out += ["--memory", str(memory), "--memory-swap", str(memory + limits.swap.value)]
    out += ["--cpus", str(limits.cpu_cores.value), "--pids-limit", str(limits.pids.value)]
    for name, limit in effective.view.process.rlimits.items():
        out += ["--ulimit", f"{name}={limit}:{limit}"]
    need.met("process.rlimits", "--ulimit")
    for name in LIMITS:
        if name in ("memory", "swap", "cpu_cores", "pids"):
            need.met(f"limits.{name}", f"the container's cgroup (--{name.replace('_', '-')})")
        else:
            need.met(f"limits.{name}", "monitored", by="agent")
    if effective.view.process.landlock != "off":
        need.met("process.landlock", "landlock, inside", by="wrapper")

    out += image_words
    out += list(argv)
    return LaunchPlan(engine, tuple(out), requirements=tuple(need.items), seccomp_profile=profile,
                      **from_policy(effective))  # fmt: skip


def _image(image: str, engine: str) -> list[str]:
    """The words that name the image: a reference, or Podman's --rootfs for a directory."""
    if image.startswith("docker://"):
        return [image.removeprefix("docker://")]
    if image.startswith("/") and engine == "podman":
        return ["--rootfs", image]
    where = "the host's userland" if image == "host" else "a directory image"
    hint = " (Podman also runs directories)" if engine == "docker" else ""
    gate.refuse(
        "filesystem.image", f"{engine} cannot run {where}; give a docker:// reference{hint}"
    )
