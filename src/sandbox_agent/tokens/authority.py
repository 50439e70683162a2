"""The token authority: a CA that issues short-lived tokens for jobagents, jobs, brokers,
users and admins.

Job tokens are only ever signed from a CSR, for a jobagent that proves itself with its
own token, and only for a job the queue says is leased to that agent.  The authority
never makes or sees a job's private key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from sandbox_agent.tokens import files
from sandbox_agent.tokens.certificates import CLOCK_SKEW, ca_certificate, sign_certificate
from sandbox_agent.tokens.errors import IssuanceRefused, MalformedToken, TokenError
from sandbox_agent.tokens.keys import (
    KeyType,
    PrivateKey,
    PublicKey,
    check_public_key,
    fingerprint,
    load_private_key,
    new_key,
    same_key,
    write_private_key,
    write_public_file,
)
from sandbox_agent.tokens.roles import Identity, JobScope, Origin, Role, identity_of
from sandbox_agent.tokens.verify import TokenVerifier, utcnow

# Longest lifetime of each kind of token.
MAX_LIFETIME = {
    Role.JOBAGENT: timedelta(days=2),
    Role.JOB: timedelta(days=2),
    Role.BROKER: timedelta(days=90),
    Role.USER: timedelta(days=30),
    Role.ADMIN: timedelta(days=1),  # it may act on every user's jobs: keep it short
}
DEFAULT_LIFETIME = {
    Role.JOBAGENT: timedelta(days=1),
    Role.JOB: timedelta(hours=1),
    Role.BROKER: timedelta(days=30),
    Role.USER: timedelta(days=1),
    Role.ADMIN: timedelta(hours=1),
}
JOB_GRACE = timedelta(minutes=15)  # a job token outlives the job's TTL by this much
# How long after a node's first jobagent token its renewals may go on, by default: a
# stolen token is no longer renewable past it, and the site issues the node a new one.
RENEWAL_LIMIT = timedelta(days=7)
ROOT_LIFETIME = timedelta(days=3650)
SIGNING_LIFETIME = timedelta(days=365)

# Answers "is this job leased to the agent with this certificate fingerprint?"
LeaseCheck = Callable[[str, JobScope], bool]


@dataclass(frozen=True)
class RenewalPolicy:
    """How the authority renews jobagent tokens: each renewal lives ``lifetime``, and
    none lives past ``limit`` after the first token of its line was issued (a zero
    limit renews nothing)."""

    lifetime: timedelta = DEFAULT_LIFETIME[Role.JOBAGENT]
    limit: timedelta = RENEWAL_LIMIT

    def __post_init__(self) -> None:
        maximum = MAX_LIFETIME[Role.JOBAGENT]
        if not timedelta(0) < self.lifetime <= maximum:
            given = self.lifetime.total_seconds()
            raise ValueError(
                f"a renewed jobagent token lives more than 0 and at most {_hours(maximum)}, "
                f"not {given:g} s"
            )
        if self.limit < timedelta(0):
            raise ValueError("the renewal limit must be 0 or more seconds")


def origin_of(certificate: x509.Certificate, identity: Identity) -> Origin:
    """The first token of ``certificate``'s line: the one its origin URI names, or
    itself when it was never renewed (issued CLOCK_SKEW after its notBefore)."""
    if identity.origin is not None:
        return identity.origin
    issued = certificate.not_valid_before_utc + CLOCK_SKEW
    return Origin(certificate.serial_number, int(issued.timestamp()))


@dataclass(frozen=True)
class Issued:
    """A token as issued: its certificate and the chain a verifier needs with it."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


