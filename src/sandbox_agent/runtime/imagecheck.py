"""``image inspect``: what an image is (images.inspect) and whether the pilot could
run jobs on it here, with a policy's sandbox rendered for it as bwrap would start it.

It renders a sandbox, so it sits with the runtimes, above images and policy.
"""

from __future__ import annotations

import os
from pathlib import Path

from sandbox_agent.images import ImageRefused, prepare
from sandbox_agent.images.inspect import PROGRAMS, Inspection, architecture, release
from sandbox_agent.policy import EffectivePolicy, PolicyError, compose, load_policy
from sandbox_agent.policy.gate import Unenforceable
from sandbox_agent.policy.model import Setting
from sandbox_agent.runtime import bwrap


def inspect(path: str, policy: str = "default", dirs: list[Path] | None = None) -> Inspection:
    """The image at ``path``, read afresh (no cached hash: a pin is made from this),
    and whether ``policy`` could run a job on it here (its sandbox rendered for bwrap
    with this image as its filesystem.image)."""
    out = Inspection(path, policy=policy)
    try:
        with prepare.opened(path) as image:
            out.path, out.kind, out.size = image.path, image.kind, image.found.size
            out.digest, out.entries = image.found.digest, image.found.entries
            out.os_release = release(image.root)
            out.architecture = architecture(image.root)
            why = _policy_refusal(policy, dirs, path, image)
            if why:
                out.problems.append(f"the {policy} policy cannot run on it: {why}")
    except ImageRefused as error:
        out.problems.append(str(error))
        return out
    host = os.uname().machine
    if not out.architecture:
        out.problems.append(f"no {', '.join('/' + p for p in PROGRAMS)} to run a payload with")
    elif out.architecture != host:
        out.problems.append(f"built for {out.architecture}; this host is {host}")
    out.usable = not out.problems
    return out


def _policy_refusal(name: str, dirs: list[Path] | None, path: str, image: prepare.Opened) -> str:
    """Why the policy ``name`` with this image as its default would not start a job's
    sandbox here, or ""."""
    try:
        composed = compose(load_policy(name, dirs))
    except (PolicyError, ValueError) as error:
        return str(error)
    settings = {**composed.settings, "filesystem.image": Setting(path, "image inspect")}
    effective = EffectivePolicy(composed.policy, settings)
    ready = prepare.ReadyImage(image.path, path, "image inspect", image.kind,
                               image.found.digest, image.found.size, False, image.root)  # fmt: skip
    try:
        bwrap.render(effective, bwrap.WRAPPER_ARGV, workdir="/nonexistent/work", environ={},
                     wrapper=True, image=ready)  # fmt: skip
    except (Unenforceable, ImageRefused) as error:
        return str(error)
    except OSError as error:
        return f"cannot read it: {error.strerror}"
    return ""
