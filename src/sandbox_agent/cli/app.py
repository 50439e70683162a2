"""The application object, the global options and what every command shares."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from sandbox_agent import __version__, exitcodes
from sandbox_agent.home import default_home

app = typer.Typer(
    name="sandbox-agent",
    help="A grid pilot whose payloads run in a sandbox that cannot reach its credentials.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sandbox-agent {__version__}")
        raise typer.Exit(exitcodes.OK)


@app.callback()
def main_options(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="State of the embedded default [default: $SANDBOX_AGENT_HOME, "
            "else ~/.local/share/sandbox-agent].",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    ctx.obj = {"home": home or default_home()}


def fail(message: str, code: int = exitcodes.USAGE) -> NoReturn:
    """Print one error line to stderr and exit with ``code``."""
    typer.echo(f"sandbox-agent: {message}", err=True)
    raise typer.Exit(code)


def home_of(ctx: typer.Context) -> Path:
    """The ``--home`` directory of this invocation."""
    obj = ctx.find_root().obj
    return Path(obj["home"]) if obj else default_home()


def main() -> None:
    """The console script."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("sandbox-agent: interrupted", err=True)
        sys.exit(130)
