"""``sandbox-agent audit verify`` and ``audit show``: the signed record the agent
leaves for every job, checked and read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from sandbox_agent import exitcodes
from sandbox_agent.audit import record as records
from sandbox_agent.broker.client import BrokerError
from sandbox_agent.cli.app import JsonOption, fail, home_of
from sandbox_agent.cli.remote import (
    BrokerOption,
    CaOption,
    CertOption,
    KeyOption,
    broker_client,
    broker_failed,
)
from sandbox_agent.printable import printable
from sandbox_agent.tokens import TokenError, files

audit_app = typer.Typer(
    help="Check and read the signed audit record of a job.", no_args_is_help=True,
    rich_markup_mode=None,
)  # fmt: skip


def _anchors(ca: Path) -> list[Any]:

    try:
        return files.load_certificates(ca)
    except (OSError, TokenError, ValueError) as exc:
        fail(f"{ca}: not a readable CA certificate ({exc}); give --ca the authority's ca.pem")


def _checked(path: Path | str, ca: Path, data: bytes | None = None) -> Any:
    """The verified record (from ``path``, or ``data`` fetched from a broker), or one
    line and exit 1 (not valid) or 2 (not a record)."""
    anchors = _anchors(ca)
    try:
        signed = records.load(Path(path)) if data is None else records.parse(data, str(path))
    except records.AuditError as exc:
        fail(str(exc))
    try:
        return records.verify(signed, anchors)
    except records.AuditError as exc:
        fail(f"{path}: NOT valid: {exc}", exitcodes.FAILED)


@audit_app.command("verify")
def verify(
    ctx: typer.Context,
    record: Annotated[Path, typer.Argument(help="An audit record (audit.json).")],
    ca: Annotated[
        Path | None, typer.Option("--ca", help="The authority's CA [default: HOME/certs/ca.pem].")
    ] = None,
) -> None:
    """Check a record's signature and its signer's chain: a jobagent token of this CA,
    valid when it signed. Exit 0 if valid, 1 if not (tampered, another CA, wrong role)."""
    checked = _checked(record, ca or home_of(ctx) / "certs" / "ca.pem")
    job = checked.record.get("job", {})
    typer.echo(f"{record}: valid: job {job.get('id')}.{job.get('resubmission')} "
               f"{job.get('state')}, signed by {checked.agent} ({checked.fingerprint}) at "
               f"{checked.record.get('signed_at')}")  # fmt: skip


@audit_app.command("show")
def show(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="The job id.")],
    resubmission: Annotated[
        int | None, typer.Option("--resubmission", help="Which attempt [default: the last].")
    ] = None,
    as_json: JsonOption = False,
    broker: BrokerOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    ca: CaOption = None,
) -> None:
    """Print a job's audit record for a person, after checking it (as `audit verify`):
    from this home, or with --broker from the broker its agent sent it to (checked
    against --ca, the authority's CA)."""
    home = home_of(ctx)
    if broker is not None:
        client = broker_client(broker, cert, key, ca)
        assert client is not None and ca is not None
        try:
            data = client.fetch_audit(job_id, resubmission)
        except BrokerError as exc:
            broker_failed(exc)
        finally:
            client.close()
        checked = _checked(f"job {job_id}'s record at {broker}", ca, data)
        _same_job(checked.record, job_id, resubmission)
        _print(checked, as_json)
        return
    attempts = home / "outputs" / str(job_id)
    if resubmission is None:
        tried = sorted((int(p.name) for p in _attempts(attempts)), reverse=True)
        if not tried:
            fail(f"job {job_id}: no audit record under {attempts}; `jobs` lists the jobs "
                 "this home ran")  # fmt: skip
        resubmission = tried[0]
        later = [p.name for p in attempts.iterdir() if p.name.isdigit() and int(p.name) > tried[0]]
        if later:  # an attempt handed back, or one whose record could not be written
            typer.echo(f"sandbox-agent: attempt {max(later, key=int)} of job {job_id} has no "
                       f"record; showing attempt {tried[0]}", err=True)  # fmt: skip
    path = attempts / str(resubmission) / records.RECORD
    if not path.exists():
        fail(f"job {job_id}.{resubmission}: no audit record at {path}")
    checked = _checked(path, ca or home / "certs" / "ca.pem")
    _same_job(checked.record, job_id, resubmission)
    _print(checked, as_json)


def _same_job(record: dict[str, Any], job_id: int, resubmission: int | None) -> None:
    """A valid record of another attempt, copied over this one's, is not this one's."""
    job = record.get("job", {})
    if job.get("id") != job_id or (resubmission is not None and
                                   job.get("resubmission") != resubmission):  # fmt: skip
        fail(f"the record found is about job {job.get('id')}.{job.get('resubmission')}, not "
             f"job {job_id}{'' if resubmission is None else f'.{resubmission}'}: it was "
             "moved there", exitcodes.FAILED)  # fmt: skip


def _print(checked: Any, as_json: bool) -> None:
    if as_json:  # ASCII only: every control character as \uXXXX
        typer.echo(json.dumps(checked.record, indent=1, sort_keys=True))
        return
    for line in _lines(checked.record, checked.agent):  # details, names, wrapper states
        typer.echo(printable(line))


def _attempts(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.name.isdigit() and (p / "audit.json").exists()]


def _image_line(image: Any) -> str:
    if not isinstance(image, dict):
        return "image: the host's userland"
    held = "pinned" if image.get("pinned") else "unpinned"
    return (f"image: {image.get('kind')} {image.get('path')}, {image.get('digest')} ({held}; "
            f"chosen by {image.get('chosen_by')})")  # fmt: skip


def _network_line(network: Any) -> str:
    """The job's network: its mode, and in egress what the agent's relay did."""
    if not isinstance(network, dict):  # a record from before the network section
        return "network: not recorded"
    line = f"network: {network.get('mode')}"
    if "connections" in network:
        line += (f"; {network['connections']} connection(s) through the agent's relay, "
                 f"{network['refused']} refused")  # fmt: skip
        refusals = network.get("refusals") or []
        line += f" ({'; '.join(map(str, refusals[:3]))})" if refusals else ""
        unresolved = network.get("unresolved") or []
        line += f"; allow names that opened nothing: {len(unresolved)}" if unresolved else ""
    return line


def _lines(record: dict[str, Any], signer: str) -> list[str]:
    job, agent, runtime = record["job"], record["agent"], record["runtime"]
    enforcement, teardown = record["enforcement"], record["teardown"]
    lines = [
        f"job {job['id']}.{job['resubmission']} of {job['owner']}: {job['state']}"
        + (f" exit {job['exit_code']}" if job.get("exit_code") is not None else "")
        + (f" ({job['detail']})" if job.get("detail") else ""),
        f"signed by {signer} at {record['signed_at']} (valid)",
        f"agent {agent['name']}, token {agent['token_fingerprint']}",
        f"job token {record['job_token_fingerprint']}",
        f"policy {record['policy']['name']} ({', '.join(record['policy']['files'])})",
        f"runtime {runtime['name']}: {' '.join(runtime['argv'][:12])}"
        + (" ..." if len(runtime["argv"]) > 12 else ""),
        _image_line(record.get("image")),
        f"seccomp program {record['seccomp_sha256']}; landlock: {record['landlock']}",
        _network_line(record.get("network")),
        f"host: Linux {record['host']['kernel']} ({record['host']['machine']})",
        f"enforced by the kernel: {', '.join(enforcement['kernel']) or 'none'}; monitored by "
        f"the agent: {', '.join(enforcement['monitored']) or 'none'}; not enforced: "
        f"{', '.join(enforcement['unenforced']) or 'none'}",
        "wrapper states: " + (" -> ".join(record["states"]) or "none"),
        "usage: " + ", ".join(f"{k} {v}" for k, v in record["usage"].items()),
    ]
    lines += [f"output {o['name']}: {o['size']} bytes, {o['sha256']}"
              for o in record["outputs"]]  # fmt: skip
    survivors = teardown.get("survivors") or []
    lines.append(f"teardown: {len(survivors)} process(es) left and killed; cgroup "
                 f"{'emptied' if teardown.get('emptied', True) else 'NOT emptied'} and "
                 f"{'removed' if teardown.get('removed') else 'not removed'}; IPC: "
                 f"{teardown['ipc']}; mounts: {teardown['mounts']}; work directory "
                 f"{teardown['workdir']}")  # fmt: skip
    return lines
