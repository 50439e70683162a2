"""The one place where fail-closed is decided.

A runtime's renderer states, for each requirement of the policy, how it enforces it or
why it cannot (a Requirement). This module alone turns a statement into an answer:
enforced, not met but optional (the audit record says so), or refused (the job must
not run). Rendering, ``policy explain``, ``sandbox exec``, the pilot, selftest and
doctor all take the answer from here, so they cannot disagree.

A requirement is optional when the site says so: its level is "optional"
(``namespaces.cgroup = "optional"``), or ``optional.requirements`` names it or a key
above it ("process.rlimits" covers "process.rlimits.nofile"). Anything else unmet is
refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn, Protocol

from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.policy.schema import FIELDS, REQUIREMENT


class Unenforceable(ValueError):
    """A required setting cannot be held here: the job must not run."""


@dataclass(frozen=True)
class Requirement:
    """A renderer's statement about one policy key."""

    key: str  # the policy key
    how: str  # how it is met, or why it cannot be
    met: bool = True
    # who enforces it: the runtime's own flags, the launcher (rlimits, descriptors), the
    # wrapper inside (landlock, session) or the agent (cgroups, monitors)
    by: str = "runtime"
    # asked for if the host allows (bwrap's --unshare-*-try): unmet until the runtime
    # reports that it made it
    tried: bool = False


class Verdict(StrEnum):
    ENFORCED = "enforced"
    OPTIONAL = "not met, optional"  # runs without it; recorded
    REFUSED = "refused"  # the job must not run


@dataclass(frozen=True)
class Answer:
    key: str
    verdict: Verdict
    how: str  # how it is enforced, or why it is not
    by: str = "runtime"

    @property
    def line(self) -> str:
        return f"{self.key}: {self.how}"


# The policy keys whose value is a level: required, optional or off.
LEVELLED = tuple(key for key, spec in FIELDS.items() if spec.choices == REQUIREMENT)


def optional_keys(effective: EffectivePolicy) -> frozenset[str]:
    """What this site lets run unmet: ``optional.requirements`` and every key whose level
    is "optional"."""
    named = {str(item.value) for item in effective["optional.requirements"].value}
    named |= {key for key in LEVELLED if effective.value(key) == "optional"}
    return frozenset(named)


def is_optional(key: str, optional: frozenset[str]) -> bool:
    """``key``, or a key above it, is optional."""
    parts = key.split(".")
    return any(".".join(parts[:end]) in optional for end in range(1, len(parts) + 1))


def judge(key: str, how: str, *, met: bool, optional: frozenset[str],
          by: str = "runtime") -> Answer:  # fmt: skip
    """THE decision: enforced when met, else optional when the site said so, else refused."""
    if met:
        return Answer(key, Verdict.ENFORCED, how, by)
    if is_optional(key, optional):
        return Answer(key, Verdict.OPTIONAL, how, by)
    return Answer(key, Verdict.REFUSED, how, by)


def admit(answer: Answer) -> Answer:
    """``answer`` unless it refuses: then Unenforceable, naming the key and why."""
    if answer.verdict is Verdict.REFUSED:
        raise Unenforceable(answer.line)
    return answer


def refuse(key: str, why: str) -> NoReturn:
    """A setting no site can let go unmet here (a policy that contradicts itself, an
    image a runtime cannot run): refused whatever is optional."""
    raise Unenforceable(f"{key}: {why}")


class Requirements:
    """A renderer's statements, each admitted through the gate as it is made: an unmet
    one is recorded when optional and refused (Unenforceable) when not."""

    def __init__(self, optional: frozenset[str]) -> None:
        self.optional = optional
        self.items: list[Requirement] = []

    def met(self, key: str, how: str, by: str = "runtime") -> None:
        self.items.append(Requirement(key, how, by=by))

    def unmet(self, key: str, why: str, by: str = "runtime") -> None:
        admit(judge(key, why, met=False, optional=self.optional, by=by))
        self.items.append(Requirement(key, why, met=False, by=by))

    def tried(self, key: str, how: str, by: str = "runtime") -> None:
        """Asked for if the host allows (bwrap's --unshare-*-try): met only once the
        runtime reports it made it; so allowed only where the site made it optional."""
        admit(judge(key, how, met=False, optional=self.optional, by=by))
        self.items.append(Requirement(key, how, met=False, by=by, tried=True))


# -- a whole plan ----------------------------------------------------------------------


