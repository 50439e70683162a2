"""Docker and Podman: the effective policy as ``run`` flags (the two share most).

The engine brings the image, the PID, IPC, UTS, mount, cgroup and network namespaces,
the capability set, no_new_privs, the seccomp profile (the same OCI JSON file), the
cgroup limits and the rlimits. What each engine adds unasked is taken away: Podman's
writable tmpfs at /run and /var/tmp under --read-only, /sys and /proc/sys (read-only,
but the policy denies them), the engines' own variables (HOSTNAME, TERM, container=),
Podman's default ulimits (replaced whole by any --ulimit: nproc is given too), the
log file each engine keeps of a container's output.

As for bwrap, the agent's own code runs inside on the host's python3, carried in
read-only (images.hostpython): the confine step, which hands the payload only the
policy's variables and applies landlock, and for a job the JobWrapper, which is the
container's pid 1 (no --init): the status frames it writes on its stdout, and the
handoff on its stdin, are held by no other process of the container, and an
undumpable pid 1 is out of the payload's reach.

Who runs as whom. Podman as root gives each container its own range of host uids
(--userns auto, a range of the ``containers`` user's in /etc/subuid) and maps the work
directory's owner onto the payload's uid (the volume's U option). Rootless Podman maps
the agent's uid onto the payload's (keep-id), as bwrap does. Docker makes no user
namespace per container, so the payload runs as host uid 65534, the uid bwrap runs a
root agent's jobs as, never as a real user's.

Limits. As root, the engine's own cgroup holds memory, swap, CPU and pids (--memory
...), read back by the session before the job is let go. Rootless Podman ignores those
flags on cgroup v1 (and without a delegated cgroup on v2) with only a warning, and
leaves the container in its client's cgroup: the plan leaves the limits to the agent,
whose job cgroup holds the client, and the session reads them back the same way.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping, Sequence

from sandbox_agent.images.hostpython import NoHostPython
from sandbox_agent.policy import gate
from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.runtime import confinestep, containers
from sandbox_agent.runtime.bwrap import MASKED_PROC, MASKED_PROC_DIRS
from sandbox_agent.runtime.launch import SANDBOX_HOST_UID
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
    egress_plan,
    environment,
    from_policy,
    optional_keys,
    sources_in,
)

ENGINES = ("docker", "podman")
LIB = "/.sandbox-agent/lib"  # the JobWrapper's files: a tmpfs the confine step fills
LIB_BYTES = 8 << 20
# The container's name and label until the agent names them (policy render)
NAME_SHOWN = "<the job's container>"
LABEL_SHOWN = "<boot:pid:start of the agent>"
ENGINE_LIMITS = ("memory", "swap", "cpu_cores", "pids")
# Of bwrap's masked /proc files: those runc lets Docker bind /dev/null over (lxcfs's), and
# those neither Docker's own masks nor a bind can hide.
DOCKER_MASKABLE = ("/proc/diskstats",)
DOCKER_UNMASKED = ("/proc/cmdline", "/proc/config.gz", "/proc/kallsyms", "/proc/interrupts",
                   "/proc/key-users", "/proc/sys/kernel/random/boot_id")  # fmt: skip


def render(
    effective: EffectivePolicy,
    argv: Sequence[str],
    *,
    workdir: str,
    environ: Mapping[str, str] | None = None,
    engine: str = "docker",
    host: HostView | None = None,
    wrapper: bool = False,
    name: str = "",
    rootless: bool | None = None,
) -> LaunchPlan:
    """``ENGINE run`` for ``argv`` (with ``wrapper``, the JobWrapper: ``argv`` is not
    used). ``name``: the container's (containers.name_for), the label then this
    agent's; ``rootless``: whether the engine runs as the agent's own user (Podman as
    a user; by default, whether the agent is not root)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
    host = host or RealHost()
    podman = engine == "podman"
    rootless = podman and (os.geteuid() != 0 if rootless is None else rootless)
    need = Requirements(optional_keys(effective))
    view = effective.view
    own_uids = not rootless and podman and view.namespaces.user != "off"
    image_words = _image(view.filesystem.image, engine, own_uids)
    try:
        carried = host.python()
    except NoHostPython as error:
        gate.refuse("filesystem.image", f"the confine step's interpreter: {error}")
    label = containers.agent_label() if name else LABEL_SHOWN
    out = [engine, "run", "--rm", "-i", "--pull", "never", "--log-driver", "none",
           "--name", name or NAME_SHOWN, "--label", f"{containers.LABEL}={label}"]  # fmt: skip
    if podman:  # where the session learns the container's pid without asking Podman
        out += ["--pidfile", f"{AGENT_FILES}/{containers.PIDFILE}"]
    if not wrapper:  # the payload is no init; the JobWrapper is, and holds its channel alone
        out.append("--init")

    # -- namespaces ----------------------------------------------------------------------
    for ns in ("pid", "ipc", "uts", "mount"):
        need.met(f"namespaces.{ns}", f"{engine} makes one per container")
    out += ["--ipc", "private", "--cgroupns", "private"]
    need.met("namespaces.cgroup", "--cgroupns private")
    uid, gid = view.process.uid, view.process.gid
    work_option = ""
    if rootless:  # the agent's uid is the payload's, as with bwrap
        out += ["--userns", f"keep-id:uid={uid},gid={gid}"]
        need.met("namespaces.user", "rootless Podman: --userns keep-id (the agent's uid)")
    elif podman and view.namespaces.user != "off":
        why = host.uid_ranges_unmet()
        if why is not None:  # else every run fails, with Podman's words only
            gate.refuse("namespaces.user", f"Podman: {why}")
        out += ["--userns", "auto"]
        need.met("namespaces.user", "--userns auto (a host uid range of its own)")
        work_option = ",U"  # the work directory's owner becomes the payload's uid
    elif podman:
        need.met("namespaces.user", "off: host uid 65534")
    elif view.namespaces.user != "off":
        need.unmet("namespaces.user", "Docker gives no container its own user namespace "
                   "(only the daemon's userns-remap); use Podman, or mark it optional")  # fmt: skip
    else:
        need.met("namespaces.user", "off: host uid 65534")
    if not rootless and not work_option:  # no user namespace: never a real user's uid
        uid = gid = SANDBOX_HOST_UID
    network = view.network.mode
    if network == "host":
        if view.namespaces.net == "required":
            gate.refuse("network.mode", "host shares the host's network namespace, which "
                        'namespaces.net = "required" forbids; set it "off"')  # fmt: skip
        out += ["--network", "host"]
        need.met("namespaces.net", "off: --network host shares the host's")
    else:
        if view.namespaces.net == "off":
            gate.refuse("network.mode", f"{network} needs the job's own network namespace; "
                        'set namespaces.net = "required"')  # fmt: skip
        out += ["--network", "none"]
        need.met("namespaces.net", "--network none: loopback only")
    egress = None
    if network == "egress" and wrapper:  # the JobWrapper waits for the agent's plumbing
        egress = egress_plan(effective, host, need)
    elif network == "egress":
        need.unmet("network.mode", "egress: here the payload starts with the container, "
                   "before the agent could plumb its network (the pilot's JobWrapper "
                   "waits for it); it gets --network none", by="agent")  # fmt: skip

    # -- process ----------------------------------------------------------------------
    out += ["--cap-drop", "ALL"]
    for capability in view.process.capabilities:
        out += ["--cap-add", capability.removeprefix("CAP_")]
    need.met("process.capabilities", "--cap-drop ALL")
    if view.process.no_new_privs:
        out += ["--security-opt", "no-new-privileges"]
        need.met("process.no_new_privs", "--security-opt no-new-privileges")
    profile = str(effective.policy.seccomp_path())
    out += ["--security-opt", f"seccomp={profile}"]
    need.met("process.seccomp", f"--security-opt seccomp={profile}")
    if view.process.new_session:
        need.met("process.new_session", "no terminal (-i without -t): the payload runs in a "
                 "session of its own", by="launcher")  # fmt: skip
    if wrapper:
        need.met("process.die_with_parent", "the JobWrapper (pid 1) kills the container "
                 "when the agent's end of its stdin closes (the lifeline); the agent removes "
                 "it at teardown", by="agent")  # fmt: skip
    else:  # the payload owns stdin: nothing inside learns that the agent is gone
        need.unmet("process.die_with_parent", "here the payload starts with the container, "
                   "which its engine runs on if the agent is killed (until the next agent "
                   "sweeps it); the pilot's JobWrapper ends with its agent",
                   by="agent")  # fmt: skip
    out += ["--user", f"{uid}:{gid}"]

    # -- filesystem ----------------------------------------------------------------------
    out.append("--read-only")
    if podman:  # Podman's --read-only adds writable, unbounded tmpfs at /run and /var/tmp;
        # and its /etc/hosts names the node (its own entries, host.containers.internal)
        out += ["--read-only-tmpfs=false", "--no-hosts"]
    # the image's /etc/ld.so.preload would load its code into the carried interpreter
    # (the confine step, the JobWrapper: pid 1) before landlock and the handoff
    out += ["--volume", "/dev/null:/etc/ld.so.preload:ro"]
    # a tmpfs is the payload's: runc keeps the mode of the image's directory beneath it
    # (a 0755 /tmp), and Podman's auto uids are not the image's
    owned = "U" if podman else f"uid={uid},gid={gid}"
    for path, size in view.filesystem.tmpfs:  # exec as on bwrap (Docker's default: noexec)
        out += ["--tmpfs", f"{path}:rw,nosuid,nodev,exec,size={size},mode=1777,{owned}"]
    # what the engines mount that the policy's sandbox has not: /sys and /proc/sys (the
    # denied host paths), and the host-wide files of /proc that bwrap masks too
    if podman:
        masked = ["/sys", "/proc/sys", *MASKED_PROC, *MASKED_PROC_DIRS]
        out += ["--security-opt", "mask=" + ":".join(masked)]
    else:
        out += ["--tmpfs", "/sys:ro,nosuid,nodev,noexec,size=4k"]
        # runc mounts nothing inside /proc but over lxcfs's files, and Docker's CLI has
        # no mask option: Docker masks its own list (keys, timers, kcore, acpi, scsi)
        for path in DOCKER_MASKABLE:
            out += ["--volume", f"/dev/null:{path}:ro"]
        need.unmet("filesystem.proc", "Docker cannot mask " + ", ".join(DOCKER_UNMASKED) +
                   " (runc mounts nothing inside /proc but over lxcfs's files, and Docker "
                   "has no mask option); /proc/sys is read-only. Use Podman, or mark "
                   "filesystem.proc optional")  # fmt: skip
    for path in view.filesystem.read_only:
        if host.kind(path) != "missing":  # as bwrap: a bind whose source is absent is left
            out += ["--volume", f"{path}:{path}:ro"]
    for path in view.filesystem.writable:
        if host.kind(path) != "missing":
            out += ["--volume", f"{path}:{path}:rw"]
    for path in view.devices.paths:
        if host.kind(path) != "missing":
            out += ["--device", path]
    if view.devices.gpu == "nvidia":
        out += ["--gpus", "all"] if engine == "docker" else ["--device", "nvidia.com/gpu=all"]
    inside = view.filesystem.workdir
    out += ["--volume", f"{workdir}:{inside}:rw{work_option}", "--workdir", inside]
    if wrapper:  # filled by the confine step from its stdin, then read-only
        out += ["--tmpfs", f"{LIB}:rw,nosuid,nodev,noexec,size={LIB_BYTES},mode=0700,{owned}"]
    for source, target in carried.binds:
        out += ["--volume", f"{source}:{target}:ro"]

    # -- limits --------------------------------------------------------------------------
    limits = view.limits
    if rootless:  # the engine would ignore them: the agent's job cgroup holds the client
        agent_limits(effective, need)
    else:
        memory = limits.memory.value
        out += ["--memory", str(memory), "--memory-swap", str(memory + limits.swap.value)]
        out += ["--cpus", str(limits.cpu_cores.value), "--pids-limit", str(limits.pids.value)]
        flags = {"memory": "memory", "swap": "memory-swap", "cpu_cores": "cpus",
                 "pids": "pids-limit"}  # fmt: skip
        when = "before the job starts" if wrapper else "once the container runs"
        for limit in ENGINE_LIMITS:
            back = f", read back {when}" if limit != "swap" else ""  # swap is not read
            need.met(f"limits.{limit}", f"the container's cgroup (--{flags[limit]}){back}")
        agent_limits(effective, need, skip=ENGINE_LIMITS)  # the wall time, the work disk
    # Any --ulimit replaces Podman's defaults whole (its nproc would be 4 million, above
    # what a root without CAP_SYS_RESOURCE may set): Podman gets nproc too. RLIMIT_NPROC
    # counts a host uid's processes node-wide: the pids limit only where the payload's
    # uid is its own (--userns auto); else the agent's hard limit, or one job's
    # processes would stop every other job of that uid forking. Docker, and rootless
    # Podman (which cannot raise it), keep their own.
    nproc = []
    if work_option:
        nproc = [("nproc", limits.pids.value)]
    elif podman and not rootless:  # rootless Podman keeps the user's own
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nproc = [("nproc", -1 if hard == resource.RLIM_INFINITY else hard)]
    for rlimit, value in (*view.process.rlimits.items(), *nproc):
        out += ["--ulimit", f"{rlimit}={value}:{value}"]
    per_uid = "; nproc as the pids limit (the container's own uids)" if work_option else ""
    need.met("process.rlimits", f"--ulimit{per_uid}")

    # -- what runs -----------------------------------------------------------------------
    variables = [*environment(effective, environ), ("HOME", inside), ("TMPDIR", inside)]
    writable = [inside, *(path for path, _ in view.filesystem.tmpfs),
                *view.filesystem.writable, "/dev"]  # fmt: skip
    landlock = confinestep.landlock_words(effective, host.landlock_abi(), writable, need) or []
    python = list(carried.command)
    out += image_words
    # the step starts from an empty environment: the engine's own variables never reach
    # the payload, whose are given to the step alone
    # the step comes as its source (python3 -c), the JobWrapper's files on its stdin
    # before the handoff: a bind of the agent's files would name their host path
    # the step says on stderr what it applied before the JobWrapper runs (an engine
    # passes no descriptor): the agent learns the job's sandbox was made
    step = confinestep.step(SourceWord(Carried.CONFINE), landlock, variables,
                            in_process=wrapper, python=python, clearenv=True,
                            confirm="2" if wrapper else "")  # fmt: skip
    if wrapper:
        step[step.index("--clearenv") : step.index("--clearenv")] = ["--files-from-stdin", LIB]
        argv = [*python, "-I", "-S", f"{LIB}/jobwrapper.py", "--status-fd", "1"]
    out += step
    own, _, files_at = as_argv(out)
    return LaunchPlan(
        engine, (*own, *argv), requirements=tuple(need.items), seccomp_profile=profile,
        egress=egress, container=name or NAME_SHOWN, waits_for_agent=wrapper, files_at=files_at,
        sources_at=sources_in(out), stdin_files=WRAPPER_STDIN_FILES if wrapper else (),
        confirm_on_stderr=wrapper, **from_policy(effective),
    )  # fmt: skip


def _image(image: str, engine: str, own_uids: bool) -> list[str]:
    """The words that name the image: a local reference, or Podman's --rootfs for a
    directory (an overlay over it, so that nothing is written into the image), which
    Podman 4 cannot give a uid range of its own (--userns auto)."""
    if image.startswith("docker://"):
        return [image.removeprefix("docker://")]
    if image.startswith("/") and engine == "podman" and own_uids:
        gate.refuse("filesystem.image", f"Podman gives a directory image (--rootfs) no uid range "
                    f"of its own (--userns auto); import it: tar -C {image:.80} -c . | podman "
                    "import - NAME, and give docker://NAME")  # fmt: skip
    if image.startswith("/") and engine == "podman":
        return ["--rootfs", f"{image}:O"]
    where = "the host's userland" if image == "host" else "a directory image"
    hint = " (Podman also runs directories)" if engine == "docker" else ""
    gate.refuse(
        "filesystem.image", f"{engine} cannot run {where}; give a docker:// reference{hint}"
    )
