"""The slot the agent offers, as a job's Requirements see it (``other.*``); whether a
job fits it is ``jdl.fit.refusal``.

The node is measured (cores the agent may run on, memory, free disk where the work
directories go, platform); a site file ``HOME/slot.toml`` adds what cannot be measured
(Site, CE, GridPartitions, Packages) and may lower, never raise, what was measured.
``TTL`` is the time the agent has left: its configured lifetime minus what has passed,
capped by its token's validity minus a margin, because a job token must not outlive
the agent token that asked for it.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
from pathlib import Path

import psutil

from sandbox_agent.jdl import Slot
from sandbox_agent.jdl.fit import refusal  # noqa: F401 (matching's home is jdl.fit now)
from sandbox_agent.jdl.requirements import SlotValue

SITE_FILE = "slot.toml"
DEFAULT_TTL = 86400  # seconds a pilot offers when nobody says (the agent's --ttl)
TOKEN_MARGIN = 300  # seconds of agent-token validity kept back from every slot
MEASURED = ("CPUCores", "Memory", "Disk")  # a site file may lower these, not raise them
_MB = 1 << 20


def measured(work_area: Path) -> dict[str, SlotValue]:
    """What this node offers, measured now."""
    area = work_area if work_area.exists() else work_area.parent
    return {
        "Type": "machine",
        "Site": "local",
        "CE": f"local::{socket.gethostname()}",
        "CPUCores": len(os.sched_getaffinity(0)),
        "Memory": psutil.virtual_memory().total // _MB,
        "Disk": shutil.disk_usage(area).free // _MB,
        "Price": 1,
        "Platform": f"{platform.system()}-{platform.machine()}",
    }


def describe(home: Path, work_area: Path, ttl_left: int) -> Slot:
    """The slot: measured, then the site file's attributes, then the TTL left (a site
    file's TTL caps it: the batch slot the pilot runs in may end sooner)."""
    attrs = measured(work_area)
    site = home / SITE_FILE
    if site.exists():
        for name, value in Slot.from_toml(site).items():
            key = next((m for m in MEASURED if m.casefold() == name.casefold()), name)
            if key in MEASURED and isinstance(value, int | float) and not isinstance(value, bool):
                value = min(value, attrs[key])
            attrs = {k: v for k, v in attrs.items() if k.casefold() != name.casefold()}
            attrs[key] = value
    site_ttl = attrs.get("TTL")
    if isinstance(site_ttl, int | float) and not isinstance(site_ttl, bool):
        ttl_left = min(ttl_left, int(site_ttl))
    attrs["TTL"] = max(0, int(ttl_left))
    return Slot(attrs)
