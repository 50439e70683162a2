"""Who holds each limit of a job on this host: the job's cgroup (workdir_size: the work
directory's own filesystem, limits/workdisk.py), the agent's monitor, or nobody
(allowed only for a limit the site marked optional).

A limit the policy wants held by the kernel goes to the cgroup when this host gives the
agent one with the right controller. When it does not (a batch system's slot, which
delegates nothing), the cgroup the pilot was started in may hold it already: read back
at or below the job's value, it is "held by the slot". Else the policy decides: a required
limit stops the job (fail closed); an optional one falls back to the monitor where the
monitor can measure it, and the record says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sandbox_agent.limits import workdisk
from sandbox_agent.limits.cgroups import CGROUP_LIMITS
from sandbox_agent.limits.readback import Held
from sandbox_agent.policy import gate
from sandbox_agent.policy.gate import Requirement

# What the agent's monitor can measure and kill on.
MONITORABLE = ("wall_time", "workdir_size", "memory", "pids")


class LaunchPlan(Protocol):
    """What of a launch plan (runtime/plan.py) the limits are decided from: its
    requirements, what may go unmet, and each limit's enforcement."""

    @property
    def requirements(self) -> tuple[Requirement, ...]: ...

    @property
    def optional(self) -> frozenset[str]: ...

    def enforcement(self, name: str) -> str: ...


@dataclass(frozen=True)
class LimitPlan:
    kernel: frozenset[str]  # held by the job's cgroup
    monitored: frozenset[str]  # measured by the agent, which kills on excess
    unenforced: tuple[str, ...]  # optional limits nothing holds here
    notes: tuple[str, ...]  # why a limit is monitored instead, or not held
    answers: tuple[gate.Answer, ...] = ()  # the gate's, one per limit the agent holds
    by_slot: frozenset[str] = frozenset()  # held by the cgroup the pilot was started in


# What a batch slot's cgroup can hold for the job, read back (limits/readback.py).
SLOT_LIMITS = ("memory", "swap", "pids", "cpu_cores")


def held_by_slot(asked: Mapping[str, int], found: Held) -> dict[str, str]:
    """The limits the cgroup the pilot runs in (a batch system's slot, which delegates
    nothing) holds at or below what the job asks, each with how it was read. The job
    runs inside that cgroup: it can never have more than the slot allows."""
    values: dict[str, int | float | None] = {
        "memory": found.memory, "swap": found.swap, "pids": found.pids,
        "cpu_cores": found.cpu_cores,
    }  # fmt: skip
    out = {}
    for name in SLOT_LIMITS:
        value = values[name]
        if name in asked and value is not None and value <= asked[name] + 1e-6:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            out[name] = (f"held by the slot: the cgroup the pilot runs in caps {name} at "
                         f"{shown} (the job's limit: {asked[name]}), read back")  # fmt: skip
    return out


def wants_cgroup(plan: LaunchPlan) -> bool:
    """Whether any limit left to the agent asks for the kernel."""
    return any(
        r.by == "agent"
        and r.key.startswith("limits.")
        and plan.enforcement(r.key.removeprefix("limits.")) == "kernel"
        for r in plan.requirements
    )


def assign(
    plan: LaunchPlan, held: frozenset[str], where: str, slot: Mapping[str, str] | None = None
) -> LimitPlan:
    """Who holds each limit the plan leaves to the agent, with the gate's answer for
    each (a required one nobody can hold is answered refused; nothing is raised).
    ``held`` are the limits the job's cgroup holds (and workdir_size when the work
    directory is a filesystem of its size); ``where`` describes that cgroup, or says
    why there is none; ``slot``, the limits the pilot's own cgroup holds instead
    (held_by_slot), each with how. ``policy explain`` asks it with what this host
    would give."""
    slot = slot or {}
    by_slot: set[str] = set()
    kernel: set[str] = set()
    monitored: set[str] = set()
    unenforced: list[str] = []
    notes: list[str] = []
    answers: list[gate.Answer] = []
    for requirement in plan.requirements:
        if requirement.by != "agent" or not requirement.key.startswith("limits."):
            continue
        key, name = requirement.key, requirement.key.removeprefix("limits.")
        wanted = plan.enforcement(name)
        if (wanted == "kernel" and name in held) or (wanted == "monitored" and name in MONITORABLE):
            (kernel if wanted == "kernel" else monitored).add(name)
            answers.append(gate.judge(key, requirement.how, met=True, optional=plan.optional,
                                      by="agent"))  # fmt: skip
            continue
        if wanted == "kernel" and name in slot:
            by_slot.add(name)
            if name in MONITORABLE:  # the slot's OOM killer may pick the agent: the
                monitored.add(name)  # monitor ends the job at its own limit first
            answers.append(gate.judge(key, slot[name], met=True, optional=plan.optional,
                                      by="agent"))  # fmt: skip
            continue
        why = _why_not(name, wanted, where)
        answer = gate.judge(key, why, met=False, optional=plan.optional, by="agent")
        if answer.verdict is gate.Verdict.OPTIONAL:
            if name in MONITORABLE:
                monitored.add(name)
                notes.append(f"{key}: monitored instead ({why})")
            else:
                unenforced.append(key)
                notes.append(f"{key}: not enforced ({why})")
        answers.append(answer)
    return LimitPlan(frozenset(kernel), frozenset(monitored), tuple(unenforced), tuple(notes),
                     tuple(answers), frozenset(by_slot))  # fmt: skip


def decide(
    plan: LaunchPlan, held: frozenset[str], where: str, slot: Mapping[str, str] | None = None
) -> LimitPlan:
    """As assign, for a launch: the gate refuses (Unenforceable) the first required
    limit nobody can hold."""
    limits = assign(plan, held, where, slot)
    for answer in limits.answers:
        gate.admit(answer)
    return limits


def _why_not(name: str, wanted: str, where: str) -> str:
    if wanted == "monitored":
        return f"the agent cannot measure {name}; set its enforcement to kernel"
    if name == "workdir_size":
        kind, why = workdisk.mechanism()
        if kind is None:
            return f"the work directory cannot be a filesystem of its own here: {why}"
        return (
            "the work directory given is a plain directory (the pilot makes each job's "
            "a filesystem of its own)"
        )
    if name not in CGROUP_LIMITS:
        return f"no kernel mechanism holds {name}; set its enforcement to monitored"
    return f"{where}: it cannot hold {name}"
