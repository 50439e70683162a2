"""The application object, the global options and what every command shares."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from sandbox_agent import __version__, exitcodes
from sandbox_agent.home import default_home
from sandbox_agent.limits.cgroup_v2 import enter_leaf
from sandbox_agent.printable import printable as printable  # re-exported for the commands

app = typer.Typer(
    name="sandbox-agent",
    help="A grid pilot whose payloads run in a sandbox that cannot reach its credentials.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
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
    """The console script: usage errors become one line, never a box or a traceback."""
    # Started alone in a delegated cgroup v2 (systemd's Delegate=yes), the agent steps
    # into a leaf of it before it starts anything: only then may that cgroup hand its
    # controllers to job cgroups. Elsewhere this changes nothing.
    enter_leaf()
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("sandbox-agent: interrupted", err=True)
        code = 130
    except typer.TyperException as exc:
        # Usage errors (unknown option, missing argument): one line and where to look.
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(message, err=True)  # a bare group: its help is the answer
            sys.exit(exitcodes.USAGE)
        context = getattr(exc, "ctx", None)
        where = context.command_path if context is not None else "sandbox-agent"
        typer.echo(f"sandbox-agent: {message} (see '{where} --help')", err=True)
        code = getattr(exc, "exit_code", exitcodes.USAGE)
    except KeyboardInterrupt:
        typer.echo("sandbox-agent: interrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else exitcodes.OK)
