"""``sandbox-agent jdl``: read job descriptions and evaluate their Requirements."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any

import typer

from sandbox_agent import exitcodes
from sandbox_agent.cli.app import JsonOption
from sandbox_agent.jdl import JDLError, JobSpec, Slot, evaluate, load_job, render_jdl
from sandbox_agent.jdl.parser import MAX_BYTES

jdl_app = typer.Typer(
    help="Read job descriptions (JDL) and evaluate their Requirements.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
ArgOption = Annotated[
    list[str] | None,
    typer.Option("--arg", help="A submit argument for $1..$N; repeat for each, in order."),
]


def _read_jdl(path: Path, args: list[str] | None) -> JobSpec:
    try:
        with path.open("rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise JDLError("not a regular file; give a JDL file", 0, 0, source=str(path))
            # One byte past the cap is enough for the parser to refuse it by size.
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise JDLError(f"cannot read the file: {exc.strerror}", 0, 0, source=str(path)) from None
    return load_job(data, source=str(path), args=args)


def _error_json(path: Path, err: JDLError) -> dict[str, Any]:
    return {
        "file": str(path),
        "ok": False,
        "error": {"line": err.line, "col": err.col, "message": err.message, "text": str(err)},
    }


@jdl_app.command("check")
def jdl_check(
    files: Annotated[list[Path], typer.Argument(help="JDL files to check.", show_default=False)],
    arg: ArgOption = None,
    compat: Annotated[
        bool,
        typer.Option("--compat", help="Print only where JAliEn would read or run the JDL "
                     "otherwise than this agent; exit 1 when anything is."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check JDL files and print each one's normalized form (or the error).

    Exit 0 when all are valid, 2 when any is not; with --compat, 1 when a valid one
    would be read otherwise by JAliEn."""
    results: list[dict[str, Any]] = []
    bad = differ = 0
    for path in files:
        try:
            spec = _read_jdl(path, arg)
        except JDLError as err:
            bad += 1
            if as_json:
                results.append(_error_json(path, err))
            else:
                typer.echo(str(err), err=True)
            continue
        differ += bool(spec.differences)
        if as_json:
            results.append(
                {
                    "file": str(path),
                    "ok": True,
                    "spec": spec.to_json(),
                    "warnings": list(spec.warnings),
                    "jalien_differences": list(spec.differences),
                }
            )
            continue
        if compat:
            for difference in spec.differences:
                typer.echo(difference)
            typer.echo(f"# {path}: read otherwise by JAliEn at {len(spec.differences)} "
                       "place(s)" if spec.differences else f"# {path}: JAliEn reads it alike")
            continue
        for warning in spec.warnings:
            typer.echo(warning, err=True)
        typer.echo(f"# {path}: valid; normalized form:")
        typer.echo(render_jdl(spec))
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    if bad:
        raise typer.Exit(exitcodes.USAGE)
    if compat and differ:
        raise typer.Exit(exitcodes.FAILED)


@jdl_app.command("match")
def jdl_match(
    file: Annotated[Path, typer.Argument(help="The JDL whose Requirements to evaluate.")],
    slot: Annotated[
        Path, typer.Option("--slot", help="The slot description, a TOML file of attributes.")
    ],
    arg: ArgOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a job's Requirements against a slot: TRUE, FALSE, UNDEFINED or ERROR,
    and the clause that decided it.  Exit 0 only when it is TRUE."""
    try:
        spec = _read_jdl(file, arg)
        slot_attrs = Slot.from_toml(slot)
    except (JDLError, ValueError) as err:
        if as_json:
            detail: dict[str, Any] = {"message": str(err).splitlines()[0]}
            if isinstance(err, JDLError):
                detail.update(line=err.line, col=err.col, message=err.message, text=str(err))
            typer.echo(json.dumps({"file": str(file), "slot": str(slot), "error": detail}))
            raise typer.Exit(exitcodes.USAGE) from None
        typer.echo(str(err), err=True)
        raise typer.Exit(exitcodes.USAGE) from None
    if spec.requirements is None:
        result: dict[str, Any] = {
            "outcome": "TRUE",
            "clause": None,
            "clause_value": None,
            "inputs": {},
            "reason": "no Requirements",
        }
        text = "TRUE  (the job has no Requirements: every slot matches)"
    else:
        decision = evaluate(spec.requirements, slot_attrs, spec.job_attributes())
        result = {
            "outcome": decision.outcome,
            "clause": decision.clause,
            "clause_value": decision.clause_value,
            "inputs": dict(decision.inputs),
            "reason": decision.reason,
        }
        lines = [f"{decision.outcome}  decided by: {decision.clause}  ->  {decision.clause_value}"]
        lines += [f"    {name} = {value}" for name, value in decision.inputs]
        text = "\n".join(lines)
    if as_json:
        typer.echo(json.dumps({"file": str(file), "slot": str(slot), **result}, indent=2))
    else:
        typer.echo(text)
    raise typer.Exit(exitcodes.OK if result["outcome"] == "TRUE" else exitcodes.FAILED)
