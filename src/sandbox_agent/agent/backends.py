"""Where the pilot's jobs come from and where it reports: the embedded queue and local
authority of its home, or a broker over HTTPS. The attempt speaks to either the same
way, and the errors mean the same: LeaseError (the job is no longer ours: stop),
TransitionError (no such move), StoreError (cannot tell now: try again, the lease
decides), IssuanceRefused (no job token).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sandbox_agent.broker.client import BrokerClient, BrokerError
from sandbox_agent.catalogue import Catalogue, CatalogueError
from sandbox_agent.jdl import Slot
from sandbox_agent.queue import Job, LeaseError, State, Store, StoreError, TransitionError, states
from sandbox_agent.tokens import (
    IssuanceRefused,
    JobScope,
    Token,
    TokenAuthority,
    files,
    fingerprint,
)

EXCLUDED_CAP = 1000  # job ids a broker is told this agent's policy refuses
OFFERS_PER_MATCH = 20  # refused offers before a match gives up for now
LOST = frozenset({404, 409})  # the broker's answers meaning "not yours any more"
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Placed = tuple[str, str, int]  # an input to place: its LFN, its name in the work directory, mode


class Backend(Protocol):
    name: str  # this agent's name for itself
    where: str  # for a person: the home's queue, or the broker's URL

    def match(self, slot: Slot, fits: Callable[[Job], str | None], lease: float) -> Job | None:
        """Lease the best job ``fits`` finds nothing against (it returns why not)."""

    def heartbeat(self, job: Job, lease: float) -> bool: ...

    def set_state(self, job: Job, state: str, detail: str, exit_code: int | None) -> None: ...

    def release(self, job: Job, reason: str, *, fault: bool = True) -> None:
        """Hand the job back: ``fault`` when this node could not run it (counted by the
        queue), not when the agent is only stopping."""

    def holds(self, job: Job) -> bool:
        """Whether this agent still holds the job (True when it cannot tell)."""

    def job_token(
        self, job: Job, request: x509.CertificateSigningRequest, ttl: int
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]: ...

    def waiting(self) -> list[Job] | None:
        """The waiting jobs, to say why none fits; None where the agent cannot see them."""

    def leased(self, job_id: int, resubmission: int) -> bool | None:
        """Whether that attempt is still leased (None: cannot tell), for the cgroup sweep."""

    def keep(self, job: Job, token: dict[str, Any], kept: list[tuple[str, Path]]) -> None:
        """Send the attempt's kept files (name, where on this node) to where their owner
        fetches them, with the job's own token; StoreError when that fails."""

    def keep_audit(self, job: Job, record: bytes) -> None:
        """Send the attempt's signed audit record where the job's owner reads it (the
        home's storage has it already); StoreError when that fails."""

    def place_inputs(self, job: Job, token: dict[str, Any], wanted: list[Placed],
                     directory: Path) -> None:  # fmt: skip
        """Write each catalogue file the job names (LFN, name, mode) into ``directory``:
        CatalogueError when the job's file cannot be had (the job's fault), OSError when
        this node cannot get it now."""