class TokenAuthority:
    """Signs tokens with ``signer_key``; ``chain`` is the signer's certificate followed by
    any CA above it other than the root (what a token presents with itself)."""

    def __init__(
        self,
        signer_key: PrivateKey,
        chain: tuple[x509.Certificate, ...],
        root: x509.Certificate,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        signer = chain[0] if chain else root
        if not same_key(signer_key, signer):
            raise MalformedToken("the signing key is not the key of the signing certificate")
        self.signer_key = signer_key
        self.signer = signer
        self.chain = chain
        self.root = root
        self.clock = clock

    # -- creating and loading ---------------------------------------------------------

    @classmethod
    def create(
        cls, directory: Path, *, kind: KeyType = KeyType.EC, intermediate: bool = True
    ) -> TokenAuthority:
        """A new root CA (and, by default, an intermediate that signs tokens) in ``directory``.

        Refuses to overwrite an existing authority."""
        now = utcnow()
        for name in (files.CA_KEY, files.CA_CERT, files.SIGNING_KEY, files.SIGNING_CERT):
            if (directory / name).exists():
                raise MalformedToken(
                    f"{directory / name} exists: an authority is already there (use it, or "
                    "remove the directory to start over)"
                )
        root_key = new_key(kind)
        root = ca_certificate(
            common_name="sandbox-agent root CA",
            key=root_key,
            not_before=now - CLOCK_SKEW,
            not_after=now + ROOT_LIFETIME,
        )
        write_private_key(directory / files.CA_KEY, root_key)
        write_public_file(directory / files.CA_CERT, files.pem_bundle([root]))
        if not intermediate:
            return cls(root_key, (), root)
        signing_key = new_key(kind)
        signing = ca_certificate(
            common_name="sandbox-agent signing CA",
            key=signing_key,
            not_before=now - CLOCK_SKEW,
            not_after=now + SIGNING_LIFETIME,
            issuer_key=root_key,
            issuer_cert=root,
        )
        write_private_key(directory / files.SIGNING_KEY, signing_key)
        write_public_file(directory / files.SIGNING_CERT, files.pem_bundle([signing]))
        return cls(signing_key, (signing,), root)

    @classmethod
    def load(cls, directory: Path) -> TokenAuthority:
        """The authority in ``directory``: the signing CA when there is one, else the root."""
        root_file = directory / files.CA_CERT
        if not root_file.exists():
            raise MalformedToken(
                f"{root_file} not found: no token authority in {directory} "
                "(run: sandbox-agent certs init)"
            )
        root = files.load_certificates(root_file)[0]
        if (directory / files.SIGNING_CERT).exists():
            chain = tuple(files.load_certificates(directory / files.SIGNING_CERT))
            return cls(load_private_key(directory / files.SIGNING_KEY), chain, root)
        return cls(load_private_key(directory / files.CA_KEY), (), root)

    def verifier(self, crl: x509.CertificateRevocationList | None = None) -> TokenVerifier:
        return TokenVerifier([self.root], crl=crl, clock=self.clock)

    # -- issuing ----------------------------------------------------------------------

    def issue(
        self,
        identity: Identity,
        public_key: PublicKey,
        *,
        lifetime: timedelta | None = None,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
    ) -> Issued:
        """A token for ``identity``, valid from a little before now for ``lifetime``
        (the role's default when None), which may not exceed the role's maximum."""
        check_public_key(public_key, "token key")
        maximum = MAX_LIFETIME[identity.role]
        lifetime = DEFAULT_LIFETIME[identity.role] if lifetime is None else lifetime
        if lifetime <= timedelta(0):
            raise ValueError("a token lifetime must be positive")
        if lifetime > maximum:
            raise ValueError(
                f"{identity.role.with_article} token lives at most {_hours(maximum)}, "
                f"not {_hours(lifetime)}"
            )
        if identity.role is not Role.BROKER and (dns_names or ip_addresses):
            raise ValueError("only broker tokens carry host names or addresses")
        now = self.clock()
        # Never outlive the CA that signs it: a token must not be valid when its issuer is not.
        not_after = min(now + lifetime, self.signer.not_valid_after_utc)
        certificate = sign_certificate(
            identity=identity,
            public_key=public_key,
            issuer_key=self.signer_key,
            issuer_cert=self.signer,
            not_before=now - CLOCK_SKEW,
            not_after=not_after,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )
        return Issued(certificate, self.chain)

    def issue_job_token(
        self,
        request: x509.CertificateSigningRequest,
        *,
        agent: x509.Certificate,
        agent_chain: tuple[x509.Certificate, ...],
        scope: JobScope,
        ttl_seconds: int,
        leased: LeaseCheck,
        crl: x509.CertificateRevocationList | None = None,
    ) -> Issued:
        """Sign a job token from the agent's CSR, after checking that the caller is a valid
        jobagent, that the CSR names exactly ``scope``, and that the job is leased to it.

        Raises ``IssuanceRefused`` with the reason."""
        try:
            self.verifier(crl).verify(agent, agent_chain, role=Role.JOBAGENT)
        except TokenError as exc:
            raise IssuanceRefused(f"the caller is not a valid jobagent: {exc}") from None
        if not request.is_signature_valid:
            raise IssuanceRefused("the certificate request's signature is not valid")
        try:
            public_key = check_public_key(request.public_key(), "certificate request")
            asked = identity_of(request)
        except TokenError as exc:
            raise IssuanceRefused(f"bad certificate request: {exc}") from None
        if asked != Identity(Role.JOB, scope):
            wanted = Identity(Role.JOB, scope).describe()
            raise IssuanceRefused(
                f"the request asks for {asked.describe()}, but the job is {wanted}"
            )
        if not leased(fingerprint(agent), scope):
            raise IssuanceRefused(
                f"job {scope.job_id} (resubmission {scope.resubmission}) "
                "is not leased to this agent"
            )
        if ttl_seconds < 1:
            raise IssuanceRefused("the job's TTL must be at least one second")
        lifetime = min(timedelta(seconds=ttl_seconds) + JOB_GRACE, MAX_LIFETIME[Role.JOB])
        return self.issue(Identity(Role.JOB, scope), public_key, lifetime=lifetime)

    def renew_jobagent_token(
        self,
        agent: x509.Certificate,
        agent_chain: tuple[x509.Certificate, ...],
        *,
        policy: RenewalPolicy,
        crl: x509.CertificateRevocationList | None = None,
    ) -> Issued:
        """A new jobagent token for the key of ``agent``, a valid, unexpired and
        unrevoked jobagent token (its holder proved the key in the TLS handshake). It
        names the same origin, lives ``policy.lifetime``, never past the line's limit,
        and must outlive the token it replaces.

        Raises ``IssuanceRefused`` with the reason."""
        try:
            verified = self.verifier(crl).verify(agent, agent_chain, role=Role.JOBAGENT)
            public_key = check_public_key(agent.public_key(), "token key")
        except TokenError as exc:
            raise IssuanceRefused(f"this token cannot be renewed: {exc}") from None
        now = self.clock()
        if now >= agent.not_valid_after_utc:  # the verifier's clock skew is no extension
            raise IssuanceRefused(
                f"this token expired at {_stamp(agent.not_valid_after_utc)}; an expired token "
                "is never renewed: give the node a new one"
            )
        if policy.limit <= timedelta(0):
            raise IssuanceRefused("this site renews no jobagent token: give the node a new one")
        origin = origin_of(agent, verified.identity)
        began = datetime.fromtimestamp(origin.issued, UTC)
        deadline = began + policy.limit
        line = (
            f"the first token of its line (serial {origin.serial:x}) was issued at {_stamp(began)}"
        )
        if now >= deadline:
            raise IssuanceRefused(
                f"{line}; this site renews a jobagent token for {_hours(policy.limit)} after "
                "that at most: give the node a new token"
            )
        not_after = min(now + policy.lifetime, deadline, self.signer.not_valid_after_utc)
        if not_after <= agent.not_valid_after_utc:
            raise IssuanceRefused(
                f"a renewal would expire at {_stamp(not_after)}, no later than this token "
                f"({_stamp(agent.not_valid_after_utc)}): {line}, and renewals end "
                f"{_hours(policy.limit)} after that"
            )
        identity = Identity(Role.JOBAGENT, origin=origin)
        return self.issue(identity, public_key, lifetime=not_after - now)

    # -- revoking ---------------------------------------------------------------------

    def revocation_list(
        self,
        serials: set[int],
        *,
        previous: x509.CertificateRevocationList | None = None,
        next_update: timedelta = timedelta(days=7),
    ) -> x509.CertificateRevocationList:
        """A CRL signed by the signing CA listing ``serials`` and any in ``previous``."""
        now = self.clock()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.signer.subject)
            .last_update(now - CLOCK_SKEW)
            .next_update(now + next_update)
        )
        known: dict[int, datetime] = {}
        if previous is not None:
            known = {r.serial_number: r.revocation_date_utc for r in previous}
        for serial in serials:
            known.setdefault(serial, now)
        for serial, when in sorted(known.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.signer_key, hashes.SHA256())


def _hours(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 3600:
        return f"{seconds:g} seconds"
    hours = seconds / 3600
    if hours == 1:
        return "1 hour"
    return f"{hours:g} hours" if hours < 48 else f"{hours / 24:g} days"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")
