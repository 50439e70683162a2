"""``sandbox-agent selftest``: the attack probes, run in the sandbox this pilot would
build for a job, with canaries where its secrets are; exit 0 only if nothing leaked
(what the policy grants, such as network.mode = "host", is no leak)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sandbox_agent import exitcodes
from sandbox_agent.agent import condor
from sandbox_agent.agent.pilot import make_work_area, unreachable
from sandbox_agent.cli.app import JsonOption, app, fail, home_of, printable
from sandbox_agent.cli.pilot import RUNTIME_HELP, pilot_sandbox
from sandbox_agent.images import ImageRefused
from sandbox_agent.policy import PolicyError, PolicyRejection
from sandbox_agent.policy.gate import Unenforceable
from sandbox_agent.runtime.agentproc import Terminated, harden, stop_signals_raise
from sandbox_agent.runtime.choose import RuntimeUnavailable
from sandbox_agent.runtime.containers import ContainerError
from sandbox_agent.runtime.launch import RuntimeMissing, WorkdirRefused
from sandbox_agent.seccomp.compile import CompileError
from sandbox_agent.selftest.probe_in_sandbox import (
    GRANTED,
    LEAKED,
    NOT_APPLICABLE,
    SelftestError,
    attack_table,
    run_probe,
)

if TYPE_CHECKING:
    from sandbox_agent.selftest.probe_in_sandbox import Outcome

DEFENCE_WIDTH = 72  # characters of the expected defence shown in the table


@app.command("selftest")
def selftest(
    ctx: typer.Context,
    attacks: Annotated[
        list[str] | None, typer.Argument(help="Attacks to run [default: every one].")
    ] = None,
    policy: Annotated[str, typer.Option("--policy", help="A policy name or path.")] = "default",
    runtime: Annotated[str, typer.Option("--runtime", help=RUNTIME_HELP)] = "auto",
    work_area: Annotated[
        Path | None,
        typer.Option("--work-area", help="Where its work directory goes [default: HOME/work]."),
    ] = None,
    listing: Annotated[bool, typer.Option("--list", help="List the attacks and stop.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run the attack probes inside the sandbox the pilot would build for a job (this
    policy, this home's credentials on its deny list), with canary secrets planted
    where the pilot's are: a key in HOME/certs, its variables, an inherited descriptor,
    host IPC, a process outside, listeners on the host. Prints each attack, the
    defence expected to stop it and what happened: blocked, LEAKED, granted (it got
    through as the policy grants: network.mode = "host" shares the node's network), or
    n/a here (and why). In egress mode the agent's relay must also have refused what
    the probe tried. Exit 0 only if nothing leaked (granted is no leak); 1 if something
    did; 3 if it cannot run here."""

    if listing:
        for name, row in attack_table().items():
            typer.echo(f"{name:18} {row['mechanism']:12} {row['threat']}")
        return
    home = home_of(ctx)
    try:
        area = (work_area or condor.work_area() or home / "work").absolute()
        found, loaded = pilot_sandbox(runtime, policy, home)
        problem = make_work_area(area) or (
            f"not reachable by the sandbox's uid ({blocked} is not searchable by others)"
            if (blocked := unreachable(area)) else None)  # fmt: skip
        if problem:
            fail(f"{area}: {problem}", exitcodes.ENVIRONMENT)
        harden()  # this process is the agent here: undumpable, a subreaper
        with stop_signals_raise():  # SIGTERM/SIGHUP: the canaries are taken away first
            outcome = run_probe(loaded, certs=home / "certs",
                                credentials=[str(home / "certs")], work_area=area,
                                home_tag="selftest", attacks=attacks,
                                runtime=found.runtime, binary=found.binary)  # fmt: skip
    except Terminated as exc:
        fail(f"stopped by {exc}; the canaries were taken away", 128 + exc.signum)
    except RuntimeUnavailable as exc:
        fail(f"cannot run the sandbox here: {exc}", exitcodes.ENVIRONMENT)
    except PolicyError as exc:
        fail(str(exc))
    except PolicyRejection as exc:
        fail(f"the policy rejects the selftest's job: {exc}", exitcodes.FAILED)
    except ContainerError as exc:
        fail(f"the container engine: {exc}", exitcodes.ENVIRONMENT)
    except SelftestError as exc:
        fail(f"selftest: {exc}", exitcodes.ENVIRONMENT)
    except ImageRefused as exc:
        fail(f"the policy's image cannot be used: {exc}", exitcodes.ENVIRONMENT)
    except (Unenforceable, RuntimeMissing, CompileError, WorkdirRefused) as exc:
        fail(f"cannot enforce the policy here: {exc}", exitcodes.ENVIRONMENT)
    except (subprocess.SubprocessError, OSError) as exc:
        fail(f"cannot run the probe: {exc}", exitcodes.ENVIRONMENT)
    if as_json:
        typer.echo(json.dumps(outcome.as_json(), indent=1))
    else:
        _table(outcome)
    if outcome.leaked:
        raise typer.Exit(exitcodes.FAILED)


def _table(outcome: Outcome) -> None:

    typer.echo(f"{'ATTACK':18} {'RESULT':8} {'MS':>7}  EXPECTED DEFENCE")
    for row in outcome.rows:
        defence = row.defence if len(row.defence) <= DEFENCE_WIDTH else \
            row.defence[:DEFENCE_WIDTH - 3] + "..."  # fmt: skip
        typer.echo(f"{row.attack:18} {row.result:8} {row.ms:7.1f}  {defence}")
    leaked = [r for r in outcome.rows if r.result == LEAKED]
    granted = [r for r in outcome.rows if r.result == GRANTED]
    absent = [r for r in outcome.rows if r.result == NOT_APPLICABLE]
    for title, rows in (("LEAKED", leaked), ("granted by the policy (no leak)", granted),
                        ("not applicable here", absent)):  # fmt: skip
        if rows:
            typer.echo(f"\n{title}:")
            for row in rows:
                typer.echo(f"  {row.attack}: {printable(row.detail)}")
    for title, lines in (
        ("the host saw (each a leak)", outcome.host_saw),
        ("the host saw (granted by the policy)", outcome.host_saw_granted),
    ):
        if lines:
            typer.echo(f"\n{title}:")
            for seen in lines:
                typer.echo(f"  {printable(seen)}")
    if outcome.relay:
        typer.echo(f"\n{printable(outcome.relay)}")  # egress: "the agent's relay refused ..."
    blocked = len(outcome.rows) - len(leaked) - len(granted) - len(absent)
    given = f", {len(granted)} granted by the policy" if granted else ""
    besides = f" (besides {len(outcome.host_saw_granted)} granted)" \
        if outcome.host_saw_granted else ""  # fmt: skip
    typer.echo(f"\n{len(outcome.rows)} attacks: {blocked} blocked, {len(leaked)} LEAKED"
               f"{given}, {len(absent)} not applicable here; {len(outcome.host_saw)} seen by "
               f"the host{besides}; {outcome.seconds:.1f} s "
               f"(policy {outcome.policy})")  # fmt: skip
