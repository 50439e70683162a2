"""The job-state table: forward only, KILLED from anywhere live, finals are final."""

from __future__ import annotations

import itertools

import pytest

from sandbox_agent.queue import states
from sandbox_agent.queue.states import FINAL, LEASE_RETURN, ORDER, TRANSITIONS, State

LIVE = [s for s in State if s not in FINAL]
ALLOWED = [(a, b) for a in State for b in sorted(TRANSITIONS[a])]
REFUSED = [(a, b) for a, b in itertools.product(State, State) if b not in TRANSITIONS[a]]

# The paths the pilot takes, as the JobWrapper reports them; each must be allowed.
PATHS = [
    "WAITING ASSIGNED STARTED RUNNING SAVING DONE",
    "WAITING ASSIGNED STARTED RUNNING SAVING DONE_WARN",
    "WAITING ASSIGNED STARTED RUNNING SAVING ERROR_E",  # failed payload, OutputErrorE saved
    "WAITING ASSIGNED STARTED RUNNING SAVING ERROR_V",  # validation failed, outputs saved
    "WAITING ASSIGNED STARTED RUNNING ERROR_VN",
    "WAITING ASSIGNED STARTED RUNNING SAVING ERROR_VT",
    "WAITING ASSIGNED STARTED ERROR_IB",  # inputs could not be staged
    "WAITING ASSIGNED STARTED RUNNING ERROR_IB",  # executable missing at exec time
    "WAITING ASSIGNED STARTED RUNNING SAVING ERROR_S",
    "WAITING ASSIGNED STARTED RUNNING SAVING ERROR_SV",
    "WAITING ASSIGNED STARTED RUNNING EXPIRED",
    "WAITING ASSIGNED FAILED",  # the sandbox never started
    "WAITING KILLED",
]


def test_the_table_covers_every_state_and_nothing_else() -> None:
    assert set(TRANSITIONS) == set(State)
    assert set(ORDER) == set(State)
    assert all(targets <= set(State) for targets in TRANSITIONS.values())


@pytest.mark.parametrize(("source", "target"), ALLOWED)
def test_allowed_transitions_pass_and_only_move_forward(source: State, target: State) -> None:
    states.check(source, target)
    assert ORDER[target] > ORDER[source]


@pytest.mark.parametrize(("source", "target"), REFUSED)
def test_everything_else_is_refused_in_one_line(source: State, target: State) -> None:
    with pytest.raises(states.TransitionError) as info:
        states.check(source, target)
    message = str(info.value)
    assert "\n" not in message
    assert f"from {source} to {target}" in message


@pytest.mark.parametrize("final", sorted(FINAL))
def test_every_final_state_refuses_every_move(final: State) -> None:
    assert TRANSITIONS[final] == frozenset()
    for target in State:
        with pytest.raises(states.TransitionError, match=f"{final} is final"):
            states.check(final, target)


@pytest.mark.parametrize("live", LIVE)
def test_killed_is_reachable_from_every_non_final_state(live: State) -> None:
    states.check(live, State.KILLED)


def test_nothing_goes_back_to_the_queue_through_check() -> None:
    # The one way back is a lease return, which the store applies itself.
    for source in State:
        assert State.WAITING not in TRANSITIONS[source]
        if source is not State.WAITING:
            assert State.ASSIGNED not in TRANSITIONS[source]


def test_done_needs_outputs_saved_first() -> None:
    sources = {s for s in State if {State.DONE, State.DONE_WARN} & TRANSITIONS[s]}
    assert sources == {State.SAVING}


def test_lease_return_sends_live_work_back_and_saving_to_error_sv() -> None:
    assert set(LEASE_RETURN) == set(LIVE) - {State.WAITING}
    assert LEASE_RETURN == {
        State.ASSIGNED: State.WAITING,
        State.STARTED: State.WAITING,
        State.RUNNING: State.WAITING,
        State.SAVING: State.ERROR_SV,
    }


@pytest.mark.parametrize("path", PATHS)
def test_the_pilots_paths_are_allowed(path: str) -> None:
    steps = path.split()
    for source, target in itertools.pairwise(steps):
        states.check(source, target)
    assert steps[-1] in FINAL


@pytest.mark.parametrize("name", ["", "done", "RUNNING ", "ZOMBIE", "ERROR_A"])
def test_unknown_state_names_are_refused(name: str) -> None:
    with pytest.raises(states.TransitionError, match="unknown job state") as info:
        states.check(name, "DONE")
    assert "\n" not in str(info.value)
    with pytest.raises(states.TransitionError, match="unknown job state"):
        states.check("WAITING", name)


def test_is_final() -> None:
    assert [s for s in State if states.is_final(s)] == [s for s in State if s in FINAL]
    assert states.is_final("KILLED")
    assert not states.is_final("SAVING")


def test_the_docstring_table_documents_every_state() -> None:
    doc = states.__doc__ or ""
    rows = {line.split()[0] for line in doc.splitlines() if line[:1].isupper() and " " in line}
    assert set(State) <= rows