class LocalQueue:
    """The embedded default: the home's SQLite queue and its local token authority."""

    def __init__(self, store: Store, authority: TokenAuthority, token: Token, certs: Path,
                 name: str, catalogue: Catalogue) -> None:  # fmt: skip
        self.catalogue = catalogue
        self.store = store
        self.authority = authority
        self.token = token
        self.certs = certs
        self.name = name
        self.where = str(store.path)

    def match(self, slot: Slot, fits: Callable[[Job], str | None], lease: float) -> Job | None:
        return self.store.match(self.name, lambda job: fits(job) is None, lease)

    def heartbeat(self, job: Job, lease: float) -> bool:
        return self.store.heartbeat(job.id, self.name, job.resubmission, lease)

    def set_state(self, job: Job, state: str, detail: str, exit_code: int | None) -> None:
        self.store.set_state(job.id, self.name, job.resubmission, state, detail=detail,
                             exit_code=exit_code)  # fmt: skip

    def release(self, job: Job, reason: str, *, fault: bool = True) -> None:
        self.store.release(job.id, self.name, job.resubmission, reason, fault=fault)

    def holds(self, job: Job) -> bool:
        try:
            now = self.store.get(job.id)
        except StoreError:
            return True
        return now.agent == self.name and now.resubmission == job.resubmission

    def job_token(self, job: Job, request: x509.CertificateSigningRequest,
                  ttl: int) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:  # fmt: skip
        def leased(holder: str, asked: JobScope) -> bool:
            now = self.store.get(asked.job_id)
            return (holder == fingerprint(self.token.certificate) and now.agent == self.name
                    and now.resubmission == asked.resubmission
                    and now.state in states.LEASED)  # fmt: skip

        # read at every job: an agent revoked while it runs gets no more job tokens (a
        # damaged list refuses, as a TokenError)
        crl_file = self.certs / files.CRL
        crl = files.load_crl(crl_file) if crl_file.exists() else None
        issued = self.authority.issue_job_token(
            request, agent=self.token.certificate, agent_chain=self.token.chain,
            scope=JobScope(job.id, job.resubmission, job.owner), ttl_seconds=ttl,
            leased=leased, crl=crl,
        )  # fmt: skip
        return issued.certificate, issued.chain

    def waiting(self) -> list[Job] | None:
        return self.store.jobs(State.WAITING)

    def keep(self, job: Job, token: dict[str, Any], kept: list[tuple[str, Path]]) -> None:
        pass  # the home's storage is where its owner reads them

    def keep_audit(self, job: Job, record: bytes) -> None:
        pass  # as the outputs

    def place_inputs(self, job: Job, token: dict[str, Any], wanted: list[Placed],
                     directory: Path) -> None:  # fmt: skip
        for lfn, name, mode in wanted:
            self.catalogue.place(lfn, directory, name, mode)

    def leased(self, job_id: int, resubmission: int) -> bool | None:
        try:
            self.store.expire_leases()
            job = self.store.get(job_id)
        except StoreError:
            return None
        return job.state in states.LEASED and job.resubmission == resubmission