def enforcer_exists(req: Requirement, carried: frozenset[str]) -> bool:
    """Whether who the requirement names is there to enforce it: the runtime's flags and
    the launcher always are; the agent holds limits (through limits.enforcement); the
    wrapper's confine step only where the plan carries it (``carried``: what the plan
    gives the sandbox, "confine" and "seccomp" among them); the agent's egress relay
    where the sandbox waits for it to be plumbed ("block", bwrap's pipe; "waits", a
    JobWrapper given its job only once the agent is done); the removal of an engine's
    container with the job where the plan names the container ("container")."""
    if req.by in ("runtime", "launcher"):
        return True
    if req.by == "agent" and req.key.startswith("limits."):
        return True
    if req.by == "agent" and req.key == "network.mode":  # egress: the sandbox waits for it
        return "block" in carried or "waits" in carried
    if req.by == "agent" and req.key == "process.die_with_parent":
        return "container" in carried
    if req.key == "process.seccomp":  # a runtime that loads none: the step does
        return "confine" in carried and "seccomp" in carried
    return req.key == "process.landlock" and "confine" in carried


def answers(requirements: Iterable[Requirement], carried: frozenset[str],
            optional: frozenset[str]) -> list[Answer]:  # fmt: skip
    """The gate's answer for each requirement of a plan as rendered. A limit counts as
    held here: who holds it depends on the job's cgroup, and limits.enforcement asks
    the gate again with that cgroup (on_host: with what this host provides)."""
    out = []
    for req in requirements:
        if req.met and not enforcer_exists(req, carried):
            who = "its runtime" if req.by == "runtime" else f"the {req.by}"
            out.append(judge(req.key, f"{req.how}: enforced by {who}, not implemented yet",
                             met=False, optional=optional, by=req.by))  # fmt: skip
        else:
            out.append(judge(req.key, req.how, met=req.met, optional=optional, by=req.by))
    return out


def check(requirements: Iterable[Requirement], carried: frozenset[str],
          optional: frozenset[str]) -> tuple[str, ...]:  # fmt: skip
    """The optional requirements a plan leaves unenforced; Unenforceable for the first
    required one."""
    return tuple(admit(a).key for a in answers(requirements, carried, optional)
                 if a.verdict is not Verdict.ENFORCED)  # fmt: skip


def as_run(answers: Iterable[Answer], unenforced: Iterable[str],
           limits: Iterable[Answer]) -> list[Answer]:  # fmt: skip
    """The answers once a launch is over, for its audit record: one tried if possible
    (bwrap's -try) is enforced when the runtime made it (it is not in ``unenforced``);
    each limit is answered as the job's cgroup was found to hold it (``limits``: the
    answers of limits.enforcement for that cgroup)."""
    left = set(unenforced)
    held = {answer.key: answer for answer in limits}
    out = []
    for answer in answers:
        if answer.key in held:
            answer = held[answer.key]
        elif answer.verdict is Verdict.OPTIONAL and answer.key not in left:
            answer = Answer(answer.key, Verdict.ENFORCED, f"{answer.how}: made", answer.by)
        out.append(answer)
    return out


class Found(Protocol):
    """What the host's kernel provides for one key (hostfacts.Fact)."""

    @property
    def available(self) -> bool: ...

    @property
    def detail(self) -> str: ...


def needs_host(effective: EffectivePolicy, key: str) -> bool:
    """Whether the policy asks the host for ``key`` at all (hostfacts names the keys):
    a limit only when its enforcement is the kernel's, the network's tools only for
    egress, seccomp always, a levelled key unless off."""
    if key.startswith("limits."):
        return effective.value(f"{key}.enforcement") == "kernel"
    if key == "network.mode":  # the host's tools, for egress alone
        return effective.value(key) == "egress"
    if key in LEVELLED:
        return effective.value(key) != "off"
    return True


def on_host(requirements: Iterable[Requirement], carried: frozenset[str],
            optional: frozenset[str], found: Mapping[str, Found],
            needs: frozenset[str]) -> list[Answer]:  # fmt: skip
    """The answers a launch on this host would give, for those who read before anything
    runs (``policy explain --runtime``, doctor, selftest's expected defences), limits
    aside (limits.enforcement.assign answers those, with what the job's cgroup would
    hold). ``found``: what the kernel provides per key (hostfacts.facts); ``needs``:
    the keys the policy asks of the kernel (needs_host), so that a namespace the
    policy turns off is not refused for a kernel that lacks it. A requirement the
    kernel lacks is not met; one asked for if possible (bwrap's -try) is met where the
    kernel has it."""
    out = []
    for req in requirements:
        # the facts of limits are about the agent's cgroup: an engine holds its own
        asked = req.key in needs and not req.key.startswith("limits.")
        fact = found.get(req.key) if asked else None
        if fact is not None and not fact.available and (req.met or req.tried):
            req = Requirement(req.key, fact.detail, met=False, by=req.by)
        elif fact is not None and fact.available and req.tried:
            req = Requirement(req.key, f"{req.how}: this host can", by=req.by)
        out += answers([req], carried, optional)
    return out
