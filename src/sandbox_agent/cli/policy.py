"""``sandbox-agent policy``: explain, lint and diff site policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sandbox_agent import exitcodes, hostfacts
from sandbox_agent.cli.app import JsonOption, fail, home_of
from sandbox_agent.images import ImageRefused, prepare
from sandbox_agent.jdl import JDLError, JobSpec, Slot, load_job
from sandbox_agent.jdl.parser import MAX_BYTES
from sandbox_agent.policy import (
    EffectivePolicy,
    Policy,
    PolicyError,
    PolicyRejection,
    compose,
    load_policy,
    policy_dirs,
)
from sandbox_agent.policy.diff import diff
from sandbox_agent.policy.explain import explain_json, explain_text
from sandbox_agent.policy.gate import Answer, Unenforceable, Verdict
from sandbox_agent.policy.lint import lint
from sandbox_agent.runtime import bwrap
from sandbox_agent.runtime.choose import RUNTIMES
from sandbox_agent.runtime.plan import AGENT_FILES, LaunchPlan
from sandbox_agent.runtime.render import render

policy_app = typer.Typer(
    help="Explain, lint and diff site policies (policies/*.toml).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

PolicyOption = Annotated[
    str, typer.Option("--policy", help="A policy name from the policy directories, or a path.")
]
SlotOption = Annotated[
    Path | None, typer.Option("--slot", help="A slot description (TOML) to clamp limits to.")
]


def _policy(ctx: typer.Context, ref: str) -> Policy:
    try:
        return load_policy(ref, policy_dirs(home_of(ctx)))
    except PolicyError as exc:
        fail(str(exc))


def _job(path: Path | None, args: list[str] | None) -> JobSpec | None:
    if path is None:
        return None
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        fail(f"{path}: cannot read the file ({exc.strerror})")
    try:
        return load_job(data, source=str(path), args=args)
    except JDLError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exitcodes.USAGE) from None


def _effective(
    ctx: typer.Context, policy: Policy, spec: JobSpec | None, slot: Path | None
) -> EffectivePolicy:
    attributes = None
    if slot is not None:
        try:
            attributes = Slot.from_toml(slot)
        except ValueError as exc:
            fail(str(exc))
    try:
        return compose(policy, spec, attributes, credentials=[str(home_of(ctx) / "certs")])
    except PolicyRejection as exc:
        typer.echo(f"rejected: {exc}", err=True)
        raise typer.Exit(exitcodes.FAILED) from None


@policy_app.command("explain")
def policy_explain(
    ctx: typer.Context,
    job: Annotated[
        Path | None, typer.Argument(help="A JDL; without one, a job asking nothing.")
    ] = None,
    policy: PolicyOption = "default",
    slot: SlotOption = None,
    arg: Annotated[list[str] | None, typer.Option("--arg", help="A submit argument.")] = None,
    runtime: Annotated[
        str | None,
        typer.Option("--runtime", help="Also say how this runtime enforces each requirement."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The effective policy of a job: what is isolated, how, and where each value came from.

    Exit 1 when the policy rejects the job, 3 when --runtime cannot enforce a required
    setting (each in one line)."""
    spec = _job(job, arg)
    effective = _effective(ctx, _policy(ctx, policy), spec, slot)
    name = str(job) if job else None
    found = hostfacts.facts()
    plan, refusal, answers = None, None, []
    if runtime is not None:
        try:
            plan = _plan(effective, spec, runtime, "/var/lib/sandbox-agent/work/JOB")
        except Unenforceable as exc:
            refusal = f"cannot enforce with {runtime}: {exc}"
        else:  # the gate's answers as a launch on this host would give them
            answers = plan.answers(found, held=hostfacts.held_limits(found),
                                   where=hostfacts.cgroup_where())  # fmt: skip
            refusal = _refusal(runtime, answers)
    if as_json:
        report = explain_json(effective, name, found)
        if runtime is not None:
            report["runtime"] = {
                "name": runtime,
                "refused": refusal,
                "requirements": _requirements_json(plan, answers),
            }
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(explain_text(effective, name, found))
        if plan is not None:
            typer.echo("")
            typer.echo(f"[enforced by {runtime}]  (the gate's answers on this host)")
            for answer in answers:
                typer.echo(f"  {answer.key:<28} {answer.how}{_state(answer)}")
    if refusal is not None:
        typer.echo(refusal, err=True)
        raise typer.Exit(exitcodes.ENVIRONMENT)


