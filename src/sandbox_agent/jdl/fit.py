"""Whether a job fits a slot: the resources it asks for, then its Requirements.

Matching is shared by the pilot (which asks for work), the broker (which hands it
out) and ``submit`` (which refuses a job no slot of the node could ever run), so it
lives here, beside the JDL it reads, not in any one of them.
"""

from __future__ import annotations

from collections.abc import Mapping

from sandbox_agent.jdl.requirements import Slot, SlotValue, evaluate
from sandbox_agent.jdl.spec import JobSpec

_MB = 1 << 20


def refusal(spec: JobSpec, slot: Mapping[str, SlotValue]) -> str | None:
    """Why ``spec`` cannot run in ``slot``, or None when it fits: the resources it asks
    for first (one line each a person can act on), then its Requirements."""
    asks = [
        ("CPUCores", spec.cpu_cores, "cores", 1),
        ("Memory", spec.memory_bytes, "MB of memory", _MB),
        ("Disk", spec.workdir_bytes, "MB of work directory", _MB),
        ("TTL", spec.ttl, "seconds of TTL", 1),
    ]
    for name, wanted, unit, scale in asks:
        offered = slot.get(name)
        if wanted is None or not isinstance(offered, int | float):
            continue
        need = -(-wanted // scale)  # round up: 1.5 MB asked is 2 MB needed
        if need > offered:
            return f"it asks for {need} {unit}; the slot offers {offered}"
    if spec.requirements is None:
        return None
    decision = evaluate(spec.requirements, Slot(slot), spec.job_attributes())
    if decision.outcome == "TRUE":
        return None
    inputs = ", ".join(f"{n} = {v}" for n, v in decision.inputs)
    return (f"its Requirements are {decision.outcome}: {decision.clause} -> "
            f"{decision.clause_value}" + (f" ({inputs})" if inputs else ""))  # fmt: skip
