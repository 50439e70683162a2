"""One entry point to every runtime's renderer, so ``policy render`` shows exactly the
plan ``sandbox exec`` and the pilot would start."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from sandbox_agent.policy.compose import EffectivePolicy
from sandbox_agent.runtime import apptainer, bwrap, containers, docker
from sandbox_agent.runtime.choose import RUNTIMES
from sandbox_agent.runtime.plan import HostView, LaunchPlan

if TYPE_CHECKING:
    from sandbox_agent.images.prepare import ReadyImage


def render(
    runtime: str,
    effective: EffectivePolicy,
    argv: Sequence[str],
    *,
    workdir: str,
    environ: Mapping[str, str] | None = None,
    binary: str | None = None,
    host: HostView | None = None,
    image: ReadyImage | None = None,
    wrapper: bool = False,
    name: str = "",
) -> LaunchPlan:
    """The plan of ``runtime`` (one of RUNTIMES); raises Unenforceable. ``binary``: the
    runtime's path when it was found; ``image``: the policy's image made ready, which
    bwrap binds (the image runtimes take the path itself). ``wrapper``: the plan runs
    the JobWrapper (``argv`` is bwrap.WRAPPER_ARGV); ``name``: the session's, which
    names an engine's container."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}")
    if runtime == "bwrap":
        return bwrap.render(effective, argv, workdir=workdir, environ=environ,
                            binary=binary or "bwrap", host=host, image=image,
                            wrapper=wrapper)  # fmt: skip
    if runtime in ("apptainer", "singularity"):
        return apptainer.render(effective, argv, workdir=workdir, environ=environ,
                                binary=binary or runtime, host=host, wrapper=wrapper)  # fmt: skip
    plan = docker.render(effective, argv, workdir=workdir, environ=environ, engine=runtime,
                         host=host, wrapper=wrapper,
                         name=containers.name_for(name) if name else "")  # fmt: skip
    if binary:
        plan = dataclasses.replace(plan, argv=(binary, *plan.argv[1:]))
    return plan
