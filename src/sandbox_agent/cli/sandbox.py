"""``sandbox-agent sandbox exec``: run one command in the sandbox a policy composes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from sandbox_agent import exitcodes
from sandbox_agent.cli.app import fail, home_of
from sandbox_agent.policy import PolicyError, PolicyRejection, compose, load_policy, policy_dirs
from sandbox_agent.runtime import bwrap
from sandbox_agent.runtime.launch import RuntimeMissing, start
from sandbox_agent.runtime.plan import Unenforceable
from sandbox_agent.seccomp.compile import CompileError

sandbox_app = typer.Typer(
    help="Run commands in the sandbox a policy composes.", no_args_is_help=True,
    rich_markup_mode=None,
)  # fmt: skip


@sandbox_app.command(
    "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def sandbox_exec(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(help="The command and its arguments.")],
    policy: Annotated[str, typer.Option("--policy", help="A policy name or path.")] = "default",
    jdl: Annotated[Path | None, typer.Option("--jdl", help="Compose with this job.")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="bwrap (others come next).")] = "bwrap",
    workdir: Annotated[
        Path, typer.Option("--workdir", help="The writable work directory (and the cwd).")
    ] = Path(),
) -> None:
    """Run COMMAND in the sandbox (DIR writable, mounted as the work directory and the
    current directory); stdin, stdout and stderr pass through; its exit code is ours.
    Put `--` before a command that has options of its own."""
    from sandbox_agent.cli.policy import _job

    if runtime != "bwrap":
        fail(f"--runtime {runtime}: sandbox exec runs bwrap for now", exitcodes.ENVIRONMENT)
    spec = _job(jdl, None)
    try:
        effective = compose(
            load_policy(policy, policy_dirs(home_of(ctx))),
            spec,
            credentials=[str(home_of(ctx) / "certs")],
        )
        plan = bwrap.render(
            effective, command, workdir=str(workdir.resolve()), environ=dict(os.environ)
        )
        started = start(plan, effective)
    except PolicyError as exc:
        fail(str(exc))
    except PolicyRejection as exc:
        fail(f"rejected: {exc}", exitcodes.FAILED)
    except (Unenforceable, RuntimeMissing, CompileError) as exc:
        fail(f"cannot enforce: {exc}", exitcodes.ENVIRONMENT)
    raise typer.Exit(started.process.wait())