class BrokerQueue:
    """A broker over HTTPS, this agent's jobagent token its client certificate. The
    broker matches on the slot; this agent's policy may still refuse what it gets: the
    job is handed back and the broker is told to leave it out of this agent's matches."""

    def __init__(self, client: BrokerClient, name: str, ca: Path) -> None:
        self.client = client
        self.name = name
        self.ca = ca  # the broker's CA: the job token's client checks it too
        self.where = client.url
        self.excluded: list[int] = []  # newest last; the broker is sent the newest
        self.refused: set[int] = set()
        self.lease = 120  # seconds, as the last match asked

    def match(self, slot: Slot, fits: Callable[[Job], str | None], lease: float) -> Job | None:
        offered = {name: list(v) if isinstance(v, tuple) else v for name, v in slot.items()}
        self.lease = int(lease)
        for _offer in range(OFFERS_PER_MATCH):
            try:
                view = self.client.match(self.name, offered, int(lease),
                                         self.excluded[-EXCLUDED_CAP:])  # fmt: skip
            except BrokerError as exc:
                raise _store_error(exc) from None
            if view is None:
                return None
            job = job_of(view)
            why = fits(job)
            if why is None:
                return job
            self.release(job, f"this agent cannot run it: {why}", fault=False)
            if job.id in self.refused:  # offered again: beyond what the broker is told
                return None
            self.refused.add(job.id)
            self.excluded.append(job.id)
        return None  # only jobs this agent refuses, for now

    def heartbeat(self, job: Job, lease: float) -> bool:
        try:
            return self.client.heartbeat(job.id, job.resubmission, int(lease), agent=self.name)
        except BrokerError as exc:
            if exc.status in LOST or exc.status == 403:  # not ours, or this agent revoked
                return False
            raise StoreError(str(exc)) from None  # cannot tell: the next beat tries

    def set_state(self, job: Job, state: str, detail: str, exit_code: int | None) -> None:
        try:
            self.client.state(job.id, job.resubmission, state, agent=self.name,
                              detail=detail[:1000], exit_code=exit_code)  # fmt: skip
        except BrokerError as exc:
            raise _store_error(exc) from None

    def release(self, job: Job, reason: str, *, fault: bool = True) -> None:
        try:
            self.client.release(job.id, self.name, job.resubmission, reason, fault=fault)
        except BrokerError as exc:
            raise _store_error(exc) from None

    def holds(self, job: Job) -> bool:
        try:
            # a heartbeat answers it: held or not (it extends a lease that is ours anyway)
            return self.client.heartbeat(job.id, job.resubmission, self.lease, agent=self.name)
        except BrokerError as exc:
            return exc.status not in LOST

    def job_token(self, job: Job, request: x509.CertificateSigningRequest,
                  ttl: int) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:  # fmt: skip
        pem = request.public_bytes(serialization.Encoding.PEM).decode()
        try:
            signed = self.client.job_token(job.id, self.name, job.resubmission, pem)
            certificate = x509.load_pem_x509_certificate(signed["certificate"].encode())
            chain = tuple(x509.load_pem_x509_certificate(c.encode()) for c in signed["chain"])
        except BrokerError as exc:
            raise IssuanceRefused(f"the broker: {exc}") from None
        except (KeyError, TypeError, ValueError):
            raise IssuanceRefused("the broker's answer holds no certificate") from None
        return certificate, chain

    def waiting(self) -> list[Job] | None:
        return None  # a jobagent token may not list the queue

    def leased(self, job_id: int, resubmission: int) -> bool | None:
        return None

    @contextlib.contextmanager
    def job_client(self, token: dict[str, Any]) -> Iterator[BrokerClient]:
        """A client holding the job's token (written to a private directory for the TLS
        library, removed after)."""
        with tempfile.TemporaryDirectory(prefix="sandbox-agent-token-") as private:
            cert, key = Path(private) / "job.pem", Path(private) / "job.key"
            cert.write_text(token["certificate"] + "".join(token["chain"]))
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(token["key"])
            agent = self.client  # the same retries as the agent's own calls
            client = BrokerClient(agent.url, cert, key, self.ca, attempts=agent.attempts,
                                  backoff=agent.backoff, max_backoff=agent.max_backoff)  # fmt: skip
            with contextlib.closing(client):
                yield client

    def keep(self, job: Job, token: dict[str, Any], kept: list[tuple[str, Path]]) -> None:
        """Each file sent with the job token, while the job is SAVING."""
        try:
            with self.job_client(token) as client:
                for name, path in kept:
                    client.send_file(job.id, name, path.read_bytes())
        except (BrokerError, OSError) as exc:
            raise StoreError(f"the files were not all sent to the broker: {exc}") from None

    def keep_audit(self, job: Job, record: bytes) -> None:
        try:
            self.client.send_audit(job.id, record)
        except BrokerError as exc:
            raise StoreError(f"the audit record was not sent to the broker: {exc}") from None

    def place_inputs(self, job: Job, token: dict[str, Any], wanted: list[Placed],
                     directory: Path) -> None:  # fmt: skip
        """Each input fetched with the job token (the broker checks the job names it)
        and written as a new file in the work directory (by its descriptor): never
        through a link, never over a file there."""
        if not wanted:
            return
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            with self.job_client(token) as client:
                for lfn, name, mode in wanted:
                    data = client.fetch_input(job.id, lfn)
                    _write_new(dir_fd, name, data, mode)
        except BrokerError as exc:
            if exc.status in (None, 503):  # unreachable or busy for a while: the node's
                raise ConnectionError(f"the broker did not give the job's inputs: {exc}") from None
            raise CatalogueError(f"the broker refused an input: {exc}") from None
        finally:
            os.close(dir_fd)


def _write_new(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    """``name`` made in ``dir_fd`` with ``data``; a name the job cannot have there (taken,
    too long) is the job's fault, a CatalogueError."""
    try:
        fd = os.open(name, FILE_FLAGS, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.EISDIR):
            raise CatalogueError(f"{name}: cannot be placed in the work directory "
                                 f"({exc.strerror})") from None  # fmt: skip
        raise  # the node's: a full disk, an I/O error
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        os.fchmod(file.fileno(), mode)


def job_of(view: dict[str, Any]) -> Job:
    """A job as the broker shows it."""
    return Job(id=int(view["id"]), jdl_text=str(view.get("jdl", "")), owner=str(view["owner"]),
               priority=int(view["priority"]), requirements=None, state=State(view["state"]),
               resubmission=int(view["resubmission"]), agent=view.get("agent"),
               lease_until=view.get("lease_until"), submitted=float(view["submitted"]),
               exit_code=view.get("exit_code"))  # fmt: skip


def _store_error(exc: BrokerError) -> StoreError | TransitionError:
    """A broker's answer as the queue's own error would be."""
    if exc.status == 409 and "lease" in str(exc):
        return LeaseError(str(exc))
    if exc.status == 409:
        return TransitionError(str(exc))
    if exc.status in (403, 404):  # not ours to act on (or this agent was revoked)
        return LeaseError(str(exc))
    return StoreError(str(exc))  # unreachable, busy, or a fault: cannot tell now
