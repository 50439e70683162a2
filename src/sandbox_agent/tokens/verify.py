"""Verifying a token: validity, chain, role, scope and revocation, each with its own error.

The chain is built and checked by cryptography's X.509 verifier (``x509.verification``)
against the configured trust anchors; validity is checked here first, with a clock-skew
allowance, so that an expired token says "expired" rather than "no valid chain".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sandbox_agent.tokens.errors import (
    StaleRevocationList,
    TokenExpired,
    TokenNotYetValid,
    TokenRevoked,
    UnknownIssuer,
    WrongJob,
    WrongRole,
)
from sandbox_agent.tokens.keys import fingerprint
from sandbox_agent.tokens.roles import Identity, Role, identity_of

DEFAULT_SKEW = timedelta(minutes=5)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class VerifiedToken:
    identity: Identity
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # leaf first, trust anchor last
    fingerprint: str


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


class TokenVerifier:
    """Checks tokens against a fixed set of trust anchors (and, if given, a CRL)."""

    def __init__(
        self,
        anchors: Sequence[x509.Certificate],
        *,
        crl: x509.CertificateRevocationList | None = None,
        skew: timedelta = DEFAULT_SKEW,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not anchors:
            raise ValueError("no trust anchors: give the CA certificate (ca.pem)")
        self.anchors = tuple(anchors)
        self._store = Store(list(anchors))
        self.crl = crl
        self.skew = skew
        self.clock = clock

    def verify(
        self,
        cert: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        *,
        role: Role | None = None,
        job_id: int | None = None,
        resubmission: int | None = None,
    ) -> VerifiedToken:
        """Return the verified identity, or raise the ``TokenError`` that says why not."""
        now = self.clock()
        if _is_ca(cert):
            raise WrongRole("this is a CA certificate; a CA can sign tokens but is not one")
        self._check_validity(cert, now, "token")
        # The chain verifier checks validity at one instant with no skew; give it an
        # instant inside the leaf's window (the window itself was checked above).
        moment = min(max(now, cert.not_valid_before_utc), cert.not_valid_after_utc)
        verifier = PolicyBuilder().store(self._store).time(moment).build_client_verifier()
        try:
            verified = verifier.verify(cert, list(intermediates))
        except VerificationError as exc:
            raise UnknownIssuer(
                f"not issued by a trusted CA ({_reason(exc)}); check the CA file given"
            ) from None
        chain = tuple(verified.chain)
        for issuer in chain[1:]:
            self._check_validity(issuer, now, f"issuing CA '{_common_name(issuer)}'")
        identity = identity_of(cert)
        if role is not None and identity.role is not role:
            raise WrongRole(
                f"this is {identity.role.with_article} token; "
                f"{role.with_article} token is needed here"
            )
        if job_id is not None or resubmission is not None:
            scope = identity.job
            if scope is None:
                raise WrongRole(f"this is {identity.role.with_article} token, not a job token")
            if job_id is not None and scope.job_id != job_id:
                raise WrongJob(f"this token is for job {scope.job_id}, not job {job_id}")
            if resubmission is not None and scope.resubmission != resubmission:
                raise WrongJob(
                    f"this token is for resubmission {scope.resubmission} of job "
                    f"{scope.job_id}, not resubmission {resubmission}"
                )
        self._check_revocation(cert, chain, identity)
        return VerifiedToken(identity, cert, chain, fingerprint(cert))

    def _check_validity(self, cert: x509.Certificate, now: datetime, what: str) -> None:
        if now + self.skew < cert.not_valid_before_utc:
            raise TokenNotYetValid(
                f"{what} is not valid before {_stamp(cert.not_valid_before_utc)} "
                f"(now {_stamp(now)}); check this machine's clock"
            )
        if now - self.skew > cert.not_valid_after_utc:
            raise TokenExpired(
                f"{what} expired at {_stamp(cert.not_valid_after_utc)} (now {_stamp(now)}); "
                "get a new one"
            )

    def _check_revocation(
        self, cert: x509.Certificate, chain: tuple[x509.Certificate, ...], identity: Identity
    ) -> None:
        if self.crl is None:
            return
        issuer = chain[1] if len(chain) > 1 else chain[0]
        if self.crl.issuer != issuer.subject or not self.crl.is_signature_valid(
            issuer.public_key()  # type: ignore[arg-type]
        ):
            # A revocation list we cannot trust must not silently pass every token.
            raise UnknownIssuer(
                "the revocation list is not signed by the CA that issued this token; "
                "configure the CRL of that CA"
            )
        next_update = self.crl.next_update_utc
        if next_update is not None and self.clock() - self.skew > next_update:
            # An old list may miss recent revocations: refuse rather than trust it.
            raise StaleRevocationList(
                f"the revocation list was due for renewal at {_stamp(next_update)}; "
                "install a fresh crl.pem"
            )
        if self.crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise TokenRevoked(
                f"token serial {cert.serial_number:x} is revoked by the configured CRL"
            )
        # A renewed jobagent token falls with the first token of its line: revoking the
        # token a site issued revokes every renewal of it.
        origin = identity.origin
        revoked = self.crl.get_revoked_certificate_by_serial_number
        if origin is not None and revoked(origin.serial) is not None:
            raise TokenRevoked(
                f"token serial {cert.serial_number:x} renews serial {origin.serial:x}, "
                "which is revoked by the configured CRL"
            )


def _reason(exc: VerificationError) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "no valid chain"
    return text.split(" (encountered processing")[0][:200]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(names[-1].value) if names else cert.subject.rfc4514_string()
