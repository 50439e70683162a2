"""The slot the agent offers, as a job's Requirements see it (``other.*``); whether a
job fits it is ``jdl.fit.refusal``.

The node is measured (cores the agent may run on, memory, free disk where the work
directories go, platform). A pilot started by HTCondor offers its HTCondor slot instead:
the machine ad the starter wrote (``agent/condor.py``, docs/htcondor.md) gives the cores,
memory and disk, each still capped by what the node measures, and the GPUs. A site file
``HOME/slot.toml`` adds what cannot be measured (Site, CE, GridPartitions, Packages) and
may lower, never raise, what was measured or read from the ad. ``TTL`` is the time the
agent has left: its configured lifetime minus what has passed, capped by its token's
validity minus a margin, because a job token must not outlive the agent token that asked
for it.

``explain`` says where each attribute came from; ``describe`` is the slot alone.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path

import psutil

from sandbox_agent.agent import condor
from sandbox_agent.jdl import Slot
from sandbox_agent.jdl.fit import refusal  # noqa: F401 (matching's home is jdl.fit now)
from sandbox_agent.jdl.requirements import SlotValue

SITE_FILE = "slot.toml"
DEFAULT_TTL = 86400  # seconds a pilot offers when nobody says (the agent's --ttl)
TOKEN_MARGIN = 300  # seconds of agent-token validity kept back from every slot
MEASURED = ("CPUCores", "Memory", "Disk")  # a site file may lower these, not raise them
AD_GIVES = (("CPUCores", "cpus"), ("Memory", "memory_mib"), ("Disk", "disk_mib"))
_MB = 1 << 20


def node(work_area: Path) -> dict[str, int]:
    """What the node itself has for a job: the cores this process may run on, its
    memory (MiB) and the free disk (MiB) where the work directories go."""
    area = work_area if work_area.exists() else work_area.parent
    return {
        "CPUCores": len(os.sched_getaffinity(0)),
        "Memory": psutil.virtual_memory().total // _MB,
        "Disk": shutil.disk_usage(area).free // _MB,
    }


def measured(work_area: Path, environ: Mapping[str, str] = os.environ) -> dict[str, SlotValue]:
    """What this node offers, measured now: under HTCondor (``environ`` names a machine
    ad), what the slot holds, never more than the node has. A machine ad that cannot be
    read is a ValueError (condor.CondorError), never the whole node instead."""
    return _measured(work_area, environ)[0]


def describe(
    home: Path, work_area: Path, ttl_left: int, environ: Mapping[str, str] = os.environ
) -> Slot:
    """The slot: measured, then the site file's attributes, then the TTL left (a site
    file's TTL caps it: the batch slot the pilot runs in may end sooner)."""
    return explain(home, work_area, ttl_left, environ)[0]


def explain(
    home: Path, work_area: Path, ttl_left: int, environ: Mapping[str, str] = os.environ
) -> tuple[Slot, dict[str, str]]:
    """The slot (as ``describe``) and where each of its attributes came from: "node",
    "default", the machine ad's path, the site file's path or "agent" (the TTL)."""
    attrs, origins = _measured(work_area, environ)
    lower_only = [*MEASURED, *(["GPUs"] if "GPUs" in attrs else [])]
    site = home / SITE_FILE
    if site.exists():
        for name, value in Slot.from_toml(site).items():
            key = next((m for m in lower_only if m.casefold() == name.casefold()), name)
            origin = str(site)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if key in lower_only and numeric and value >= attrs[key]:  # type: ignore[operator]
                value, origin = attrs[key], origins[key]  # not raised: what was measured holds
            attrs = {k: v for k, v in attrs.items() if k.casefold() != name.casefold()}
            origins = {k: v for k, v in origins.items() if k.casefold() != name.casefold()}
            attrs[key], origins[key] = value, origin
    site_ttl = attrs.get("TTL")
    ttl_origin = "agent"
    numeric = isinstance(site_ttl, int | float) and not isinstance(site_ttl, bool)
    if numeric and int(site_ttl) < ttl_left:  # type: ignore[arg-type]
        ttl_left, ttl_origin = int(site_ttl), str(site)  # type: ignore[arg-type]
    attrs["TTL"], origins["TTL"] = max(0, int(ttl_left)), ttl_origin
    return Slot(attrs), origins


def _measured(
    work_area: Path, environ: Mapping[str, str]
) -> tuple[dict[str, SlotValue], dict[str, str]]:
    has = node(work_area)
    attrs: dict[str, SlotValue] = {
        "Type": "machine",
        "Site": "local",
        "CE": f"local::{socket.gethostname()}",
        **has,
        "Price": 1,
        "Platform": f"{platform.system()}-{platform.machine()}",
    }
    origins = {name: "default" for name in attrs}
    origins.update({name: "node" for name in (*has, "CE", "Platform")})
    ad = condor.machine_ad(environ)
    if ad is not None:
        where = f"HTCondor machine ad {ad.path}"
        for key, field in AD_GIVES:
            given = getattr(ad, field)
            if given <= has[key]:
                attrs[key], origins[key] = given, where
            else:
                origins[key] = f"node (the {where} says {given}, more than the node has)"
        if ad.gpus is not None:
            attrs["GPUs"], origins["GPUs"] = ad.gpus, where
    return attrs, origins
