"""``sandbox-agent certs``: the token authority, token issuance and verification."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from sandbox_agent import exitcodes
from sandbox_agent.cli.app import JsonOption, fail, home_of
from sandbox_agent.tokens import (
    Identity,
    JobScope,
    KeyMismatch,
    KeyType,
    MalformedToken,
    Role,
    Token,
    TokenAuthority,
    TokenError,
    TokenVerifier,
    files,
    fingerprint,
    identity_of,
    new_key,
    write_token,
)
from sandbox_agent.tokens.keys import load_private_key, same_key, write_public_file
from sandbox_agent.tokens.local import ensure_authority
from sandbox_agent.tokens.roles import PERSON_ROLES

certs_app = typer.Typer(
    help="Make the token authority, issue tokens, show and verify them.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="The authority directory [default: HOME/certs].", show_default=False
    ),
]
CaOption = Annotated[
    Path | None,
    typer.Option("--ca", help="The trusted CA certificate [default: the authority's ca.pem]."),
]


def _authority_dir(ctx: typer.Context, directory: Path | None) -> Path:
    return directory if directory is not None else home_of(ctx) / "certs"


def _load_authority(directory: Path) -> TokenAuthority:
    try:
        return TokenAuthority.load(directory)
    except TokenError as exc:
        fail(str(exc))


@certs_app.command("init")
def certs_init(
    ctx: typer.Context,
    directory: DirOption = None,
    key_type: Annotated[str, typer.Option("--key-type", help="ec (P-256) or rsa.")] = "ec",
    intermediate: Annotated[
        bool, typer.Option(help="Sign tokens with an intermediate CA, keeping the root apart.")
    ] = True,
    broker_host: Annotated[
        list[str] | None,
        typer.Option("--broker-host", help="Host names of the broker token [default: localhost]."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Make a token authority (a CA) with a jobagent and a broker token.

    Safe to run again: an existing authority and valid tokens are kept; what is missing or
    expired is made anew."""
    target = _authority_dir(ctx, directory)
    try:
        kind = KeyType.parse(key_type)
    except ValueError as exc:
        fail(str(exc))
    try:
        prepared = ensure_authority(target, kind=kind, intermediate=intermediate,
                                    broker_hosts=tuple(broker_host or ["localhost"]))  # fmt: skip
    except (TokenError, ValueError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{target}: {exc.strerror}")
    authority, made, replaced = prepared.authority, prepared.made, prepared.replaced
    report = {
        "dir": str(target),
        "made": made,
        "replaced": replaced,
        "ca": fingerprint(authority.root),
        "files": sorted(p.name for p in target.iterdir() if not p.name.startswith(".")),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"token authority in {target} (CA {report['ca']})")
    typer.echo(f"  made: {', '.join(made) if made else 'nothing; all present and valid'}")
    for reason in replaced:
        typer.echo(f"  replaced: {reason}")
    typer.echo(f"  files: {' '.join(report['files'])}")


@certs_app.command("issue")
def certs_issue(
    ctx: typer.Context,
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="jobagent (a pilot), job, broker, user (a person who submits jobs) or "
            "admin (an operator, who may act on every user's jobs).",
        ),
    ],
    job_id: Annotated[int | None, typer.Option("--job-id", help="The job (job role).")] = None,
    resubmission: Annotated[int, typer.Option("--resubmission", help="Job role.")] = 0,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", help="The person (user and admin roles) or the job's owner (job role)."
        ),
    ] = None,
    ttl: Annotated[
        int | None,
        typer.Option(
            "--ttl",
            help="Lifetime in seconds [default by role: jobagent 1 day, job 1 hour, "
            "broker 30 days, user 1 day, admin 1 hour].",
        ),
    ] = None,
    dns: Annotated[list[str] | None, typer.Option("--dns", help="Broker host name.")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="Broker IP address.")] = None,
    directory: DirOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Directory for NAME.pem and NAME.key [default: HOME/tokens]."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="File name [default: by role].")
    ] = None,
    key_type: Annotated[str, typer.Option("--key-type", help="ec (P-256) or rsa.")] = "ec",
    as_json: JsonOption = False,
) -> None:
    """Issue a token with a key made here (an operator's tool: the pilot gets job tokens
    from CSRs, never this way)."""
    try:
        parsed_role = Role.parse(role)
        kind = KeyType.parse(key_type)
        if parsed_role is Role.JOB:
            if job_id is None or user is None:
                fail("a job token needs --job-id and --user")
            identity = Identity(parsed_role, JobScope(job_id, resubmission, user))
        elif parsed_role in PERSON_ROLES:
            if user is None:
                fail(f"{parsed_role.with_article} token needs --user (the person it is for)")
            if job_id is not None:
                fail(f"--job-id is for job tokens, not {parsed_role.value}")
            identity = Identity(parsed_role, user=user)
        else:
            if job_id is not None or user is not None:
                fail(f"--job-id and --user are not for {parsed_role.value} tokens")
            identity = Identity(parsed_role)
    except ValueError as exc:
        fail(str(exc))
    authority = _load_authority(_authority_dir(ctx, directory))
    key = new_key(kind)
    if ttl is not None and not 1 <= ttl <= 10**9:
        fail(f"--ttl {ttl} is out of range: give seconds, from 1 to the role's maximum")
    try:
        issued = authority.issue(
            identity,
            key.public_key(),
            lifetime=None if ttl is None else timedelta(seconds=ttl),
            dns_names=tuple(dns or ()),
            ip_addresses=tuple(ip or ()),
        )
        stem = name or _default_stem(identity)
        target = out if out is not None else home_of(ctx) / "tokens"
        cert_file, key_file = write_token(
            target, stem, Token(issued.certificate, issued.chain, key)
        )
    except (TokenError, ValueError, OSError) as exc:
        fail(str(exc))
    report = {
        **_describe(issued.certificate),
        "certificate": str(cert_file),
        "key_file": str(key_file),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(f"issued {report['role']} token: {cert_file} (key file {key_file})")
        typer.echo(f"  fingerprint {report['fingerprint']}, valid until {report['not_after']}")


def _default_stem(identity: Identity) -> str:
    """jobagent, broker, job-7, user-alice, admin-ops: one file per person or job."""
    if identity.job is not None:
        return f"job-{identity.job.job_id}"
    if identity.user is not None:
        return f"{identity.role.value}-{identity.user}"
    return identity.role.value


def _describe(cert: x509.Certificate) -> dict[str, Any]:
    """What a person and a script want to know about a certificate, never the key."""
    try:
        identity = identity_of(cert)
        role: str | None = identity.role.value
        scope = identity.job
        user = identity.owner
    except TokenError as exc:
        role, scope, user = None, None, None
        problem: str | None = str(exc)
    else:
        problem = None
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        key = f"EC {public.curve.name}"
    elif isinstance(public, rsa.RSAPublicKey):
        key = f"RSA {public.key_size}"
    else:
        key = type(public).__name__
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "role": role,
        "job_id": scope.job_id if scope else None,
        "resubmission": scope.resubmission if scope else None,
        "user": user,
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key": key,
        "fingerprint": fingerprint(cert),
        "problem": problem,
    }


