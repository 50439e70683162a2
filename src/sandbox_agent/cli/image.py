"""``sandbox-agent image inspect`` and ``image pin``: what an image is, and the policy
line that holds jobs to it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sandbox_agent import exitcodes
from sandbox_agent.cli.app import JsonOption, fail, home_of, printable
from sandbox_agent.images import ImageRefused, prepare
from sandbox_agent.policy import PolicyError, load_policy, policy_dirs
from sandbox_agent.runtime.imagecheck import inspect

image_app = typer.Typer(
    help="Inspect an image (a directory, squashfs or SIF file) and pin it in a policy.",
    no_args_is_help=True, rich_markup_mode=None,
)  # fmt: skip

PathArgument = Annotated[str, typer.Argument(help="A directory, a squashfs or a SIF file.")]


@image_app.command("inspect")
def image_inspect(
    ctx: typer.Context,
    path: PathArgument,
    policy: Annotated[str, typer.Option("--policy", help="The policy to try it with.")] = "default",
    as_json: JsonOption = False,
) -> None:
    """Kind, size, digest, the OS release and architecture inside, and whether the
    policy's sandbox can run jobs on it here. Exit 1 when it cannot."""

    dirs = policy_dirs(home_of(ctx))
    try:
        load_policy(policy, dirs)
    except PolicyError as exc:
        fail(printable(str(exc)))
    found = inspect(path, policy, dirs)
    if as_json:
        typer.echo(json.dumps(found.as_json(), indent=1))
    else:
        rows = [("image", found.path)]
        if found.kind:
            entries = f" in {found.entries} entries" if found.kind == "directory" else ""
            rows += [("kind", found.kind),
                     ("size", f"{found.size / 2**20:.1f} MiB ({found.size} bytes){entries}"),
                     ("digest", found.digest), ("os release", found.os_release or "(none found)"),
                     ("architecture", found.architecture or "(unknown)")]  # fmt: skip
        rows.append(("usable here", f"{'yes' if found.usable else 'no'} (policy {found.policy})"))
        for name, value in rows:
            typer.echo(f"{name + ':':<14}{printable(value)}")
        for problem in found.problems:
            typer.echo(f"  - {printable(problem)}")
    if not found.usable:
        raise typer.Exit(exitcodes.FAILED)


@image_app.command("pin")
def image_pin(path: PathArgument) -> None:
    """Print the policy lines that pin the image to its digest as it is now."""

    if (not path.startswith("/") or any(c in path for c in ',"\\') or not path.isprintable()
            or ".." in path.split("/")):  # fmt: skip
        fail(f"{printable(path)}: give the image's absolute path, as the policy names it "
             "(no '..', ',', quotes or backslashes)")  # fmt: skip
    try:
        with prepare.opened(path) as image:
            digest = image.found.digest
    except ImageRefused as exc:
        fail(printable(str(exc)), exitcodes.FAILED)
    typer.echo("[images.pins]")
    typer.echo(f'"{path}" = "{digest}"')