@policy_app.command("lint")
def policy_lint(
    ctx: typer.Context,
    paths: Annotated[
        list[str] | None, typer.Argument(help="Policy files or names [default: all shipped].")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Findings a reviewer should see, at file:line. Exit 1 when any is an error."""
    refs = paths or sorted(
        {p.stem for d in policy_dirs(home_of(ctx)) if d.is_dir() for p in d.glob("*.toml")}
    )
    if not refs:
        fail("no policies to lint: give files or names")
    report: dict[str, list[dict[str, str]]] = {}
    errors = 0
    for ref in refs:
        findings = lint(_policy(ctx, ref))
        errors += sum(f.severity == "error" for f in findings)
        report[ref] = [f.__dict__ for f in findings]
        if not as_json:
            for finding in findings:
                typer.echo(finding.format())
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        count = sum(len(v) for v in report.values())
        typer.echo(f"{len(refs)} polic{'y' if len(refs) == 1 else 'ies'}: {errors} error(s), "
                   f"{count - errors} warning(s)")  # fmt: skip
    raise typer.Exit(exitcodes.FAILED if errors else exitcodes.OK)


@policy_app.command("diff")
def policy_diff(
    ctx: typer.Context,
    a: Annotated[str, typer.Argument(help="The policy before (name or path).")],
    b: Annotated[str, typer.Argument(help="The policy after (name or path).")],
    jdl: Annotated[Path | None, typer.Option("--jdl", help="Compare for this job.")] = None,
    as_json: JsonOption = False,
) -> None:
    """What B allows that A does not, and the reverse, by capability."""
    spec = _job(jdl, None)
    before = _effective(ctx, _policy(ctx, a), spec, None)
    after = _effective(ctx, _policy(ctx, b), spec, None)
    wider, narrower = diff(before, after)
    if as_json:
        typer.echo(json.dumps({
            "a": a, "b": b,
            "b_allows": [w.__dict__ for w in wider],
            "a_allows": [w.__dict__ for w in narrower],
        }, indent=2))  # fmt: skip
        return
    for title, found in (
        (f"{b} allows, {a} does not:", wider),
        (f"{a} allows, {b} does not:", narrower),
    ):
        typer.echo(title)
        for widening in found or []:
            typer.echo(f"  + {widening.format()}")
        if not found:
            typer.echo("  (nothing)")


_AGENT_FILE = {
    "confine": "the confine step (sandbox_agent.wrapper.confine)",
    "seccomp": "the seccomp program compiled from the profile below",
}


def _state(answer: Answer) -> str:
    """What stands behind a requirement line: the gate's answer, and who enforces it."""
    if answer.verdict is Verdict.OPTIONAL:
        return "  (NOT MET: optional on this site)"
    if answer.verdict is Verdict.REFUSED:
        return "  (NOT MET: required, fails closed)"
    return "" if answer.by == "runtime" else f"  (by the {answer.by})"


def _refusal(runtime: str, answers: list[Answer]) -> str | None:
    """The first refusal among ``answers``, as the launch would say it."""
    refused = [a for a in answers if a.verdict is Verdict.REFUSED]
    return f"cannot enforce with {runtime}: {refused[0].line}" if refused else None


def _requirements_json(plan: LaunchPlan | None, answers: list[Answer]) -> list[dict[str, object]]:
    if plan is None:
        return []
    return [{**req.__dict__, "verdict": str(answer.verdict), "answer": answer.how}
            for req, answer in zip(plan.requirements, answers, strict=True)]  # fmt: skip


def _plan(
    effective: EffectivePolicy,
    spec: JobSpec | None,
    runtime: str,
    workdir: str,
    pilot: bool = False,
) -> LaunchPlan:
    """The launch plan of ``runtime``; raises Unenforceable. ``pilot``: the plan the
    pilot starts for the job (its JobWrapper, which then runs the executable), else
    the one ``sandbox exec`` starts for the executable itself."""
    if runtime not in RUNTIMES:
        fail(f"--runtime {runtime}: use one of {', '.join(RUNTIMES)}")
    payload = [spec.executable, *spec.arguments] if spec else ["/bin/true"]
    if pilot:
        payload = list(bwrap.WRAPPER_ARGV)
    if runtime != "bwrap":
        return render(runtime, effective, payload, workdir=workdir, wrapper=pilot)
    # bwrap binds the image's top level: a file image is mounted to read it (the plan
    # shows that mount point; every job gets its own)
    try:
        with prepare.ready(effective) as image:
            return render(runtime, effective, payload, workdir=workdir, image=image,
                          wrapper=pilot)  # fmt: skip
    except ImageRefused as exc:
        fail(f"the image cannot be used: {exc}", exitcodes.ENVIRONMENT)


@policy_app.command("render")
def policy_render(
    ctx: typer.Context,
    job: Annotated[Path, typer.Argument(help="The JDL of the job to render.")],
    runtime: Annotated[
        str, typer.Option("--runtime", help="bwrap, apptainer, singularity, docker or podman.")
    ] = "bwrap",
    policy: PolicyOption = "default",
    workdir: Annotated[
        str, typer.Option("--workdir", help="The job's work directory on the host.")
    ] = "/var/lib/sandbox-agent/work/JOB",
    pilot: Annotated[
        bool, typer.Option("--pilot", help="The pilot's plan: its JobWrapper, not the executable.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The exact argv and files a runtime would get for a job; values from the agent's
    environment are shown as placeholders, never copied. Exit 3 when the runtime cannot
    enforce a required setting (it is named). With --pilot, the plan the pilot starts:
    its JobWrapper, which runs the job's executable (on Podman and Docker it also
    waits for the agent to plumb the job's network)."""
    spec = _job(job, None)
    effective = _effective(ctx, _policy(ctx, policy), spec, None)
    try:
        plan = _plan(effective, spec, runtime, workdir, pilot)
    except Unenforceable as exc:
        typer.echo(f"cannot enforce with {runtime}: {exc}", err=True)
        raise typer.Exit(exitcodes.ENVIRONMENT) from None
    answers = plan.answers()  # as rendered: this host is not asked (explain --runtime is)
    refusal = _refusal(runtime, answers)
    if as_json:
        typer.echo(json.dumps({
            "runtime": plan.runtime, "argv": list(plan.argv),
            "fds": {str(k): v for k, v in plan.fds.items()},
            "agent_files": plan.agent_files,
            "stdin_files": [name for name, _ in plan.stdin_files],
            "container": plan.container,
            "seccomp_profile": plan.seccomp_profile,
            "requirements": _requirements_json(plan, answers),
            "refused": refusal,
        }, indent=2))  # fmt: skip
        _exit_refused(refusal)
        return
    typer.echo("argv (one word a line; nothing is run through a shell):")
    for word in plan.argv:
        typer.echo(f"  {word}")
    for fd, what in plan.fds.items():
        typer.echo(f"fd {fd}: {what}")
    for name, kind in plan.agent_files.items():
        what = _AGENT_FILE.get(kind, kind)
        typer.echo(f"{AGENT_FILES}/{name}: {what} (a private read-only directory, per job)")
    for at, kind in plan.sources_at:
        typer.echo(f"argv word {at}: the source of {kind.module_file.rsplit('/', 1)[-1]}, "
                   "written there at launch")  # fmt: skip
    if plan.stdin_files:
        names = ", ".join(name for name, _ in plan.stdin_files)
        typer.echo(f"stdin, before the handoff: {names} (into a tmpfs of the container's)")
    if plan.container:
        typer.echo(f"container: {plan.container}, removed at teardown")
    typer.echo(f"seccomp profile: {plan.seccomp_profile}")
    typer.echo("requirements:")
    for answer in answers:
        typer.echo(f"  {answer.key:<28} {answer.how}{_state(answer)}")
    _exit_refused(refusal)


def _exit_refused(refusal: str | None) -> None:
    """The plan is shown whole; then, if the gate refuses it, the line and exit 3."""
    if refusal is not None:
        typer.echo(refusal, err=True)
        raise typer.Exit(exitcodes.ENVIRONMENT)
