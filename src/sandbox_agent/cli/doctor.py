"""``sandbox-agent doctor``: the host's posture, each check OK, WEAK or MISSING with
what a site admin can do about it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sandbox_agent import doctor as posture
from sandbox_agent import exitcodes
from sandbox_agent.cli.app import JsonOption, app, fail, home_of
from sandbox_agent.policy import PolicyError, policy_dirs


@app.command("doctor")
def doctor(
    ctx: typer.Context,
    policy: Annotated[
        str, typer.Option("--policy", help="The policy whose needs are checked.")
    ] = "default",
    as_json: JsonOption = False,
) -> None:
    """What this node gives the sandbox and which attacks matter here: the kernel, user
    namespaces, cgroups, seccomp, landlock, the sysctls that guard the rest of the node,
    the runtimes, and what the policy would have to run without. Each line says OK, WEAK
    or MISSING and what to do. Exit 3 if the pilot cannot run jobs here, else 0."""

    try:
        found = posture.checks(policy, policy_dirs(home_of(ctx)))
    except PolicyError as exc:
        fail(str(exc))
    blocking = [c for c in found if c.blocking]
    if as_json:
        typer.echo(json.dumps({"runs_jobs": not blocking,
                               "checks": [c.as_json() for c in found]}, indent=1))  # fmt: skip
    else:
        width = max(len(c.name) for c in found)
        for check in found:
            typer.echo(f"{check.status:8} {check.name:{width}}  {check.found}")
            if check.advice:
                typer.echo(f"{'':8} {'':{width}}  -> {check.advice}")
        tally = {s: sum(c.status == s for c in found) for s in (posture.OK, posture.WEAK,
                                                                posture.MISSING)}  # fmt: skip
        verdict = ("the pilot cannot run jobs here: " + ", ".join(c.name for c in blocking)
                   if blocking else "the pilot can run jobs here")  # fmt: skip
        typer.echo(f"\n{tally['OK']} OK, {tally['WEAK']} WEAK, {tally['MISSING']} MISSING "
                   f"({len(blocking)} of them needed); {verdict}")  # fmt: skip
    if blocking:
        raise typer.Exit(exitcodes.ENVIRONMENT)
