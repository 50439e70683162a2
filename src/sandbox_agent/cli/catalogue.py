"""``sandbox-agent catalogue``: the embedded default's file catalogue under --home."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sandbox_agent import exitcodes
from sandbox_agent.catalogue import Catalogue, CatalogueError, Entry, check_lfn
from sandbox_agent.cli.app import JsonOption, fail, home_of
from sandbox_agent.policy import PolicyError, compose, load_policy, policy_dirs
from sandbox_agent.policy.model import Item
from sandbox_agent.policy.reach import (
    Deny,
    PathRefused,
    open_user_file,
    user_credentials,
    user_homes,
)

if TYPE_CHECKING:
    from sandbox_agent.policy.reach import Deny

catalogue_app = typer.Typer(
    help="The file catalogue of the embedded default (HOME/catalogue): LF: names for jobs.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def user_deny(ctx: typer.Context, policy: str = "default", extra: tuple[str, ...] = ()) -> Deny:
    """What a path this user names (in a JDL, on the command line) may not reach: the
    deny list of ``policy``, this whole home (its authority, the users' tokens, other
    jobs' outputs, the queue), ``extra`` credentials (a broker token's files) and the
    user's own (policy.reach). A policy that cannot be read is exit 2."""

    home = home_of(ctx)
    try:
        effective = compose(load_policy(policy, policy_dirs(home)),
                            credentials=[str(home / "certs"), *extra])  # fmt: skip
    except PolicyError as exc:
        fail(str(exc))
    # the home's own credentials named first, so a refusal names them rather than the home
    # the submitter's homes are denied too, but for a JDL's own directory within one
    homes = user_homes()
    items = [*effective["filesystem.deny"].value, *(Item(h, "the submitter's home") for h in homes)]
    return Deny.of(items, [*user_credentials(), str(home)], homes)


def open_catalogue(ctx: typer.Context) -> Catalogue:
    """The catalogue of this invocation's --home; an unusable one is a one-line exit 3."""
    try:
        return Catalogue(home_of(ctx) / "catalogue")
    except CatalogueError as exc:
        fail(str(exc), exitcodes.ENVIRONMENT)


def _lfn(text: str) -> str:
    """An LFN as a user may type it: with or without the LF: of a JDL."""
    return text[3:] if text[:3].casefold() == "lf:" else text


@catalogue_app.command("add")
def catalogue_add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The local file to add (a regular file).")],
    lfn: Annotated[str, typer.Argument(help="Its catalogue name, like /alice/data/x.root.")],
    as_json: JsonOption = False,
) -> None:
    """Add FILE under LFN; jobs then name it LF:LFN. Adding the same content under the
    same name again is fine; other content under a name already taken is refused."""

    try:
        name = check_lfn(_lfn(lfn))
    except CatalogueError as exc:
        fail(str(exc))
    deny = user_deny(ctx)
    with open_catalogue(ctx) as catalogue:
        try:
            opened = open_user_file(str(file), base=Path.cwd(), deny=deny, key="catalogue add",
                                    own_choice=True)  # fmt: skip
        except PathRefused as exc:
            fail(str(exc))
        try:
            entry = catalogue.add_opened(opened.fd, str(file), lambda _digest: name,
                                         getpass.getuser())  # fmt: skip
        except CatalogueError as exc:
            fail(str(exc))
        finally:
            opened.close()
    if as_json:
        typer.echo(json.dumps(_entry_json(entry), indent=2))
    else:
        typer.echo(f"LF:{entry.lfn}  {entry.size} bytes  sha256 {entry.sha256}")


@catalogue_app.command("ls")
def catalogue_ls(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="Only LFNs starting with this.")] = "/",
    as_json: JsonOption = False,
) -> None:
    """The catalogue's entries whose LFN starts with PREFIX, by LFN."""
    with open_catalogue(ctx) as catalogue:
        try:
            found = catalogue.entries(_lfn(prefix))
        except CatalogueError as exc:
            fail(str(exc))
    if as_json:
        typer.echo(json.dumps([_entry_json(e) for e in found], indent=2))
        return
    typer.echo(f"{'SIZE':>12}  {'OWNER':<12} {'ADDED':<20} {'SHA256':<16}  LFN")
    for e in found:
        typer.echo(f"{e.size:>12}  {e.owner:<12} {_when(e.added):<20} {e.sha256[:16]}  {e.lfn}")


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {"lfn": entry.lfn, "size": entry.size, "sha256": entry.sha256,
            "owner": entry.owner, "added": _when(entry.added)}  # fmt: skip