def _verifier(
    ctx: typer.Context, directory: Path | None, ca: Path | None, crl: Path | None
) -> TokenVerifier:
    base = _authority_dir(ctx, directory)
    anchor_file = ca or base / files.CA_CERT
    try:
        anchors = files.load_certificates(anchor_file)
        crl_file = crl or (base / files.CRL if (base / files.CRL).exists() and ca is None else None)
        revocations = files.load_crl(crl_file) if crl_file else None
    except TokenError as exc:
        fail(f"{exc} (give the CA with --ca or --dir)")
    return TokenVerifier(anchors, crl=revocations)


def _read_token(path: Path) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
    try:
        certs = files.load_certificates(path)
    except TokenError as exc:
        fail(str(exc))
    return certs[0], tuple(certs[1:])


CrlOption = Annotated[Path | None, typer.Option("--crl", help="A revocation list to honour.")]


@certs_app.command("show")
def certs_show(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A token certificate (PEM).")],
    directory: DirOption = None,
    ca: CaOption = None,
    crl: CrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a token: role, scope, validity, fingerprint and whether its chain verifies."""
    cert, chain = _read_token(file)
    report = _describe(cert)
    if ca is None and not (_authority_dir(ctx, directory) / files.CA_CERT).exists():
        report["chain"] = "not checked: no CA certificate (give --ca, or --dir with a ca.pem)"
    else:
        try:
            verified = _verifier(ctx, directory, ca, crl).verify(cert, chain)
            report["chain"] = "valid: " + " <- ".join(
                c.subject.rfc4514_string() for c in reversed(verified.chain)
            )
        except TokenError as exc:
            report["chain"] = f"NOT VALID ({exc.code}): {exc}"
    if as_json:
        typer.echo(json.dumps({"file": str(file), **report}, indent=2))
        return
    if report["job_id"] is not None:
        scope = (
            f"job {report['job_id']} resubmission {report['resubmission']} user {report['user']}"
        )
    elif report["user"] is not None:
        scope = f"user {report['user']}"
    else:
        scope = "-"
    rows = [
        ("file", str(file)),
        ("role", report["role"] or f"none ({report['problem']})"),
        ("scope", scope),
        ("subject", report["subject"]),
        ("issuer", report["issuer"]),
        ("valid", f"{report['not_before']} .. {report['not_after']}"),
        ("key", report["key"]),
        ("serial", report["serial"]),
        ("fingerprint", report["fingerprint"]),
        ("chain", report["chain"]),
    ]
    for label, value in rows:
        typer.echo(f"{label:<12} {value}")


@certs_app.command("verify")
def certs_verify(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A token certificate (PEM), with its chain.")],
    role: Annotated[
        str | None,
        typer.Option("--role", help="The role it must have: jobagent, job, broker, user or admin."),
    ] = None,
    job_id: Annotated[int | None, typer.Option("--job-id", help="The job it must be for.")] = None,
    resubmission: Annotated[int | None, typer.Option("--resubmission")] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="Its key file, to check the pair.")
    ] = None,
    directory: DirOption = None,
    ca: CaOption = None,
    crl: CrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Verify a token: chain, validity, role, job and revocation.  Exit 0 when it is valid,
    1 when it is not (the reason in one line), 2 when the input cannot be read."""
    try:
        wanted = Role.parse(role) if role else None
    except ValueError as exc:
        fail(str(exc))
    cert, chain = _read_token(file)
    verifier = _verifier(ctx, directory, ca, crl)
    if key is not None and not key.is_file():
        fail(f"{key}: key file not found")
    try:
        if key is not None:
            try:
                private = load_private_key(key)
            except MalformedToken as exc:
                fail(str(exc))  # unreadable input, not a verdict on the token
            if not same_key(private, cert):
                raise KeyMismatch(f"{key} is not the key of {file}")
        verified = verifier.verify(
            cert, chain, role=wanted, job_id=job_id, resubmission=resubmission
        )
    except TokenError as exc:
        _verdict(as_json, file, False, exc.code, str(exc))
        raise typer.Exit(exitcodes.FAILED) from None
    _verdict(
        as_json,
        file,
        True,
        "ok",
        f"valid {verified.identity.describe()} token ({verified.fingerprint})",
    )


def _verdict(as_json: bool, file: Path, ok: bool, code: str, message: str) -> None:
    if as_json:
        typer.echo(json.dumps({"file": str(file), "valid": ok, "code": code, "message": message}))
    elif ok:
        typer.echo(f"{file}: {message}")
    else:
        typer.echo(f"{file}: {code}: {message}", err=True)


@certs_app.command("revoke")
def certs_revoke(
    ctx: typer.Context,
    tokens: Annotated[
        list[Path] | None,
        typer.Argument(help="Token certificates to revoke (none: re-sign the list as it is)."),
    ] = None,
    directory: DirOption = None,
) -> None:
    """Add tokens to the authority's revocation list (crl.pem), which verifiers honour.
    A renewed jobagent token revokes its whole line: the first token it names (its
    origin) too, so no other renewal of it, a thief's included, stays valid."""
    target = _authority_dir(ctx, directory)
    authority = _load_authority(target)
    serials = set()
    for path in tokens or ():
        certificate = _read_token(path)[0]
        serials.add(certificate.serial_number)
        try:
            origin = identity_of(certificate).origin
        except (TokenError, ValueError):  # not one of ours in shape: its serial alone
            origin = None
        if origin is not None:
            serials.add(origin.serial)
    try:
        previous = files.load_crl(target / files.CRL) if (target / files.CRL).exists() else None
        crl = authority.revocation_list(serials, previous=previous)
        write_public_file(target / files.CRL, crl.public_bytes(Encoding.PEM))
    except (TokenError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"{target / files.CRL}: {len(list(crl))} revoked serial(s)")
