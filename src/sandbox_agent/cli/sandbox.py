"""``sandbox-agent sandbox exec``: run one command in the sandbox a policy composes."""

from __future__ import annotations

import os
import secrets
import subprocess
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from sandbox_agent import exitcodes
from sandbox_agent.cli.app import fail, home_of
from sandbox_agent.cli.policy import _job
from sandbox_agent.images import ImageRefused, prepare
from sandbox_agent.policy import PolicyError, PolicyRejection, compose, load_policy, policy_dirs
from sandbox_agent.policy.gate import Unenforceable
from sandbox_agent.runtime import session
from sandbox_agent.runtime.agentproc import Terminated, harden, stop_signals_raise
from sandbox_agent.runtime.choose import AUTO_ORDER, RuntimeUnavailable, choose
from sandbox_agent.runtime.containers import ContainerError
from sandbox_agent.runtime.docker import ENGINES
from sandbox_agent.runtime.egress import EgressError
from sandbox_agent.runtime.jobrun import image_in_store
from sandbox_agent.runtime.launch import RuntimeMissing, WorkdirRefused, check_workdir
from sandbox_agent.runtime.render import render
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
    workdir: Annotated[
        Path,
        typer.Option("--workdir", help="The writable work directory (and the cwd); required."),
    ],
    policy: Annotated[str, typer.Option("--policy", help="A policy name or path.")] = "default",
    jdl: Annotated[Path | None, typer.Option("--jdl", help="Compose with this job.")] = None,
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="auto (honours USE_CONTAINERS), bwrap, apptainer, singularity, docker or podman.",
        ),
    ] = "auto",
) -> None:
    """Run COMMAND in the sandbox (DIR writable, mounted as the work directory and the
    current directory); stdin, stdout and stderr pass through; its exit code is ours.
    Put `--` before a command that has options of its own."""

    spec = _job(jdl, None)
    try:
        effective = compose(
            load_policy(policy, policy_dirs(home_of(ctx))),
            spec,
            credentials=[str(home_of(ctx) / "certs")],
        )
        # the host's userland and image files run on bwrap; OCI images need an engine
        oci = effective.view.filesystem.image.startswith("docker://")
        found = choose(runtime, order=AUTO_ORDER if oci else ("bwrap",))
        plan_workdir = check_workdir(workdir, effective, found.runtime)
        bwrap = found.runtime == "bwrap"
        harden()  # this process is the agent for the job: undumpable, a subreaper
        name = f"exec-{os.getpid()}-{secrets.token_hex(6)}"  # its cgroup's, its container's
        with prepare.ready(effective) if bwrap else nullcontext() as image:
            if found.runtime in ENGINES:
                image_in_store(effective, found.binary or found.runtime)
            plan = render(found.runtime, effective, command, workdir=plan_workdir,
                          environ=dict(os.environ), binary=found.binary, image=image,
                          name=name)  # fmt: skip
            with stop_signals_raise():
                result = session.run(plan, workdir=Path(plan_workdir), name=name)
    except Terminated as exc:
        fail(f"stopped by {exc}: the job was killed and its cgroup removed", 128 + exc.signum)
    except PolicyError as exc:
        fail(str(exc))
    except PolicyRejection as exc:
        fail(f"rejected: {exc}", exitcodes.FAILED)
    except WorkdirRefused as exc:
        fail(str(exc))
    except ImageRefused as exc:
        fail(f"the image cannot be used: {exc}", exitcodes.ENVIRONMENT)
    except (Unenforceable, RuntimeMissing, RuntimeUnavailable, CompileError) as exc:
        fail(f"cannot enforce: {exc}", exitcodes.ENVIRONMENT)
    except subprocess.SubprocessError as exc:
        fail(f"cannot start the sandbox: {exc}", exitcodes.ENVIRONMENT)
    except ContainerError as exc:
        fail(f"the container engine: {exc}", exitcodes.ENVIRONMENT)
    except EgressError as exc:
        fail(f"cannot give the job its network: {exc}", exitcodes.ENVIRONMENT)
    _report(result)
    if not result.payload_ran:
        fail("the sandbox failed before the command ran (the reason is above); nothing of "
             "the command ran", exitcodes.ENVIRONMENT)  # fmt: skip
    code = result.outcome.returncode
    raise typer.Exit(128 - code if code < 0 else code)


def _report(result: session.SessionResult) -> None:
    """What a person running the command should know, on stderr, one line each."""
    lines = []
    if result.unenforced:
        lines.append("not enforced here (optional in the policy): " + ", ".join(result.unenforced))
    lines += list(result.limits.notes)
    if result.outcome.reason:
        lines.append(result.outcome.detail)
    if result.egress is not None and result.egress.refused:
        shown = "; ".join(result.egress.refusals[:3])
        lines.append(f"network: {result.egress.refused} connection(s) refused ({shown})")
    if result.teardown and (result.teardown.survivors or not result.teardown.removed):
        lines.append("teardown: " + result.teardown.summary())
    for line in lines:
        typer.echo(f"sandbox-agent: {line}", err=True)
