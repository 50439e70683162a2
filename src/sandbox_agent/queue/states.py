"""JAliEn job states and the only transitions the task queue allows between them.

=========  ==========================================================  ======================
State      Meaning                                                     Set by
=========  ==========================================================  ======================
WAITING    In the queue, waiting for a slot that satisfies it.         submit; a lease return
ASSIGNED   Matched and leased to one agent; the wrapper has not        the queue (match)
           reported yet.
STARTED    The wrapper runs in the sandbox and is staging inputs.      wrapper, via the agent
RUNNING    The payload (then its ValidationCommand) is running.        wrapper, via the agent
SAVING     The payload is over; outputs are being packaged and         wrapper, via the agent
           stored.
DONE       Finished, validated, outputs saved.                         wrapper, via the agent
DONE_WARN  Finished and validated; saving saw non-fatal errors.        wrapper, via the agent
ERROR_E    The payload failed: non-zero exit, or killed for going      wrapper or agent
           over a resource limit (memory, disk, processes).
ERROR_V    The ValidationCommand ran and failed.                       wrapper, via the agent
ERROR_VN   The ValidationCommand could not be run at all.              wrapper, via the agent
ERROR_VT   The ValidationCommand was stopped (timeout or signal).      wrapper, via the agent
ERROR_IB   Inputs could not be staged (InputFile, Executable           wrapper, via the agent
           missing or unreadable).
ERROR_S    Outputs could not be packaged (a required Output file       wrapper, via the agent
           is missing).
ERROR_SV   Outputs could not be stored; also the end of a job whose    wrapper or agent; the
           lease expired while SAVING (see below).                     queue (lease expiry)
EXPIRED    The job outlived its TTL and was stopped.                   agent (TTL monitor)
KILLED     Killed by a user or an operator, or the agent was told to   kill (anyone allowed),
           stop; reachable from every non-final state.                 agent on SIGTERM
FAILED     The pilot could not run the job for a reason that is not    agent; the queue when
           the payload's (sandbox would not start, the wrapper sent    resubmissions run out
           garbage or nothing), or it was resubmitted too often.
=========  ==========================================================  ======================

States only move forward (``ORDER``).  The one way back is a lease return: when the
agent holding a job vanishes (or hands the job back) the queue moves it from ASSIGNED,
STARTED or RUNNING to WAITING with its resubmission counter bumped, so the old agent's
job token and reports no longer count.  A job whose lease runs out while SAVING is *not*
returned: it ends in ERROR_SV.  By SAVING the payload has finished and part of its
outputs may already be stored under this attempt; running it again would put a second
attempt's outputs beside a half-written first set, and nobody could tell which set is
whole.  The user sees ERROR_SV with the reason and resubmits if the job is worth
repeating.  That return is ``LEASE_RETURN`` below, applied only by the queue, never
through ``check``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class TransitionError(ValueError):
    """A state change the table does not allow (one line: what, and why)."""


class State(StrEnum):
    WAITING = "WAITING"
    ASSIGNED = "ASSIGNED"
    STARTED = "STARTED"
    RUNNING = "RUNNING"
    SAVING = "SAVING"
    DONE = "DONE"
    DONE_WARN = "DONE_WARN"
    ERROR_E = "ERROR_E"
    ERROR_V = "ERROR_V"
    ERROR_VN = "ERROR_VN"
    ERROR_VT = "ERROR_VT"
    ERROR_IB = "ERROR_IB"
    ERROR_S = "ERROR_S"
    ERROR_SV = "ERROR_SV"
    EXPIRED = "EXPIRED"
    KILLED = "KILLED"
    FAILED = "FAILED"


_S = State
_FINALS = (
    _S.DONE,
    _S.DONE_WARN,
    _S.ERROR_E,
    _S.ERROR_V,
    _S.ERROR_VN,
    _S.ERROR_VT,
    _S.ERROR_IB,
    _S.ERROR_S,
    _S.ERROR_SV,
    _S.EXPIRED,
    _S.KILLED,
    _S.FAILED,
)

# The table: where each state may go, and nowhere else.  The rows follow the
# JobWrapper's phases: inputs fail as ERROR_IB (also when the executable turns out
# missing at exec time, hence from RUNNING too); the ValidationCommand runs after the
# payload and JAliEn saves outputs before the final verdict, hence ERROR_E and
# ERROR_V* from RUNNING and from SAVING; DONE, DONE_WARN and the output errors need
# SAVING first.  KILLED is in every non-final row; a final row is empty.
TRANSITIONS: Mapping[State, frozenset[State]] = MappingProxyType(
    {
        _S.WAITING: frozenset({_S.ASSIGNED, _S.KILLED}),
        _S.ASSIGNED: frozenset({_S.STARTED, _S.FAILED, _S.KILLED}),
        _S.STARTED: frozenset(
            {_S.RUNNING, _S.ERROR_IB, _S.ERROR_E, _S.EXPIRED, _S.FAILED, _S.KILLED}
        ),
        _S.RUNNING: frozenset(
            {_S.SAVING, _S.ERROR_IB, _S.ERROR_E, _S.ERROR_V, _S.ERROR_VN, _S.ERROR_VT}
            | {_S.EXPIRED, _S.FAILED, _S.KILLED}
        ),
        _S.SAVING: frozenset(
            {_S.DONE, _S.DONE_WARN, _S.ERROR_S, _S.ERROR_SV}
            | {_S.ERROR_E, _S.ERROR_V, _S.ERROR_VN, _S.ERROR_VT}
            | {_S.EXPIRED, _S.FAILED, _S.KILLED}
        ),
    }
    | {final: frozenset() for final in _FINALS}
)
FINAL: frozenset[State] = frozenset(_FINALS)

# Progress rank: every transition in the table goes to a strictly higher rank, which
# is what "states only move forward" means (the tests hold the table to it).
ORDER: Mapping[State, int] = MappingProxyType(
    {_S.WAITING: 0, _S.ASSIGNED: 1, _S.STARTED: 2, _S.RUNNING: 3, _S.SAVING: 4}
    | {final: 5 for final in _FINALS}
)

# States in which a job is leased to an agent, and where a lease that runs out (or is
# handed back) sends it.  See the module docstring for why SAVING is not returned.
LEASE_RETURN: Mapping[State, State] = MappingProxyType(
    {
        _S.ASSIGNED: _S.WAITING,
        _S.STARTED: _S.WAITING,
        _S.RUNNING: _S.WAITING,
        _S.SAVING: _S.ERROR_SV,
    }
)
LEASED: frozenset[State] = frozenset(LEASE_RETURN)


def parse(name: str) -> State:
    """The state called ``name`` (exact, upper case), or TransitionError."""
    try:
        return State(name)
    except ValueError:
        known = ", ".join(State)
        raise TransitionError(f"unknown job state {name!r}; known states: {known}") from None


def is_final(state: str) -> bool:
    return parse(state) in FINAL


def check(from_state: str, to_state: str) -> None:
    """Raise TransitionError unless ``from_state -> to_state`` is in the table."""
    source, target = parse(from_state), parse(to_state)
    allowed = TRANSITIONS[source]
    if target in allowed:
        return
    if source in FINAL:
        reason = f"{source} is final; submit the job again to rerun it"
    else:
        reason = f"from {source} a job may go to {', '.join(sorted(allowed))}"
    raise TransitionError(f"a job cannot go from {source} to {target}: {reason}")


def path(from_state: str, to_state: str) -> list[State]:
    """The shortest way from ``from_state`` to ``to_state`` through the table, ending with
    ``to_state`` (empty when already there); TransitionError when there is none. The
    agent records a wrapper that skipped a phase (RUNNING straight to DONE) this way,
    so the history still reads in the table's order."""
    source, target = parse(from_state), parse(to_state)
    if source is target:
        return []
    reached: dict[State, State | None] = {source: None}
    frontier = [source]
    while frontier and target not in reached:
        following: list[State] = []
        for state in frontier:
            for step in sorted(TRANSITIONS[state], key=lambda s: ORDER[s]):
                if step not in reached and (step is target or step not in FINAL):
                    reached[step] = state
                    following.append(step)
        frontier = following
    if target not in reached:
        check(source, target)  # raises, with the reason
    route = [target]
    while (before := reached[route[-1]]) is not None and before is not source:
        route.append(before)
    return route[::-1]
