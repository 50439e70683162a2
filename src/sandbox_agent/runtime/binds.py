"""Host paths a sandbox binds that the node lacks.

Every runtime leaves a bind out when its host source is not there (an image may still
have the path; /lib32 is on some hosts and not others). That silence cost whole queues:
with CVMFS down, every job the pilot took failed inside on a missing
``/cvmfs/alice.cern.ch``. So the policy names what the node must have
(``filesystem.required``): one missing makes the node unhealthy, and the pilot hands
its job back untouched instead of burning it. Any other bind of the site's or the
job's that is left out is named, in the run's output and in the audit record.

A path counts as there when ``stat`` follows it to something and, for a directory, its
first entry can be read: a CVMFS mount that lost its server answers ``stat`` with an
error of its own (ENOTCONN, EIO) or lists nothing readable.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox_agent.policy.model import Item

if TYPE_CHECKING:
    from sandbox_agent.policy.compose import EffectivePolicy
    from sandbox_agent.policy.model import Policy

# The binds the site or the job asked for by name; the host userland is left out on
# purpose (/lib32 and /libx32 are absent on most hosts, and that is no news).
NAMED_BINDS = ("filesystem.read_only", "filesystem.writable", "devices.paths")


@dataclass(frozen=True)
class Absent:
    """A path the node lacks: the path, the policy line or JDL key that named it, and
    what the node answered ("missing", or the error of a broken mount)."""

    path: str
    origin: str
    answer: str

    def describe(self) -> str:
        return f"{self.path} ({self.answer}; {self.origin})"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "origin": self.origin, "answer": self.answer}


ANSWER_SECONDS = 10.0  # a hung FUSE mount (CVMFS without its server) blocks stat


def answer(path: str, timeout: float = ANSWER_SECONDS) -> str | None:
    """Why ``path`` cannot be used here ("missing", the mount's error, or no answer
    within ``timeout``: a hung mount), or None. The look runs on a thread of its own: a
    stat stuck in the kernel is left there, not the pilot."""
    said: list[str | None] = []
    looking = threading.Thread(target=lambda: said.append(_look(path)), daemon=True,
                               name=f"look at {path[:64]}")  # fmt: skip
    looking.start()
    looking.join(timeout)
    if not said:
        return f"no answer in {timeout:g} s (a hung mount)"
    return said[0]


def _look(path: str) -> str | None:
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            with os.scandir(path) as entries:
                next(entries, None)  # a dead FUSE mount fails here, not at stat
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def unhealthy(policy: Policy | EffectivePolicy) -> list[Absent]:
    """The required paths this node lacks now, in the policy's order."""
    out = []
    for item in policy["filesystem.required"].value:
        why = answer(str(item.value))
        if why is not None:
            out.append(Absent(str(item.value), item.origin, why))
    return out


def unhealthy_line(absent: list[Absent]) -> str:
    """One line for a node that lacks required paths: each path, and the fix."""
    listed = ", ".join(a.describe() for a in absent)
    return (f"this node is unhealthy: filesystem.required {listed}; mount it (for CVMFS: "
            "cvmfs_config probe) or take it out of filesystem.required")  # fmt: skip


def dropped(effective: EffectivePolicy) -> list[Absent]:
    """The site's and the job's binds that the node lacks and that are not required
    (those stop the node instead): each runtime leaves them out."""
    required = {str(i.value) for i in effective["filesystem.required"].value}
    out: list[Absent] = []
    for key in NAMED_BINDS:
        items: tuple[Item, ...] = effective[key].value
        for item in items:
            path = str(item.value)
            if path in required or os.path.lexists(path):
                continue
            out.append(Absent(path, item.origin, "missing"))
    return out
