"""Who made a broker request, and the refusal every endpoint answers with."""

from __future__ import annotations

from dataclasses import dataclass

from sandbox_agent.broker.api import AGENT_NAME
from sandbox_agent.tokens.verify import VerifiedToken


class Refused(Exception):
    """The answer to a request the broker will not carry out: status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Caller:
    """Who made the request: the verified token, its role and, for people and jobs,
    the user it speaks for."""

    token: VerifiedToken
    role: str
    user: str | None

    @property
    def fingerprint(self) -> str:
        return self.token.fingerprint

    def holder(self, agent: str) -> str:
        """The lease holder a jobagent is in the queue: its name for itself, bound to its
        certificate, so that another certificate cannot speak for its jobs."""
        if not AGENT_NAME.fullmatch(agent):
            raise Refused(400, "agent: 1-64 letters, digits, '_', '.', ':' or '-'")
        return f"{agent}@{self.fingerprint.removeprefix('sha256:')[:16]}"
