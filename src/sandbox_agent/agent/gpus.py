"""The GPUs a job may see: the ones the batch system assigned to this pilot's slot.

A GPU policy (devices.gpu = "nvidia") names device nodes by fixed paths and lets the
engines bind every GPU (Docker --gpus all, Apptainer --nv). On a node HTCondor shares,
that would hand a job the GPUs of other slots. Under HTCondor the pilot therefore
replaces the policy's per-GPU nodes (/dev/nvidia<N>) by those of the GPUs in its
machine ad (agent/condor.py maps each id to its device minor), keeps the shared nodes
the node has, requires them (filesystem.required: a GPU that vanished makes the node
unhealthy) and sets devices.gpu to "assigned", so no runtime adds GPUs of its own. A
GPU whose device cannot be named refuses the slot: no GPU is ever guessed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from sandbox_agent.agent import condor
from sandbox_agent.agent.condor import CondorError
from sandbox_agent.policy.load import overridden, replaced
from sandbox_agent.policy.model import Policy

_ONE_GPU = re.compile(r"nvidia[0-9]+")  # one GPU's node, by name (not nvidiactl)


def _one_gpu(path: str) -> bool:
    return _ONE_GPU.fullmatch(os.path.basename(path)) is not None


def assigned(
    policy: Policy,
    environ: Mapping[str, str] = os.environ,
    proc: Path | None = None,
    dev: Path | None = None,
) -> Policy:
    """``policy`` with exactly the assigned GPUs bound, when it binds NVIDIA GPUs (by
    devices.gpu, or a per-GPU node in devices.paths) and the pilot runs in an HTCondor
    slot; else ``policy``. CondorError (one line) when an
    assigned GPU cannot be mapped to its device node. ``proc`` and ``dev``: the
    driver's /proc directory and /dev (condor.gpu_devices)."""
    gpu_kind = policy.value("devices.gpu")
    named = any(_one_gpu(str(i.value)) for i in policy["devices.paths"].value)
    if gpu_kind != "nvidia" and not named:
        return policy
    ad = condor.machine_ad(environ)
    if ad is None:
        return policy
    found = ad.devices(proc, dev)
    refusal = found.refusal()
    if refusal is not None:
        raise CondorError(f"{ad.path}: {refusal}")
    origin = f"slot: AssignedGPUs ({ad.path})"
    kept = [str(i.value) for i in policy["devices.paths"].value if not _one_gpu(str(i.value))]
    paths = [*kept, *(p for p in found.paths if p not in kept)]
    gpu_nodes = [p for p in found.paths if _one_gpu(p)]
    required = [str(i.value) for i in policy["filesystem.required"].value]
    policy = replaced(policy, "devices.paths", paths, origin)
    policy = replaced(policy, "filesystem.required", [*required, *gpu_nodes], origin)
    if gpu_kind == "nvidia":  # "assigned": no runtime adds GPUs of its own
        policy = overridden(policy, "devices.gpu", "assigned", origin)
    return policy
